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

Sources: in-memory arrays (synthetic.synthetic_dataset), a TFDS dataset written in the ArrayRecord format
(avfolder.build_avfolder and synthetic_tfds.build_bouncing_ball write it), read through
`builder.as_data_source(split)`, or any sequence of example dicts (data.latents.open_latents: clips encoded once
by the SD-VAE). An example holds, T being its frames:

  video                     uint8 (T, H, W, 3) frames, or
  latent_mean, latent_std   float32 (T, h, w, c) the SD-VAE posterior in model space (cached latents);
  mel                       float32 (T, F, N) the clip's mel (its audio normalised over the clip), and/or
  audio                     float32 (T * S,) the clip's waveform at 16 kHz in int16 scale, S samples per frame;
  label                     int.

With `window_frames`, each example is cut to a window of that many consecutive frames at an offset drawn uniformly
from (seed, position), position being fixed by (step, example): the crop too is fixed by the step. From clips of
the official 50 frames (`launch.prepare_data`'s default) a 10-frame window may start at any of their 41 frames, as
in the official data set, which lists every window at stride 1. With `mel_per_window` the window's mel is computed
from the window's own audio (`codecs.audio.mel_from_waveform`: peak-normalised over the window, as the official
code does); otherwise it is cut from the clip's mel.

