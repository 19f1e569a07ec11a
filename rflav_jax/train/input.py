"""config.data -> this host's training batches from a given step on, checked against the model, on the devices.

config.data.source:
  "synthetic"       the bouncing-ball set generated in memory (num_clips clips of clip_frames frames at resolution),
  "synthetic_tfds"  the same set written once as a TFDS dataset under data_dir,
  "tfds"            a prepared dataset folder (`launch.prepare_data`), dataset_dir = the folder holding
                    dataset_info.json (e.g. /data/tfds/av_folder/aist_r256_fps10_t50_labelled/1.1.0),
  "latents"         such a dataset's clips encoded once by the SD-VAE (`launch.prepare_data --sdvae`, data.latents),
                    latents_dir = their folder: no VAE runs while training. They must have been made by the VAE
                    of config.codec.checkpoint (which the previews decode with).
Clips are cut to windows of model.predict_frames frames; with config.data.mel_per_window each window's mel is
computed from its own audio; mel is multiplied by config.audio_scale. With config.codec.kind == "sdvae" the video
is encoded (or, from cached latents, drawn from the stored posterior) to latents with a key fixed by
(seed, step, host), so a resumed run sees the same latents; both ways draw the same noise.
`prefetch_to_devices` turns the host batches into global arrays on the devices on a background thread, while the
step before runs.
"""
import queue
import threading
from typing import Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from rflav_jax import model_folder, storage
from rflav_jax.data import latents, pipeline, synthetic
from rflav_jax.models.flav import FLAV
from rflav_jax.train import parallel

SOURCES = ("synthetic", "synthetic_tfds", "tfds", "latents")


def data_source(data_config) -> pipeline.Source:
  """The random-access source of config.data (its train split)."""
  if data_config.source not in SOURCES:
    raise ValueError(f"config.data.source={data_config.source!r}: expected one of {SOURCES}")
  if data_config.source == "synthetic":
    clips = synthetic.BouncingBallConfig(resolution=data_config.resolution, num_frames=data_config.clip_frames)
    return pipeline.Source(synthetic.synthetic_dataset(data_config.num_clips, clips, seed=data_config.seed))
  if data_config.source == "latents":
    return pipeline.Source(latents.open_latents(data_config.latents_dir)[1])
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
  cached = set(pipeline.LATENT_FEATURES) <= set(source.features)
  if cached:
    _check_latents_made_by(config, codec)
  batches = pipeline.make_pipeline(source, global_batch_size=config.train.batch_size, seed=config.data.seed,
                                   audio_scale=config.audio_scale, start_step=start_step,
                                   window_frames=model.predict_frames, mel_per_window=config.data.mel_per_window)
  encode_key = jax.random.fold_in(jax.random.PRNGKey(config.data.seed), jax.process_index())
  for step, batch in enumerate(batches, start_step):
    key = jax.random.fold_in(encode_key, step)
    if cached:
      batch["video"] = draw_latents(batch.pop("latent_mean"), batch.pop("latent_std"), key)
    elif config.codec.kind != "pixel":
      batch["video"] = codec.encode(batch["video"], key=key)
    yield batch


def draw_latents(mean: np.ndarray, std: np.ndarray, key) -> np.ndarray:
  """mean + std * N(0, 1) with the noise of `key`: the draw SdVaeCodec.encode(frames, key) makes, computed on the
  host's CPU (not queued behind the training step on the accelerators)."""
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    noise = np.asarray(jax.random.normal(key, mean.shape, np.float32))
  return mean + std * noise


def _check_latents_made_by(config, codec) -> None:
  if config.codec.kind != "sdvae":
    raise ValueError(f"config.data.source='latents' needs config.codec.kind='sdvae' (not {config.codec.kind!r}) and "
                     "config.codec.checkpoint, the VAE that made the latents")
  provenance = model_folder.read(config.codec.checkpoint, "sdvae").provenance
  latents.check_made_by(latents.read_info(config.data.latents_dir), config.data.latents_dir,
                        latents.vae_id(provenance, codec.params), config.codec.checkpoint)


def prefetch_to_devices(batches: Iterator[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
  """The global batches (`parallel.global_batch`) of this host's `batches`, in order, made on a background thread at
  most `size` ahead of the one in use: the next steps' batches are read, encoded and copied to the devices while
  the current step runs. Closing the iterator stops the thread; its errors are raised here."""
  ready = queue.Queue(maxsize=size)
  stop = threading.Event()
  end = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for batch in batches:
        if not put(parallel.global_batch(batch, mesh)):
          break
      else:
        put(end)
    except BaseException as error:  # pylint: disable=broad-except  # handed to the consumer, which raises it
      put(error)
    finally:
      if hasattr(batches, "close"):
        batches.close()

  thread = threading.Thread(target=produce, name="prefetch_to_devices", daemon=True)
  thread.start()
  try:
    while (item := ready.get()) is not end:
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join()


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
