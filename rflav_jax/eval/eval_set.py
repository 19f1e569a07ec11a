"""The evaluation set: N clips with their audio, laid out as the official `sample-metrics.py` writes them, resumable.

  python -m launch.sample --config.sample.eval_clips=2048 --output_dir=samples         # the paper's 16-frame clips
  python -m launch.sample --config.sample.eval_clips=64 --config.sample.eval_source=synthetic --output_dir=real

Files, for i = 0 .. N - 1 (N = config.sample.eval_clips): <output_dir>/video/sample_<i>_video.mp4 (H.264 + AAC,
10 fps, 16 kHz) and <output_dir>/audio/sample_<i>_audio.wav (16-bit mono, 16 kHz), each config.sample.eval_frames
frames long (16 as the paper's clips; 240 for the long-video evaluation), and eval_set.json, the recipe.

Source (config.sample.eval_source): "model" generates the clips with the Generator of the config; "synthetic"
writes the built-in bouncing-ball set's clips instead (`data.synthetic` with seed config.seed + 1, clip i of it as
clip i, as launch.evaluate's real clips), the real set to score a model against.

Batches: generated clips come config.sample.eval_batch_size = B at a time, split over all local devices. Clip i
belongs to batch k = i // B, one `Generator.stream` of B streams with the seed `batch_seed(config.seed, k)`; so clip
i depends on (config.seed, B, i) and the model only, and N only says how many clips are kept (the last batch is
generated whole, its clips past N are dropped).

Labels, as `sample-metrics.py` draws them: it gives every batch the same class list `--classes` (default [0]), so
with one class every clip gets that class, and with a list as long as the batch clip j of each batch gets classes[j];
an unconditional model (`--num-classes 0`) gets no labels. Here clip i gets eval_labels[i % len(eval_labels)]: the
same labels wherever the official rule is defined, and independent of B; an unconditional model gets its null label 0.

Resuming: each file appears only once whole (storage.staged_file: written under a temporary name, or for a URL
uploaded when complete), the wav first and the mp4 last; a clip is complete when both exist. A run into a folder
that holds part of the set skips the batches whose clips are complete and re-makes the others, writing only their
incomplete clips. eval_set.json holds what decides the clips (everything but N); a run with another recipe into the
same folder is refused.
"""
import contextlib
import json
import os
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from rflav_jax import storage
from rflav_jax.data import synthetic
from rflav_jax.generator import FPS, SAMPLE_RATE, Generator, SamplingOptions, check_label
from rflav_jax.media.writer import Mp4Writer, write_wav

SOURCES = ("model", "synthetic")
RECIPE_FILE = "eval_set.json"
LOG_EVERY_S = 10.0


def clip_paths(folder: str | os.PathLike, i: int) -> tuple[epath.Path, epath.Path]:
  """(mp4, wav) of clip i, as `sample-metrics.py` names them."""
  folder = storage.as_path(folder)
  return folder / "video" / f"sample_{i}_video.mp4", folder / "audio" / f"sample_{i}_audio.wav"


def is_complete(folder: str | os.PathLike, i: int) -> bool:
  """Whether both files of clip i exist (each appears only once written whole)."""
  return all(path.exists() for path in clip_paths(folder, i))


def clip_labels(first: int, count: int, eval_labels, num_classes: int) -> np.ndarray:
  """int (count,) labels of clips first .. first + count - 1: eval_labels cycled; 0 (the null label) for an
  unconditional model (num_classes 0)."""
  if not num_classes:
    return np.zeros(count, np.int64)
  eval_labels = np.asarray(eval_labels, np.int64)
  return eval_labels[np.arange(first, first + count) % len(eval_labels)]


def batch_seed(seed: int, batch: int) -> int:
  """The Generator seed of batch `batch` of the set drawn with `seed`: distinct for every (seed, batch) pair
  (with high probability), so sets of different seeds share no batch."""
  return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def check_options(config) -> None:
  """ValueError naming the first config.sample eval field out of its range."""
  opts = config.sample
  if opts.eval_clips < 1:
    raise ValueError(f"config.sample.eval_clips={opts.eval_clips} must be a positive number of clips")
  if opts.eval_frames < 1:
    raise ValueError(f"config.sample.eval_frames={opts.eval_frames} must be a positive number of frames per clip")
  if opts.eval_source not in SOURCES:
    raise ValueError(f"config.sample.eval_source={opts.eval_source!r}: expected one of {SOURCES}")
  if opts.eval_source == "synthetic":
    return
  devices = jax.local_device_count()
  if opts.eval_batch_size < 1 or opts.eval_batch_size % devices:
    raise ValueError(f"config.sample.eval_batch_size={opts.eval_batch_size}: pass a positive multiple of the "
                     f"{devices} local device(s), so that every device generates")
  if not len(opts.eval_labels):
    raise ValueError("config.sample.eval_labels is empty: pass the classes to cycle over, e.g. '(0,)'")
  for b, label in enumerate(opts.eval_labels):
    check_label(label, config.model.num_classes, f"config.sample.eval_labels[{b}]")
  SamplingOptions.from_config(opts)