Yielded batch (flat, this host's host_batch = G / process_count examples): {"video": float32
(B, T, H, W, 3) in [-1, 1] (or whatever `encode_video` returns), "mel": float32 (B, T, F, N) times
audio_scale, "label": int32 (B,)}; from cached latents "latent_mean" and "latent_std" (B, T, h, w, c) in place of
"video". `jax.make_array_from_process_local_data` turns them into global arrays. Batches are read ahead on
background threads.
"""
import collections
import concurrent.futures
import functools
import itertools
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from rflav_jax.codecs.audio import MelParams, frames_from_mel, mel_from_waveform

if TYPE_CHECKING:  # TensorFlow is imported only by the TFDS paths, not for in-memory data
  import tensorflow_datasets as tfds

FEATURES = ("video", "mel", "label")  # a batch's arrays (from cached latents: LATENT_FEATURES for "video")
LATENT_FEATURES = ("latent_mean", "latent_std")
_KNOWN = ("video", *LATENT_FEATURES, "mel", "audio", "label")  # what a Source reads of an example
_PER_FRAME = ("video", *LATENT_FEATURES, "mel")  # (T, ...) arrays cut to the window frame by frame
_READ_AHEAD = 4  # batches read ahead of the one being used ...
_READ_WORKERS = 2  # ... by this many threads


class Source:
  """Random access to examples: len(source) and source[indices] -> {feature: stacked arrays} (module docstring).

  `features` are the names of _KNOWN that the examples hold: "label", "video" or LATENT_FEATURES, and "mel" and/or
  "audio".
  """

  def __init__(self, source: "tfds.core.DatasetBuilder | Mapping[str, np.ndarray] | Sequence[Mapping]",
               split: str = "train"):
    if isinstance(source, Mapping):  # in-memory arrays
      self.features = tuple(name for name in _KNOWN if name in source)
      sizes = {name: len(source[name]) for name in self.features}
      if len(set(sizes.values())) > 1:
        raise ValueError(f"in-memory arrays must hold the same number of examples, got {sizes}")
      self._arrays = {name: np.asarray(source[name]) for name in self.features}
      self._examples = None
    else:
      self._examples = source if isinstance(source, Sequence) else _tfds_source(source, split)
      self._arrays = None
      self.features = tuple(name for name in _KNOWN if name in self._examples[0])
    has = set(self.features)
    needs = {"label": "label" in has, "video (or latent_mean and latent_std)": "video" in has or
             has >= set(LATENT_FEATURES), "mel or audio": bool(has & {"mel", "audio"})}
    missing = [what for what, present in needs.items() if not present]
    if missing:
      raise ValueError(f"the source lacks {' and '.join(missing)}: its examples hold {sorted(has)}; pass e.g. "
                       "synthetic.synthetic_dataset(...), a TFDS builder of launch.prepare_data or cached latents")

  def __len__(self) -> int:
    return len(self._arrays["label"]) if self._arrays is not None else len(self._examples)

  def __getitem__(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    if self._arrays is not None:
      return {name: array[np.asarray(indices)] for name, array in self._arrays.items()}
    examples = [self._examples[int(i)] for i in indices]
    return {name: np.stack([np.asarray(example[name]) for example in examples]) for name in self.features}

  @functools.cached_property
  def num_frames(self) -> int:
    """Frames per example (read once, from the first example)."""
    first = self[[0]]
    return first["video" if "video" in first else "latent_mean"].shape[1]

  @functools.cached_property
  def samples_per_frame(self) -> int:
    """Audio samples per frame, a whole number of mel hops (ValueError when the source has no fitting audio)."""
    if "audio" not in self.features:
      raise ValueError("mel_per_window needs the clips' audio, which this source lacks; build the dataset with "
                       "launch.prepare_data (its datasets hold \"audio\") or set mel_per_window=False")
    samples, hop = self[[0]]["audio"].shape[1], MelParams().hop_length
    if samples % self.num_frames or (samples // self.num_frames) % hop:
      raise ValueError(f"the examples hold {samples} audio samples for {self.num_frames} frames: not a whole number "
                       f"of mel hops ({hop}) per frame")
    return samples // self.num_frames


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


def make_pipeline(source: "tfds.core.DatasetBuilder | Mapping[str, np.ndarray] | Sequence[Mapping] | Source", *,
                  global_batch_size: int, seed: int, split: str = "train", audio_scale: float = 1.0,
                  repeat: bool = True, start_step: int = 0, window_frames: int | None = None,
                  mel_per_window: bool = False, process_index: int | None = None, process_count: int | None = None,
                  local_device_count: int | None = None,
                  encode_video: Callable[[np.ndarray], Any] | None = None) -> Iterator[dict[str, np.ndarray]]:
  """An iterator over this host's batches from `start_step` on (module docstring): endless, or one epoch.

  Arguments are checked at the call, before any data is read.

  source: a prepared TFDS builder read at `split`, in-memory arrays (examples first) or a sequence of example
    dicts, holding the features of the module docstring; or a `Source`.
  repeat: False stops after one epoch (its last partial global batch is dropped).
  audio_scale: the dataset's mel scale (e.g. codecs.audio.AIST_AUDIO_SCALE); 1 leaves the mel in [-1, 1].
  window_frames: cut each example to this many consecutive frames at a drawn offset (None keeps all T).
  mel_per_window: compute each window's mel from its own audio (the source must hold "audio"); False cuts the
    window's mel from the clip's.
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
  if encode_video is not None and "video" not in source.features:
    raise ValueError("encode_video needs frames, but the source holds cached latents")
  # Audio samples per frame where the mel is computed from the audio (always when the source holds no mel).
  samples_per_frame = source.samples_per_frame if mel_per_window or "mel" not in source.features else None
  steps = itertools.count(start_step) if repeat else iter(range(start_step, num_examples // global_batch_size))
  read = functools.partial(_read_batch, source, global_batch_size=global_batch_size, seed=seed,
                           process_index=process_index, process_count=process_count, window_frames=window_frames,
                           samples_per_frame=samples_per_frame, audio_scale=audio_scale)
  return _read_ahead(steps, read, encode_video)


def window_offsets(positions: np.ndarray, seed: int, num_frames: int, window_frames: int) -> list[int]:
  """First frame of the window cut from the example at each position, uniform in [0, num_frames - window_frames]."""
  return [int(np.random.default_rng([seed, int(p), 1]).integers(num_frames - window_frames + 1)) for p in positions]


def _read_batch(source: Source, step: int, *, global_batch_size: int, seed: int, process_index: int,
                process_count: int, window_frames: int | None, samples_per_frame: int | None,
                audio_scale: float) -> dict[str, np.ndarray]:
  num_examples = len(source)
  positions = host_batch_positions(step, global_batch_size, process_index, process_count)
  epochs, within = np.divmod(positions, num_examples)
  indices = [epoch_order(num_examples, seed, int(e))[i] for e, i in zip(epochs, within)]
  batch = source[indices]
  frames = window_frames or source.num_frames
  offsets = window_offsets(positions, seed, source.num_frames, frames) if window_frames else [0] * len(indices)
  crop = lambda x, per_frame=1: np.stack([x[b, o * per_frame:(o + frames) * per_frame] for b, o in enumerate(offsets)])
  cut = [name for name in _PER_FRAME if name in batch and not (name == "mel" and samples_per_frame)]
  out = {name: crop(batch[name]).astype(np.float32) for name in cut}
  if "video" in out:
    out["video"] = out["video"] / 127.5 - 1.0
  if samples_per_frame:  # each window's mel from its own audio
    columns = samples_per_frame // MelParams().hop_length
    out["mel"] = np.stack([frames_from_mel(mel_from_waveform(audio), columns)
                           for audio in crop(batch["audio"], samples_per_frame)])
  out["mel"] = out["mel"] * np.float32(audio_scale)
  out["label"] = batch["label"].astype(np.int32)
  return out


def _read_ahead(steps: Iterator[int], read: Callable[[int], dict], encode_video) -> Iterator[dict[str, np.ndarray]]:
  """read(step) for each step, _READ_AHEAD steps ahead on _READ_WORKERS threads, in order; encodes the video (on the
  caller's thread)."""
  with concurrent.futures.ThreadPoolExecutor(_READ_WORKERS) as pool:
    pending = collections.deque(pool.submit(read, step) for step in itertools.islice(steps, _READ_AHEAD))
    while pending:
      batch = pending.popleft().result()
      pending.extend(pool.submit(read, step) for step in itertools.islice(steps, 1))
      if encode_video is not None:
        batch["video"] = np.asarray(encode_video(batch["video"]))
      yield batch
