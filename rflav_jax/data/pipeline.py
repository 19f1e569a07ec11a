"""tf.data input pipeline: a TFDS dataset or in-memory arrays -> this host's shuffled numpy batches.

Every host reads its own contiguous, disjoint part of the split (tfds.split_for_jax_process's rule: the
examples are divided as evenly as possible, the first hosts taking one more when they do not divide), so
the hosts together cover the dataset. Order: shard -> shuffle (seeded; a new order every epoch, the same
orders for the same seed) -> repeat -> batch -> convert.

Batches are FLAT: each host yields (host_batch, ...) arrays, host_batch = global_batch_size / process_count,
which must divide evenly over the local devices; `jax.make_array_from_process_local_data(sharding, x)` with a
batch-sharded NamedSharding then places host_batch / local_device_count examples on each device.

Yielded batch: {"video": float32 (B, T, H, W, 3) in [-1, 1] (or whatever `encode_video` returns),
"mel": float32 (B, T, 10, N) times audio_scale, "label": int32 (B,)}. Partial batches are dropped.
"""
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

FEATURES = ("video", "mel", "label")


def make_pipeline(source: tfds.core.DatasetBuilder | Mapping[str, np.ndarray], *, global_batch_size: int,
                  seed: int, split: str = "train", audio_scale: float = 1.0, repeat: bool = True,
                  shuffle_buffer: int = 1024, process_index: int | None = None, process_count: int | None = None,
                  local_device_count: int | None = None,
                  encode_video: Callable[[np.ndarray], Any] | None = None) -> Iterator[dict[str, np.ndarray]]:
  """An iterator over this host's batches (module docstring): endless, or one pass when repeat=False.

  Arguments are checked at the call, before any data is read.

  source: a prepared TFDS builder (avfolder.build_avfolder, synthetic_tfds.build_bouncing_ball,
    tfds.builder_from_directory) read at `split`, or in-memory arrays with at least "video" uint8
    (examples, T, H, W, 3), "mel" float32 (examples, T, F, N) and "label" (examples,), such as
    synthetic.synthetic_dataset returns.
  audio_scale: the dataset's mel scale (e.g. codecs.audio.AIST_AUDIO_SCALE); 1 leaves the mel in [-1, 1].
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
  if shuffle_buffer < 1:
    raise ValueError(f"shuffle_buffer={shuffle_buffer}: expected at least 1 (1 disables shuffling)")
  _keep_tensorflow_off_accelerators()
  host_batch = global_batch_size // process_count

  dataset = _host_examples(source, split, process_index, process_count, seed)
  dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.batch(host_batch, drop_remainder=True)
  dataset = dataset.map(lambda batch: _convert(batch, audio_scale), num_parallel_calls=tf.data.AUTOTUNE)
  return _numpy_batches(dataset.prefetch(tf.data.AUTOTUNE), encode_video)


def _numpy_batches(dataset: tf.data.Dataset, encode_video) -> Iterator[dict[str, np.ndarray]]:
  """The dataset's batches as numpy dicts, the video encoded when an encoder is given."""
  for batch in dataset.as_numpy_iterator():
    if encode_video is not None:
      batch["video"] = np.asarray(encode_video(batch["video"]))
    yield batch


def _host_examples(source, split: str, process_index: int, process_count: int, seed: int) -> tf.data.Dataset:
  """This host's part of the examples, as a dataset of {"video", "mel", "label"}."""
  if isinstance(source, tfds.core.DatasetBuilder):
    if split not in source.info.splits:
      raise ValueError(f"split {split!r} is not in dataset {source.info.full_name}; it has "
                       f"{sorted(source.info.splits)}")
    _check_enough_examples(source.info.splits[split].num_examples, process_count)
    host_split = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
    dataset = source.as_dataset(split=host_split, shuffle_files=True,
                                read_config=tfds.ReadConfig(shuffle_seed=seed))
    return dataset.map(lambda example: {name: example[name] for name in FEATURES})
  missing = [name for name in FEATURES if name not in source]
  if missing:
    raise ValueError(f"in-memory source lacks {missing}; pass a dict with {list(FEATURES)} "
                     "(e.g. synthetic.synthetic_dataset(...)) or a TFDS builder")
  sizes = {name: len(source[name]) for name in FEATURES}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"in-memory arrays must hold the same number of examples, got {sizes}")
  _check_enough_examples(sizes["video"], process_count)
  part = np.array_split(np.arange(sizes["video"]), process_count)[process_index]
  return tf.data.Dataset.from_tensor_slices({name: np.asarray(source[name])[part] for name in FEATURES})


def _check_enough_examples(num_examples: int, process_count: int) -> None:
  if num_examples < process_count:
    raise ValueError(f"{num_examples} examples cannot feed {process_count} hosts (each needs at least one); "
                     "use a bigger dataset or fewer hosts")


def _convert(batch: dict[str, tf.Tensor], audio_scale: float) -> dict[str, tf.Tensor]:
  """uint8 video -> float32 [-1, 1]; mel * audio_scale; int32 labels."""
  return {"video": tf.cast(batch["video"], tf.float32) / 127.5 - 1.0,
          "mel": tf.cast(batch["mel"], tf.float32) * audio_scale,
          "label": tf.cast(batch["label"], tf.int32)}


def _keep_tensorflow_off_accelerators() -> None:
  """tf.data only needs the CPU; hide GPUs from TensorFlow so it leaves their memory to JAX."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TensorFlow already initialised its devices; nothing left to change
    pass
