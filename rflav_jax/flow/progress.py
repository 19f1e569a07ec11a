"""Progress of a generation: network calls counted inside the compiled sampler, logged with an ETA.

`counted(velocity_fn)` wraps a velocity function (see `rflav_jax.flow.sampling`) so that each call reports
to the host through `jax.debug.callback`, from inside the jitted pre-roll and rolling programs, and the
`CallProgress` in effect logs it. The wrapper holds no run state, so programs stay shared across runs.
"""
import threading
import time
from typing import Callable

import jax
from absl import logging

_active: list["CallProgress"] = []  # the CallProgress receiving the calls (innermost `with` block)


def _on_call(_):
  if _active:
    _active[-1].tick()


def _counted_call(velocity_fn: Callable, *args):
  velocity = velocity_fn(*args)
  jax.debug.callback(_on_call, velocity[0].ravel()[0])  # depends on the output: fires once the call is done
  return velocity


def counted(velocity_fn: Callable) -> jax.tree_util.Partial:
  """velocity_fn (a Partial holding its weights, as guidance returns) that reports every call to CallProgress."""
  return jax.tree_util.Partial(_counted_call, velocity_fn)


def _duration(seconds: float) -> str:
  return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def log_frames(done: int, total: int, streams: int, seconds: float) -> None:
  """Logs frames made so far of each stream, the rate since the start and the ETA."""
  rate = done / seconds
  logging.info("frame %d/%d of %d stream(s), %.2f frames/s per stream, ETA %s", done, total, streams, rate,
               _duration((total - done) / rate))


class CallProgress:
  """Logs the network calls of one generation: the first (compilation included), the end of the pre-roll,
  then at most every `every_s` seconds and at the end, each with the time per call and an ETA.

  Use as `with CallProgress(total, preroll, devices):` around the sampling. Each device that holds streams
  runs every call, so `devices` callbacks make one call.
  """

  def __init__(self, total: int, preroll: int, devices: int = 1, every_s: float = 10.0):
    self.total, self.preroll, self.devices, self.every_s = total, preroll, devices, every_s
    self.calls = 0
    self._ticks, self._lock = 0, threading.Lock()

  def __enter__(self) -> "CallProgress":
    self._start = self._last_log = time.perf_counter()
    _active.append(self)
    return self

  def __exit__(self, *exc) -> None:
    _active.remove(self)

  def tick(self) -> None:
    with self._lock:
      self._ticks += 1
      if self._ticks % self.devices:
        return
      self.calls = self._ticks // self.devices
      now = time.perf_counter()
      if self.calls == 1:
        self._first = now
        logging.info("network call 1/%d done after %s (compilation included); pre-roll: %d calls",
                     self.total, _duration(now - self._start), self.preroll)
      elif self.calls == self.preroll or self.calls == self.total or now - self._last_log >= self.every_s:
        per_call = (now - self._first) / (self.calls - 1)
        stage = f"pre-roll done in {_duration(now - self._start)}, " if self.calls == self.preroll else ""
        logging.info("network call %d/%d, %s%.3g s/call, ETA %s", self.calls, self.total, stage, per_call,
                     _duration((self.total - self.calls) * per_call))
      else:
        return
      self._last_log = now