def recipe(config) -> dict:
  """What decides the clips of the set of `config` (every eval field but the number of clips), as JSON values."""
  opts = config.sample
  common = {"source": opts.eval_source, "frames": opts.eval_frames, "seed": config.seed}
  if opts.eval_source == "synthetic":
    return {**common, "data_seed": config.seed + 1, "resolution": config.model.latent_size}
  return {**common, "batch_size": opts.eval_batch_size, "labels": list(opts.eval_labels),
          "checkpoint": config.checkpoint, "model": config.model.to_dict(), "codec": config.codec.to_dict(),
          "vocoder": config.vocoder.to_dict(), "audio_scale": config.audio_scale,
          "sampling": {name: opts[name] for name in SamplingOptions.__dataclass_fields__}}


def _claim(folder: epath.Path, wanted: dict) -> None:
  """Writes the recipe into the folder, or checks that the one there is the same."""
  path = folder / RECIPE_FILE
  if path.exists():
    found = json.loads(path.read_text())
    if found != wanted:
      changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
      raise ValueError(f"{folder} holds an evaluation set of another recipe ({', '.join(changed)} differ, see {path});"
                       " pass another --output_dir, or the config that made it to resume it")
    return
  folder.mkdir(parents=True, exist_ok=True)
  storage.write_atomically(path, json.dumps(wanted, indent=1))


class _ClipWriter:
  """Writes one clip's mp4 chunk by chunk and its wav at the end; each file appears when whole."""

  def __init__(self, folder: epath.Path, i: int):
    self.mp4, self.wav = clip_paths(folder, i)
    for path in (self.mp4, self.wav):
      path.parent.mkdir(parents=True, exist_ok=True)
    self.staged = contextlib.ExitStack()
    self.writer = Mp4Writer(self.staged.enter_context(storage.staged_file(self.mp4)), fps=FPS,
                            sample_rate=SAMPLE_RATE)
    self.sound = []

  def write(self, video: np.ndarray, wav: np.ndarray) -> None:
    """uint8 frames (n, H, W, 3) and their float32 audio (n * 1600,) in [-1, 1]."""
    self.writer.write(video, wav)
    self.sound.append(wav)

  def finish(self) -> None:
    self.writer.close()
    with storage.staged_file(self.wav) as wav:
      write_wav(wav, np.concatenate(self.sound), SAMPLE_RATE)
    self.staged.close()  # the mp4 appears


class _Progress:
  """Logs the clips written so far, the rate and an ETA, at most every LOG_EVERY_S and at the end."""

  def __init__(self, total: int, done: int):
    self.total, self.done, self.made = total, done, 0
    self.start = self.last = time.perf_counter()

  def add(self, clips: int) -> None:
    self.done, self.made = self.done + clips, self.made + clips
    now = time.perf_counter()
    if self.done == self.total or now - self.last >= LOG_EVERY_S:
      self.last, rate = now, self.made / (now - self.start)
      logging.info("evaluation set: clip %d/%d, %.2f clips/s, ETA %.0f s", self.done, self.total, rate,
                   (self.total - self.done) / rate)


def write_eval_set(config, output_dir: str | os.PathLike) -> list[epath.Path]:
  """Writes the config.sample.eval_clips clips of the set (module docstring) that output_dir lacks; returns the mp4
  paths of all of them."""
  check_options(config)
  opts, folder = config.sample, storage.as_path(output_dir)
  _claim(folder, recipe(config))
  num_clips = opts.eval_clips
  done = sum(is_complete(folder, i) for i in range(num_clips))
  logging.info("evaluation set in %s: %d of %d clips of %d frames already complete", folder, done, num_clips,
               opts.eval_frames)
  progress = _Progress(num_clips, done)
  if opts.eval_source == "synthetic":
    _write_synthetic(config, folder, progress)
  else:
    _write_generated(config, folder, progress)
  return [clip_paths(folder, i)[0] for i in range(num_clips)]


def _write_generated(config, folder: epath.Path, progress: _Progress) -> None:
  opts, batch = config.sample, config.sample.eval_batch_size
  generator = None  # built once a batch needs it, so a complete set loads no model
  for first in range(0, opts.eval_clips, batch):
    todo = [i for i in range(first, min(first + batch, opts.eval_clips)) if not is_complete(folder, i)]
    if not todo:
      continue
    generator = generator or Generator.from_config(config)
    labels = clip_labels(first, batch, opts.eval_labels, generator.model.num_classes)
    writers = {i: _ClipWriter(folder, i) for i in todo}
    for chunk in generator.stream(labels, opts.eval_frames, seed=batch_seed(config.seed, first // batch)):
      for i, writer in writers.items():
        writer.write(chunk.video[i - first], chunk.wav[i - first])
    for writer in writers.values():
      writer.finish()
    progress.add(len(todo))


def _write_synthetic(config, folder: epath.Path, progress: _Progress) -> None:
  clips = synthetic.BouncingBallConfig(resolution=config.model.latent_size, num_frames=config.sample.eval_frames)
  for i in range(config.sample.eval_clips):
    if is_complete(folder, i):
      continue
    clip = synthetic.generate_clip(config.seed + 1, i, clips)
    writer = _ClipWriter(folder, i)
    writer.write(clip.video, clip.audio)
    writer.finish()
    progress.add(1)
