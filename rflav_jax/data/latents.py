"""Cached latents: every clip of a dataset encoded once by the SD-VAE, so that training runs no VAE.

A latents folder holds
  latents.json                              LatentsInfo: which VAE, latent scale and resolution made the latents,
                                            and how the clips are split into shards
  latents-SSSSS-of-NNNNN.array_record       shard S: clips [S K, (S + 1) K) of the source, K = clips_per_shard
Each record is one clip, a msgpack dict (flax.serialization) of
  latent_mean, latent_std   float32 (T, h, w, c) the VAE posterior N(mean, std^2) of each frame, in model space
                            (times latent_scale), so that a draw `mean + std * noise` is what encoding gives
  audio and/or mel          the source clip's (data.pipeline), as stored there
  label                     int64
The official code's pre-encoded latents hold one posterior draw per clip; these keep the posterior, and training
draws from it afresh at every step (train.input), as encoding in the step does.

`encode_dataset` runs on every host of a job at once: host p encodes the shards S with S % hosts == p, each one
data-parallel over the host's devices, and writes each shard whole (a shard appears once complete, in a local
folder or a bucket: storage.staged_file), so a run that stops is finished by running it again: shards already
written are kept.
"""
import dataclasses
import hashlib
import json
import math
import os
from typing import Iterator, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from array_record.python import array_record_data_source, array_record_module
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rflav_jax import storage
from rflav_jax.codecs.sdvae import LATENT_SCALE, AutoencoderKL
from rflav_jax.data.pipeline import Source

INFO_NAME = "latents.json"
VERSION = 1
CLIPS_PER_SHARD = 256
_CLIPS_PER_READ = 8  # clips read from the source at once while encoding


@dataclasses.dataclass(frozen=True)
class LatentsInfo:
  """What made a latents folder (latents.json): the VAE's id (`vae_id`), the scale applied to its latents, the
  frames' resolution, and the layout of the clips."""
  vae: str
  latent_scale: float
  resolution: int
  clip_frames: int
  latent_shape: tuple[int, int, int]  # (h, w, c) of one frame
  num_clips: int
  clips_per_shard: int
  source: str  # the dataset encoded (its folder, or a description) and its split
  version: int = VERSION

  @property
  def num_shards(self) -> int:
    return math.ceil(self.num_clips / self.clips_per_shard)

  def shard_name(self, shard: int) -> str:
    return f"latents-{shard:05d}-of-{self.num_shards:05d}.array_record"

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1)

  @classmethod
  def from_json(cls, text: str) -> "LatentsInfo":
    fields = json.loads(text)
    return cls(**{**fields, "latent_shape": tuple(fields["latent_shape"])})


def vae_id(provenance: dict, params) -> str:
  """Names an SD-VAE's weights: "sha256:<hex>" of the weight file it was converted from (its model folder's
  provenance), or, where there is none (e.g. a stand-in), "params-sha256:<hex>" of its float32 parameters."""
  if provenance.get("sha256"):
    return f"sha256:{provenance['sha256']}"
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda item: str(item[0])):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
  return f"params-sha256:{digest.hexdigest()}"


def check_made_by(info: LatentsInfo, folder: str, vae: str, vae_folder: str) -> None:
  """ValueError (one line) unless the latents in `folder` were made by the VAE `vae` (of `vae_folder`) at this
  code's LATENT_SCALE."""
  if info.vae != vae or info.latent_scale != LATENT_SCALE:
    raise ValueError(f"the latents in {folder} were made by VAE {info.vae} at latent scale {info.latent_scale}, but "
                     f"config.codec.checkpoint={vae_folder} is VAE {vae} at scale {LATENT_SCALE}; point "
                     "config.codec.checkpoint at the VAE that made them, or encode the dataset again into a new "
                     "folder with `python -m launch.prepare_data --dataset_dir=... --sdvae=... --latents_dir=...`")


