r"""Measures bouncing-ball streams from their pictures and sound (rflav_jax/eval): one JSON line per segment.

  python -m launch.evaluate --config=configs/synthetic_tiny.py --mode=joint --seconds=600 --segment_seconds=60
  python -m launch.evaluate --config=configs/synthetic_tiny.py --mode=audio_to_video --seconds=30 --streams=4
  python -m launch.evaluate --mode=continuation --seconds=6 --segment_seconds=1 --streams=16  # on from real frames
  python -m launch.evaluate --mode=real --seconds=30 --streams=4                       # real clips, the reference
  python -m launch.evaluate --config.checkpoint= --mode=joint --seconds=30             # an untrained model
  python -m launch.evaluate --mode=av_metrics --config.eval.real_dir=DIR --config.eval.generated_dir=DIR \
      --output=report.json                  # FVD, KVD, FAD of two folders of mp4 (rflav_jax/eval/av_metrics)
  python -m launch.evaluate --mode=long_video --config.eval.real_dir=DIR --config.eval.generated_dir=LONG_DIR \
      --output=long.json                    # the same per 16-frame window of long videos, drift, long.png
"""
import json

from absl import flags

from rflav_jax import cli
from rflav_jax.eval import av_metrics, evaluate, long_video
from rflav_jax.train.progress import quiet_library_logs

_CONFIG = cli.define_config("config", "configs/synthetic_tiny.py", "Sampling config of the model.")
_MODE = flags.DEFINE_enum("mode", "joint", (*evaluate.MODES, av_metrics.MODE, long_video.MODE),
                          "What to generate and measure.")
_SECONDS = flags.DEFINE_float("seconds", 30.0, "Length of each stream in seconds (10 frames per second).")
_SEGMENT = flags.DEFINE_float("segment_seconds", 30.0, "Figures are reported per segment of this length.")
_STREAMS = flags.DEFINE_integer("streams", 1, "Independent streams (seeds / real clips).")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the per-segment results and their mean.")


def main(argv):
  del argv
  eval_config = _CONFIG.value.eval
  for flag, path in (("output", _OUTPUT.value), ("config.eval.real_dir", eval_config.real_dir),
                     ("config.eval.generated_dir", eval_config.generated_dir),
                     ("config.eval.cache_dir", eval_config.cache_dir)):
    cli.check_local(flag, path)
  cli.check_output_file("output", _OUTPUT.value)
  quiet_library_logs()
  folder_modes = {av_metrics.MODE: av_metrics.run, long_video.MODE: long_video.run}
  if _MODE.value in folder_modes:
    print(json.dumps(folder_modes[_MODE.value](eval_config, _OUTPUT.value)))
    return
  results = evaluate.evaluate(_CONFIG.value, _MODE.value, _SECONDS.value, _SEGMENT.value, _STREAMS.value)
  for result in results:
    print(json.dumps(result))
  mean = evaluate.summary(results)
  print(json.dumps({"mean": mean}))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump({"results": results, "mean": mean}, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
