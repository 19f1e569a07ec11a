"""Progress of a generation: network calls counted inside the compiled sampler, logged with an ETA.

A `CallProgress` wraps a velocity function (`counted`) so that each call reports to it through
`jax.debug.callback`, from inside the jitted pre-roll and rolling programs. The wrapped function holds the
CallProgress itself, so the compiled programs are shared by every run that reports to the same object: keep one
per generator and call `begin` before each run.
"""
import threading
import time
from typing import Callable

import jax
from absl import logging


def _duration(seconds: float) -> str:
  return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def log_frames(done: int, total: int, streams: int, seconds: float) -> None:
  """Logs frames made so far of each stream, the rate since the start and the ETA."""
  rate = done / seconds
  logging.info("frame %d/%d of %d stream(s), %.2f frames/s per stream, ETA %s", done, total, streams, rate,
               _duration((total - done) / rate))


class CallProgress:
  """Logs the network calls of a generation: the first (compilation included), the end of the pre-roll,
  then at most every `every_s` seconds and at the end, each with the time per call and an ETA.

  Each device that holds streams runs every call, so `devices` callbacks (set by `begin`) make one call.
  """

  def __init__(self, every_s: float = 10.0):
    self.every_s = every_s
    self._lock = threading.Lock()
    self.begin(None, 0)

  def begin(self, total: int | None, preroll: int, devices: int = 1) -> None:
    """Starts counting a run of `total` calls (None: endless, no ETA), the first `preroll` of them the pre-roll."""
    with self._lock:
      self.total, self.preroll, self.devices = total, preroll, devices
      self.calls, self._ticks = 0, 0
      self._start = self._last_log = time.perf_counter()

  def counted(self, velocity_fn: Callable) -> jax.tree_util.Partial:
    """velocity_fn (a Partial holding its weights, as `guidance` returns) reporting every call here."""
    return jax.tree_util.Partial(self._counted_call, velocity_fn)

  def _counted_call(self, velocity_fn: Callable, *args):
    velocity = velocity_fn(*args)
    jax.debug.callback(self._on_call, velocity[0].ravel()[0])  # depends on the output: fires once the call is done
    return velocity

  def _on_call(self, _) -> None:
    self.tick()

  def tick(self) -> None:
    """One device finished one network call."""
    with self._lock:
      self._ticks += 1
      if self._ticks % self.devices:
        return
      self.calls = self._ticks // self.devices
      now = time.perf_counter()
      of_total = f"{self.calls}/{self.total}" if self.total else f"{self.calls}"
      if self.calls == 1:
        self._first = now
        logging.info("network call %s done after %s (compilation included); pre-roll: %d calls", of_total,
                     _duration(now - self._start), self.preroll)
      elif self.calls == self.preroll or self.calls == self.total or now - self._last_log >= self.every_s:
        per_call = (now - self._first) / (self.calls - 1)
        stage = f"pre-roll done in {_duration(now - self._start)}, " if self.calls == self.preroll else ""
        eta = f", ETA {_duration((self.total - self.calls) * per_call)}" if self.total else ""
        logging.info("network call %s, %s%.3g s/call%s", of_total, stage, per_call, eta)
      else:
        return
      self._last_log = now
