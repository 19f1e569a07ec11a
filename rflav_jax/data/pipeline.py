"""Input pipeline: a random-access source -> this host's batches, in an order fixed by (seed, step) alone.

The global order: epoch e visits the examples in the order of a permutation drawn from (seed, e); global
batch s holds positions [s G, (s + 1) G) of that endless sequence (G = global_batch_size). Host h of P
takes its contiguous part [h G / P, (h + 1) G / P) of every global batch. So

  - the batch of step s is a function of (seed, s): resuming at step s needs nothing but s (no iterator
    state, no shuffle buffer to checkpoint), and a killed run restarted at its last checkpoint reads
    exactly the batches it would have read;
  - the global batch does not depend on the number of hosts or devices: 1 device and a pod slice with
    the same global batch train on the same examples;
  - each host reads only its own examples, by index, from a random-access source.

Sources: in-memory arrays (synthetic.synthetic_dataset), or a TFDS dataset written in the ArrayRecord
format (avfolder.build_avfolder and synthetic_tfds.build_bouncing_ball write it), read through
`builder.as_data_source(split)`. With `window_frames`, each example is cut to a window of that many
consecutive frames (video and mel alike) at an offset drawn uniformly from (seed, position), position being
fixed by (step, example): the crop too is fixed by the step. From clips of the official 50 frames
(`launch.prepare_data`'s default) a 10-frame window may start at any of their 41 frames, as in the official data
set, which lists every window at stride 1. One difference remains: a window's mel is cut from its clip's, whose
audio was peak-normalised over the clip, where the official code normalises each window's own audio.

Yielded batch (flat, this host's host_batch = G / process_count examples): {"video": float32
(B, T, H, W, 3) in [-1, 1] (or whatever `encode_video` returns), "mel": float32 (B, T, 10, N) times
audio_scale, "label": int32 (B,)}; `jax.make_array_from_process_local_data` turns them into global arrays.
Batches are read ahead on a background thread.
"""
import concurrent.futures
import functools
import itertools
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

if TYPE_CHECKING:  # TensorFlow is imported only by the TFDS paths, not for in-memory data
  import tensorflow_datasets as tfds

FEATURES = ("video", "mel", "label")
_READ_AHEAD = 2  # batches read ahead of the one being used


class Source:
  """Random access to examples: len(source) and source[indices] -> {"video", "mel", "label"} stacked arrays."""

  def __init__(self, source: "tfds.core.DatasetBuilder | Mapping[str, np.ndarray]", split: str = "train"):
    if not isinstance(source, Mapping):  # a TFDS builder
      self._examples = _tfds_source(source, split)
      self._arrays = None
    else:
      missing = [name for name in FEATURES if name not in source]
      if missing:
        raise ValueError(f"in-memory source lacks {missing}; pass a dict with {list(FEATURES)} "
                         "(e.g. synthetic.synthetic_dataset(...)) or a TFDS builder")
      sizes = {name: len(source[name]) for name in FEATURES}
      if len(set(sizes.values())) != 1:
        raise ValueError(f"in-memory arrays must hold the same number of examples, got {sizes}")
      self._arrays = {name: np.asarray(source[name]) for name in FEATURES}
      self._examples = None

  def __len__(self) -> int:
    return len(self._arrays["label"]) if self._arrays is not None else len(self._examples)

  def __getitem__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    if self._arrays is not None:
      return {name: array[np.asarray(indices)] for name, array in self._arrays.items()}
    examples = [self._examples[int(i)] for i in indices]
    return {name: np.stack([np.asarray(example[name]) for example in examples]) for name in FEATURES}

  @functools.cached_property
  def num_frames(self) -> int:
    """Frames per example (read once, from the first example)."""
    return self[[0]]["video"].shape[1]


def _tfds_source(builder: "tfds.core.DatasetBuilder", split: str):
  if split not in builder.info.splits:
    raise ValueError(f"split {split!r} is not in dataset {builder.info.full_name}; it has {sorted(builder.info.splits)}")
  try:
    return builder.as_data_source(split=split)
  except NotImplementedError as error:  # TFDS refuses random access to tfrecord files
    raise ValueError(f"dataset {builder.info.full_name} in {builder.data_dir} is stored as "
                     f"{builder.info.file_format}, which has no random access; rebuild it with "
                     "launch.prepare_data (it writes ArrayRecord) or convert it with "
                     "`tfds convert_format --dataset_dir=<dir> --out_file_format=array_record`") from error


