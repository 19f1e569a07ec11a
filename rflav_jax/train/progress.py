"""What a run shows while it trains (process 0 only): console lines, DIR/metrics.jsonl and TensorBoard scalars.

Each logged step gets one JSON line in metrics.jsonl with fixed names: step, loss, loss_video, loss_audio,
grad_norm, lr (means over the steps since the last log), skipped (non-finite updates so far), steps_per_s,
samples_per_s, tflops_per_s (analytic count, models.flops) and, when a peak is configured, mfu. The loss curve
goes to DIR/loss_curve.png, and the same scalars to TensorBoard under DIR/tensorboard through clu's SummaryWriter
(tf.summary), where TensorFlow and clu are installed. A resumed run first drops the lines logged after its
checkpoint, so each step appears once.

DIR may be a URL such as gs://bucket/run (`rflav_jax.storage`). Cloud objects cannot be appended to, so each log
writes metrics.jsonl whole (storage.write_atomically), as it does the loss curve: a run killed at any moment leaves
the file of its last log.
"""
import json
import logging as py_logging
import os
import time

import numpy as np
from absl import logging
from etils import epath

from rflav_jax import storage
from rflav_jax.media.images import curve_image, write_png


def quiet_library_logs() -> None:
  """Keeps Orbax's per-save INFO lines out of the console (its warnings and errors still show)."""
  quiet = lambda record: record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname
  logging.get_absl_logger().addFilter(quiet)


def _history_until(path: epath.Path, step: int) -> list[dict]:
  """The records of metrics.jsonl up to `step` (a previous part of the run), oldest first."""
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [record for record in records if record["step"] <= step]


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def tensorboard_writer(folder: str):
  """clu's SummaryWriter into `folder` (a path or any URL tf.io.gfile writes, such as gs://bucket/run), or None.

  None, after one warning, where TensorFlow or clu is missing (GPU images often lack TensorFlow) or TensorFlow
  cannot reach `folder` (a gs:// folder in a GCS emulator, see storage.tensorflow_reaches): the run trains and
  writes metrics.jsonl as usual.
  """
  if not storage.tensorflow_reaches(folder):
    logging.warning("TensorBoard summaries are off: TensorFlow's GCS file system cannot reach %s in the emulator at "
                    "%s=%s; metrics.jsonl and loss_curve.png are written as usual", folder,
                    storage.EMULATOR_VARIABLE, os.environ[storage.EMULATOR_VARIABLE])
    return None
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only process 0, only for its summaries)
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  except ImportError as error:
    logging.warning("TensorBoard summaries are off (%s): install tensorflow and clu (requirements.txt) to get them; "
                    "metrics.jsonl and loss_curve.png are written as usual", error)
    return None
  try:
    tf.config.set_visible_devices([], "GPU")  # TensorFlow only writes files here: the GPUs' memory stays JAX's
  except RuntimeError:  # TensorFlow already runs (a TFDS input pipeline started it): its devices are fixed
    pass
  return metric_writers.SummaryWriter(folder)


class Progress:
  """Rates, ETA and the metric files of a run from `first_step` to `num_steps`."""

  def __init__(self, workdir: str | os.PathLike, first_step: int, num_steps: int, batch_size: int,
               flops_per_step: float, peak_flops: float, write: bool):
    self._first, self._num_steps, self._batch = first_step, num_steps, batch_size
    self._flops, self._peak = flops_per_step, peak_flops
    self._write = write
    self._start = self._last_time = time.perf_counter()  # until start(): compilation included
    self._last_step = first_step
    self._workdir = workdir = storage.as_path(workdir)
    self._history = _history_until(workdir / "metrics.jsonl", first_step) if write else []
    if write:
      self._write_metrics()
    self._tensorboard = tensorboard_writer(os.fspath(workdir / "tensorboard")) if write else None

  def start(self, step: int) -> None:
    """Marks the end of the first step (and compilation), `step`: rates and ETA count from here."""
    self._start = self._last_time = time.perf_counter()
    self._first = self._last_step = step

  def log(self, step: int, metrics: list[dict], skipped: int) -> dict:
    """Averages the per-step metrics since the last log (host numpy dicts), prints and writes them."""
    now = time.perf_counter()
    steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    record = {"step": step, **{k: float(np.mean([m[k] for m in metrics])) for k in metrics[0] if k != "finite"},
              "skipped": skipped, "steps_per_s": steps_per_s, "samples_per_s": steps_per_s * self._batch,
              "tflops_per_s": steps_per_s * self._flops / 1e12}
    if self._peak:
      record["mfu"] = steps_per_s * self._flops / self._peak
    overall = (step - self._first) / max(now - self._start, 1e-9)
    eta = _duration((self._num_steps - step) / overall) if overall > 0 else "?"
    if not self._write:  # other processes stay quiet
      return record
    mfu = f", MFU {100 * record['mfu']:.1f}%" if self._peak else ""
    logging.info("step %d/%d  loss %.4f (video %.4f, audio %.4f)  grad %.3g  lr %.3g  %.2f steps/s  %.1f samples/s%s"
                 "  ETA %s", step, self._num_steps, record["loss"], record["loss_video"], record["loss_audio"],
                 record["grad_norm"], record["lr"], steps_per_s, record["samples_per_s"], mfu, eta)
    self._history.append(record)
    self._write_metrics()
    write_png(self._workdir / "loss_curve.png",
              curve_image([r["step"] for r in self._history], [r["loss"] for r in self._history]))
    if self._tensorboard is not None:
      self._tensorboard.write_scalars(step, {name: value for name, value in record.items() if name != "step"})
      self._tensorboard.flush()
    return record

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()

  def _write_metrics(self) -> None:
    """Writes metrics.jsonl whole: one JSON line per record of the history."""
    storage.write_atomically(self._workdir / "metrics.jsonl",
                             "".join(json.dumps(record) + "\n" for record in self._history))
