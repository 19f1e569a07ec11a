r"""Serves live audio-video streams of a FLAV model over HTTP: a page that plays one with sound (class and guidance
switchable while it plays), and endless fragmented MP4 for any player.

  python -m launch.serve --config=configs/synthetic_tiny.py                 # then open http://127.0.0.1:8000/
  ffplay "http://127.0.0.1:8000/stream.mp4?label=1&seed=3"                  # guidance=G too
  python -m launch.serve --config=configs/synthetic_tiny.py --benchmark_streams=1,2,4   # frames/s, no server

Every config field can be overridden on the command line (--config.sample.stochasticity=0); config.sample's
chunk_frames, num_streams, num_frames and label are not used: --chunk_frames and the viewers' requests set them.
"""
import json

from absl import flags
from absl import logging

from rflav_jax import cli
from rflav_jax import compilation_cache
from rflav_jax.serve import app, benchmark, live_generator
from rflav_jax.serve.hub import StreamHub

_CONFIG = cli.define_config("config", "configs/synthetic_tiny.py", "Sampling config file.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
_PORT = flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port, printed at start).")
_MAX_STREAMS = flags.DEFINE_integer("max_streams", 4, "Most streams generated at once; more get 503.")
_CHUNK_FRAMES = flags.DEFINE_integer("chunk_frames", 5, "Frames per batched network call and per fMP4 fragment.")
_LEAD_S = flags.DEFINE_float("lead_s", 1.0, "How far a stream may run ahead of real time (the viewers' buffer).")
_GRACE_S = flags.DEFINE_float("grace_s", 10.0, "How long a stream without viewers lives on.")
_VIEWER_BUFFER_S = flags.DEFINE_float("viewer_buffer_s", 5.0, "Stream time a slow viewer may fall behind before it "
                                      "skips ahead.")
_GRIFFIN_LIM_ITERS = flags.DEFINE_integer("griffin_lim_iters", 8, "Griffin-Lim iterations per chunk (phase carried "
                                          "across chunks) when the config has no HiFi-GAN vocoder.")
_BENCHMARK_STREAMS = flags.DEFINE_list("benchmark_streams", [], "Instead of serving: measure the sustained frames/s "
                                       "per stream with each of these numbers of streams, one JSON line each.")
_BENCHMARK_SECONDS = flags.DEFINE_float("benchmark_seconds", 30.0, "Seconds each benchmark measurement counts.")


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  benchmark_streams = _benchmark_streams()
  sock = None if benchmark_streams else app.listen(_HOST.value, _PORT.value)
  config = _CONFIG.value
  compilation_cache.enable(config.get("compilation_cache_dir"))
  generator = live_generator(config, _GRIFFIN_LIM_ITERS.value)
  for streams in benchmark_streams:
    print(json.dumps(benchmark.measure(generator, streams, _BENCHMARK_SECONDS.value, chunk_frames=_CHUNK_FRAMES.value)),
          flush=True)
  if sock is not None:
    hub = StreamHub(generator, chunk_frames=_CHUNK_FRAMES.value, max_streams=_MAX_STREAMS.value, lead_s=_LEAD_S.value,
                    grace_s=_GRACE_S.value, viewer_buffer_s=_VIEWER_BUFFER_S.value)
    hub.warm_up()
    app.serve(hub, sock)


def _benchmark_streams() -> list[int]:
  try:
    counts = [int(n) for n in _BENCHMARK_STREAMS.value]
  except ValueError:
    counts = [0]
  if any(n < 1 for n in counts):
    raise ValueError(f"--benchmark_streams={','.join(_BENCHMARK_STREAMS.value)}: expected numbers of streams, e.g. "
                     "1,2,4")
  return counts


if __name__ == "__main__":
  cli.run(main)