@functools.lru_cache(maxsize=4)
def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The permutation of example indices visited in `epoch` (read-only)."""
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  order.flags.writeable = False
  return order


def host_batch_positions(step: int, global_batch_size: int, process_index: int, process_count: int) -> np.ndarray:
  """Positions in the endless example sequence that host `process_index` reads at `step`."""
  host_batch = global_batch_size // process_count
  first = step * global_batch_size + process_index * host_batch
  return np.arange(first, first + host_batch)


def make_pipeline(source: "tfds.core.DatasetBuilder | Mapping[str, np.ndarray] | Source", *, global_batch_size: int,
                  seed: int, split: str = "train", audio_scale: float = 1.0, repeat: bool = True,
                  start_step: int = 0, window_frames: int | None = None, process_index: int | None = None,
                  process_count: int | None = None, local_device_count: int | None = None,
                  encode_video: Callable[[np.ndarray], Any] | None = None) -> Iterator[dict[str, np.ndarray]]:
  """An iterator over this host's batches from `start_step` on (module docstring): endless, or one epoch.

  Arguments are checked at the call, before any data is read.

  source: a prepared TFDS builder read at `split`, in-memory arrays with at least "video" uint8
    (examples, T, H, W, 3), "mel" float32 (examples, T, F, N) and "label" (examples,), or a `Source`.
  repeat: False stops after one epoch (its last partial global batch is dropped).
  audio_scale: the dataset's mel scale (e.g. codecs.audio.AIST_AUDIO_SCALE); 1 leaves the mel in [-1, 1].
  window_frames: cut each example to this many consecutive frames at a drawn offset (None keeps all T).
  process_index / process_count / local_device_count: default to jax's values for this host.
  encode_video: optional, called on each batch's float video (e.g. SD-VAE latents); its result replaces
    "video" and must keep the leading host_batch axis.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_device_count = jax.local_device_count() if local_device_count is None else local_device_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")
  if global_batch_size < 1 or global_batch_size % (process_count * local_device_count):
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of process_count * "
                     f"local_device_count = {process_count} * {local_device_count}; round it to a multiple")
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0")
  source = source if isinstance(source, Source) else Source(source, split)
  num_examples = len(source)
  if num_examples < global_batch_size:
    raise ValueError(f"{num_examples} examples cannot feed one global batch of {global_batch_size} over "
                     f"{process_count} host(s); use a bigger dataset or a smaller batch")
  if window_frames is not None and not 1 <= window_frames <= source.num_frames:
    raise ValueError(f"window_frames={window_frames}: the examples have {source.num_frames} frames; "
                     f"use 1..{source.num_frames} (the model's predict_frames must fit in a clip)")
  steps = itertools.count(start_step) if repeat else range(start_step, num_examples // global_batch_size)
  read = lambda step: _read_batch(source, step, global_batch_size, seed, process_index, process_count,
                                  window_frames, audio_scale)
  return _read_ahead(map(read, steps), encode_video)


def _read_batch(source: Source, step: int, global_batch_size: int, seed: int, process_index: int,
                process_count: int, window_frames: int | None, audio_scale: float) -> dict[str, np.ndarray]:
  num_examples = len(source)
  positions = host_batch_positions(step, global_batch_size, process_index, process_count)
  epochs, within = np.divmod(positions, num_examples)
  indices = [epoch_order(num_examples, seed, int(e))[i] for e, i in zip(epochs, within)]
  batch = source[indices]
  if window_frames is not None:
    offsets = [np.random.default_rng([seed, int(p), 1]).integers(source.num_frames - window_frames + 1)
               for p in positions]
    crop = lambda x: np.stack([x[b, o:o + window_frames] for b, o in enumerate(offsets)])
    batch = {**batch, "video": crop(batch["video"]), "mel": crop(batch["mel"])}
  return {"video": batch["video"].astype(np.float32) / 127.5 - 1.0,
          "mel": batch["mel"].astype(np.float32) * np.float32(audio_scale),
          "label": batch["label"].astype(np.int32)}


def _read_ahead(batches: Iterator[dict], encode_video) -> Iterator[dict[str, np.ndarray]]:
  """Reads up to _READ_AHEAD batches ahead on a thread; encodes the video (on the caller's thread)."""
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = [pool.submit(next, batches, None) for _ in range(_READ_AHEAD)]
    while True:
      batch = pending.pop(0).result()
      if batch is None:
        return
      pending.append(pool.submit(next, batches, None))
      if encode_video is not None:
        batch["video"] = np.asarray(encode_video(batch["video"]))
      yield batch
