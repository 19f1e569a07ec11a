"""config.data -> this host's training batches from a given step on, checked against the model.

config.data.source:
  "synthetic"       the bouncing-ball set generated in memory (num_clips clips of clip_frames frames at resolution),
  "synthetic_tfds"  the same set written once as a TFDS dataset under data_dir,
  "tfds"            a prepared dataset folder (`launch.prepare_data`), dataset_dir = the folder holding
                    dataset_info.json (e.g. /data/tfds/av_folder/aist_r256_fps10_t10_labelled/1.0.0).
Clips are cut to windows of model.predict_frames frames; mel is multiplied by config.audio_scale. With
config.codec.kind == "sdvae" the frames are encoded to latents drawn from the posterior with a key fixed by
(seed, step, host), so a resumed run sees the same latents.
"""
from typing import Iterator

import jax
import numpy as np

from rflav_jax import storage
from rflav_jax.data import pipeline, synthetic
from rflav_jax.models.flav import FLAV

SOURCES = ("synthetic", "synthetic_tfds", "tfds")


def data_source(data_config) -> pipeline.Source:
  """The random-access source of config.data (its train split)."""
  if data_config.source not in SOURCES:
    raise ValueError(f"config.data.source={data_config.source!r}: expected one of {SOURCES}")
  if data_config.source == "synthetic":
    clips = synthetic.BouncingBallConfig(resolution=data_config.resolution, num_frames=data_config.clip_frames)
    return pipeline.Source(synthetic.synthetic_dataset(data_config.num_clips, clips, seed=data_config.seed))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (TensorFlow only when needed)
  from rflav_jax.data import synthetic_tfds  # pylint: disable=g-import-not-at-top
  if data_config.source == "synthetic_tfds":
    if not data_config.data_dir:
      raise ValueError("config.data.source='synthetic_tfds' needs config.data.data_dir, a folder to write it into")
    builder = synthetic_tfds.build_bouncing_ball(
        data_config.data_dir, resolution=data_config.resolution, num_frames=data_config.clip_frames,
        num_train=data_config.num_clips, num_test=0, seed=data_config.seed)
  else:
    folder = storage.as_path(data_config.dataset_dir)  # a local folder or a URL (gs://...)
    if not (folder / "dataset_info.json").is_file():
      raise ValueError(f"config.data.dataset_dir={str(folder)!r} holds no TFDS dataset (no dataset_info.json); "
                       "build one with `python -m launch.prepare_data` and pass the folder it reports")
    builder = tfds.builder_from_directory(folder)
  return pipeline.Source(builder, data_config.split)


def host_batches(config, model: FLAV, source: pipeline.Source, codec, start_step: int) -> Iterator[dict]:
  """This host's batches of config.train.batch_size global examples, steps start_step, start_step + 1, ..."""
  batches = pipeline.make_pipeline(source, global_batch_size=config.train.batch_size, seed=config.data.seed,
                                   audio_scale=config.audio_scale, start_step=start_step,
                                   window_frames=model.predict_frames)
  encode_key = jax.random.fold_in(jax.random.PRNGKey(config.data.seed), jax.process_index())
  for step, batch in enumerate(batches, start_step):
    if config.codec.kind != "pixel":
      batch["video"] = codec.encode(batch["video"], key=jax.random.fold_in(encode_key, step))
    yield batch


def check_batch(batch: dict, model: FLAV, config) -> None:
  """ValueError naming what in the data does not fit the model (before anything is compiled)."""
  size, channels = model.latent_size, model.in_channels
  video, mel = batch["video"].shape, batch["mel"].shape
  if video[2:] != (size, size, channels):
    raise ValueError(f"the data gives video frames {video[2:]} (after config.codec.kind={config.codec.kind!r}) but "
                     f"the model takes ({size}, {size}, {channels}); make config.model.latent_size / in_channels "
                     "match the data's resolution and codec")
  if mel[2:] != (model.audio_columns, model.n_mels):
    raise ValueError(f"the data gives mel frames {mel[2:]} but the model takes ({model.audio_columns}, {model.n_mels});"
                     " set config.model.n_mels to the dataset's mel bins")
  labels = np.asarray(batch["label"])
  if model.num_classes and (labels.min() < 0 or labels.max() >= model.num_classes):
    raise ValueError(f"the data has labels up to {labels.max()} but config.model.num_classes={model.num_classes}; "
                     "set num_classes to the dataset's number of classes (or 0 for an unconditional model)")