def encode_dataset(source: Source, model: AutoencoderKL, params, vae: str, latents_dir: str | os.PathLike, *,
                   description: str, clips_per_shard: int = CLIPS_PER_SHARD, frames_per_device: int = 16,
                   process_index: int | None = None, process_count: int | None = None) -> LatentsInfo:
  """Encodes every clip of `source` (holding "video") into `latents_dir` (module docstring); returns its info.

  model, params: the SD-VAE; vae: its `vae_id`. description: what the source is (its folder and split), kept in
  latents.json. frames_per_device: frames each local device encodes per call. Every process of a multi-host job
  calls this with the same arguments; process_index / process_count default to jax's. A folder holding latents
  of another VAE, source or layout is refused.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if "video" not in source.features:
    raise ValueError(f"the dataset to encode holds no frames ({list(source.features)}); pass a dataset of "
                     "launch.prepare_data or the bouncing-ball set")
  if clips_per_shard < 1 or frames_per_device < 1:
    raise ValueError(f"clips_per_shard={clips_per_shard} and frames_per_device={frames_per_device} must be >= 1")
  first = source[[0]]["video"][0]
  factor = model.config.downsample_factor
  if first.shape[1] % factor or first.shape[2] % factor:
    raise ValueError(f"frames of {first.shape[1]}x{first.shape[2]} pixels are not a multiple of the VAE's "
                     f"downsampling factor {factor}")
  info = LatentsInfo(vae=vae, latent_scale=LATENT_SCALE, resolution=first.shape[1], clip_frames=first.shape[0],
                     latent_shape=(first.shape[1] // factor, first.shape[2] // factor, model.config.latent_channels),
                     num_clips=len(source), clips_per_shard=clips_per_shard, source=description)
  folder = storage.as_path(latents_dir)
  _claim(folder, info, write=process_index == 0)
  encode = _parallel_encoder(model, params, frames_per_device)
  for shard in range(process_index, info.num_shards, process_count):
    path = folder / info.shard_name(shard)
    if path.exists():
      continue
    clips = range(shard * clips_per_shard, min((shard + 1) * clips_per_shard, info.num_clips))
    with storage.staged_file(path) as local:  # ArrayRecord writes local files only
      writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
      for record in _encoded_records(source, clips, encode):
        writer.write(record)
      writer.close()
    logging.info("wrote %s (%d clips)", path, len(clips))
  return info


def read_info(latents_dir: str | os.PathLike) -> LatentsInfo:
  """The LatentsInfo of a latents folder (ValueError when it is none)."""
  path = storage.as_path(latents_dir) / INFO_NAME
  if not path.exists():
    raise ValueError(f"{os.fspath(latents_dir)} holds no cached latents (no {INFO_NAME}); write them with "
                     "`python -m launch.prepare_data --dataset_dir=... --sdvae=... --latents_dir=...`")
  return LatentsInfo.from_json(path.read_text())


def open_latents(latents_dir: str | os.PathLike) -> tuple[LatentsInfo, Sequence[dict]]:
  """(info, the clips): random access to a complete latents folder's records as example dicts (data.pipeline)."""
  info = read_info(latents_dir)
  folder = storage.as_path(latents_dir)
  paths = [folder / info.shard_name(shard) for shard in range(info.num_shards)]
  missing = [path.name for path in paths if not path.exists()]
  if missing:
    raise ValueError(f"{os.fspath(latents_dir)} lacks {len(missing)} of its {len(paths)} shards (e.g. {missing[0]}); "
                     "run the same launch.prepare_data command again to finish them")
  return info, _Records(array_record_data_source.ArrayRecordDataSource([os.fspath(path) for path in paths]))


class _Records(Sequence):
  """The records of ArrayRecord shards, decoded to example dicts."""

  def __init__(self, records):
    self._records = records

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self._records):
      raise IndexError(f"record {index} of {len(self._records)}")
    return flax.serialization.msgpack_restore(self._records[index])


