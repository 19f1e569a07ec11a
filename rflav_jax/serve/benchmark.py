"""Sustained speed of live streams: frames/s per stream and real-time factor with 1, 2, 4, ... streams at once.

Each measurement opens n streams (distinct labels and seeds, none shared) in an unpaced StreamHub (lead_s = inf:
every stage runs as fast as it can), with one viewer each reading every fragment, waits until every stream has sent
its first fragment and no program is compiling, then `settle_s` more, and then counts the frames sent over
`seconds`. real_time_factor = frames/s per stream / 10 fps (>= 1: real time).
"""
import asyncio
import math
import time

from rflav_jax.generator import FPS, Generator
from rflav_jax.serve.hub import StreamHub
from rflav_jax.serve.requests import StreamRequest


def measure(generator: Generator, streams: int, seconds: float, *, chunk_frames: int, settle_s: float = 5.0) -> dict:
  """One measurement (see the module docstring): a JSON-ready dict."""
  return asyncio.run(_measure(generator, streams, seconds, chunk_frames, settle_s))


async def _measure(generator: Generator, streams: int, seconds: float, chunk_frames: int, settle_s: float) -> dict:
  hub = StreamHub(generator, chunk_frames=chunk_frames, max_streams=streams, lead_s=math.inf, grace_s=3600)
  hub.start(asyncio.get_running_loop())
  num_classes = max(generator.model.num_classes, 1)
  opened = [hub.open(StreamRequest(label=i % num_classes, seed=i), shared=False) for i in range(streams)]
  readers = [asyncio.create_task(_read(hub, stream)) for stream in opened]
  started = time.perf_counter()
  try:
    while hub.compiling or any(stream.first_fragment_s is None for stream in opened):
      await asyncio.sleep(0.1)
    first_fragment_s = time.perf_counter() - started
    await asyncio.sleep(settle_s)
    before, start = [(s.frames_sent, s.state.frames, s.network_s, s.post_s) for s in opened], time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - start
    after = [(s.frames_sent, s.state.frames, s.network_s, s.post_s) for s in opened]
    batch = hub.stats()["batch"]
  finally:
    hub.close()
    for reader in readers:
      reader.cancel()
  per_stream = [(a[0] - b[0]) / elapsed for a, b in zip(after, before)]
  # Stage speeds in frames per busy second: the network's per call (all streams at once), each stream's thread alone.
  network = [(a[1] - b[1]) / (a[2] - b[2]) for a, b in zip(after, before)]
  post = [(a[0] - b[0]) / (a[3] - b[3]) for a, b in zip(after, before)]
  return {"streams": streams, "batch": batch, "chunk_frames": chunk_frames, "seconds": round(elapsed, 1),
          "frames_per_s_per_stream": round(min(per_stream), 2), "real_time_factor": round(min(per_stream) / FPS, 2),
          "all_streams_frames_per_s": round(sum(per_stream), 2), "first_fragments_after_s": round(first_fragment_s, 1),
          "network_frames_per_busy_s": round(min(network), 1), "post_frames_per_busy_s": round(min(post), 1),
          "griffin_lim_iters": generator.vocoder.griffin_lim_iters if generator.vocoder.hifigan is None else None}


async def _read(hub: StreamHub, stream) -> None:
  viewer = hub.watch(stream)
  while await viewer.next() is not None:
    pass