def _claim(folder: epath.Path, info: LatentsInfo, write: bool) -> None:
  """Refuses a folder whose latents.json describes other latents; process 0 (`write`) writes ours if it has none."""
  path = folder / INFO_NAME
  if path.exists():
    existing = LatentsInfo.from_json(path.read_text())
    if existing != info:
      raise ValueError(f"{os.fspath(folder)} holds other latents ({existing}); this run makes {info}; write them "
                       "into another folder")
  elif write:
    folder.mkdir(parents=True, exist_ok=True)
    storage.write_atomically(path, info.to_json())
  else:
    folder.mkdir(parents=True, exist_ok=True)


def _parallel_encoder(model: AutoencoderKL, params, frames_per_device: int):
  """frames uint8 (N, H, W, 3) -> (mean, std) float32 (N, h, w, c) in model space, split over this host's devices in
  calls of frames_per_device frames per device (one compilation; the last call padded)."""
  mesh = Mesh(np.array(jax.local_devices()), ("frames",))
  split, whole = NamedSharding(mesh, P("frames")), NamedSharding(mesh, P())
  params = jax.device_put(params, whole)

  @jax.jit
  def posterior(params, frames):
    mean, logvar = model.apply({"params": params}, frames.astype(jnp.float32) / 127.5 - 1.0,
                               method=AutoencoderKL.encode)
    return mean * LATENT_SCALE, jnp.exp(0.5 * logvar) * LATENT_SCALE

  per_call = frames_per_device * mesh.size

  def encode(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = len(frames)
    padded = np.concatenate([frames, np.repeat(frames[-1:], -count % per_call, axis=0)])
    outputs = [posterior(params, jax.device_put(padded[i:i + per_call], split))
               for i in range(0, len(padded), per_call)]
    return tuple(np.concatenate([np.asarray(out[k]) for out in outputs])[:count] for k in range(2))

  return encode


def _encoded_records(source: Source, clips: range, encode) -> Iterator[bytes]:
  """The serialized records of `clips`, read and encoded _CLIPS_PER_READ clips at a time."""
  kept = [name for name in ("audio", "mel") if name in source.features]
  for start in range(clips.start, clips.stop, _CLIPS_PER_READ):
    indices = list(range(start, min(start + _CLIPS_PER_READ, clips.stop)))
    batch = source[indices]
    video = batch["video"]
    mean, std = encode(video.reshape(-1, *video.shape[2:]))
    mean, std = (x.reshape(*video.shape[:2], *x.shape[1:]) for x in (mean, std))
    for i in range(len(indices)):
      record = {"latent_mean": mean[i], "latent_std": std[i], "label": np.int64(batch["label"][i]),
                **{name: batch[name][i] for name in kept}}
      yield flax.serialization.msgpack_serialize(record)


def encode_folder(dataset_dir: str | os.PathLike, split: str, sdvae_folder: str | os.PathLike,
                  latents_dir: str | os.PathLike, frames_per_device: int = 16) -> LatentsInfo:
  """`encode_dataset` of the `split` of a TFDS dataset folder (launch.prepare_data's) with the SD-VAE model folder
  `sdvae_folder` (launch.convert's or a stand-in)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (TensorFlow only when needed)
  from rflav_jax import build, model_folder  # pylint: disable=g-import-not-at-top
  dataset = storage.as_path(dataset_dir)
  if not (dataset / "dataset_info.json").exists():
    raise ValueError(f"{os.fspath(dataset_dir)} holds no TFDS dataset (no dataset_info.json); pass the folder "
                     "launch.prepare_data reported")
  source = Source(tfds.builder_from_directory(os.fspath(dataset)), split)
  model, params = build.load_sdvae(sdvae_folder)
  vae = vae_id(model_folder.read(sdvae_folder, "sdvae").provenance, params)
  return encode_dataset(source, model, params, vae, latents_dir, description=f"{os.fspath(dataset_dir)} ({split})",
                        frames_per_device=frames_per_device)
