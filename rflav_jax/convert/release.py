"""Released checkpoint folders (weights + config.json) -> model folders (model.json + Orbax params).

kinds: "flav" (the transformer), "sdvae" (a diffusers AutoencoderKL folder), "vocoder" (HiFi-GAN generator).
`convert_release` maps one folder's weights onto the Flax network and writes them with rflav_jax.model_folder;
rflav_jax.build reads the folder back. `convert_download` takes a repository as downloaded, whose parts sit in
its top folder and in subfolders (FLAV at the top of R-FLAV-B-1-AIST with its HiFi-GAN in vocoder/; the SD-VAE at
the top of sd-vae-ft-ema), finds each part by its config.json (`release_parts`) and converts it to
output_dir/<kind>.
"""
import pathlib

from etils import epath

from rflav_jax import model_folder, storage
from rflav_jax.convert import flav, hifigan, sdvae
from rflav_jax.convert.checkpoint_io import find_weights, read_checkpoint, read_config_json
from rflav_jax.models.flav import flav_args

KINDS = tuple(model_folder.KINDS)


def convert_release(kind: str, folder, output_dir, *, weights: str | None = None,
                    use_ema: bool = True) -> epath.Path:
  """Release folder of `kind` (local) -> a model folder in output_dir (local or a URL); returns output_dir.

  Refuses, naming the likely mix-up, a folder already converted or one whose config.json is of another kind.
  """
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
  folder = pathlib.Path(folder)
  if (folder / model_folder.PARAMS).is_dir() and any(
      (folder / name).is_file() for name in (model_folder.MODEL_JSON, model_folder.LEGACY_CONFIG)):
    raise ValueError(f"{folder} is already a converted folder ({model_folder.MODEL_JSON} + {model_folder.PARAMS}/): "
                     f"pass it to the launchers as it is, e.g. --config.checkpoint={folder}")
  config = read_config_json(folder)
  looks = model_folder.release_kind(config)
  if looks not in (None, kind):
    raise ValueError(f"{folder}: this looks like a {model_folder.KINDS[looks]} release folder (config.json has "
                     f"{model_folder.release_markers(looks, config)}), not a {model_folder.KINDS[kind]} one: use "
                     f"--kind={looks}")
  path = find_weights(folder, weights)
  checkpoint = read_checkpoint(path)
  try:
    if kind == "flav":
      model, params = flav.flav_from_official(flav.select_state_dict(checkpoint, use_ema), **config)
      config = flav_args(model)
    elif kind == "sdvae":
      _, params = sdvae.sdvae_from_diffusers(checkpoint, config)
    else:
      _, params = hifigan.hifigan_from_official(checkpoint, config)
  except ValueError as error:
    raise type(error)(f"{path} (with {folder / 'config.json'}): {error}") from None
  return model_folder.write(output_dir, kind, params, config, model_folder.file_provenance(path))


def release_parts(folder) -> dict[str, pathlib.Path]:
  """{kind: folder} of the parts of a downloaded release: `folder` itself and each subfolder whose config.json
  marks a kind (model_folder.release_kind), e.g. {"flav": aist, "vocoder": aist/vocoder}.

  FileNotFoundError if there is none; ValueError for a config.json of no clear kind, or two parts of one kind.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} does not exist; pass the folder a release was downloaded to")
  parts: dict[str, pathlib.Path] = {}
  for part in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
    if not (part / "config.json").is_file():
      continue
    config = read_config_json(part)
    kind = model_folder.release_kind(config)
    if kind is None:
      marks = {k: model_folder.release_markers(k, config) for k in KINDS}
      raise ValueError(f"{part / 'config.json'} is not of one clear kind (keys of each kind it holds: {marks}): "
                       "convert that folder with --kind and --checkpoint_dir")
    if kind in parts:
      raise ValueError(f"{parts[kind]} and {part} both hold a {model_folder.KINDS[kind]}: convert each with "
                       f"--kind={kind} --checkpoint_dir=<folder> --output_dir=<folder>")
    parts[kind] = part
  if not parts:
    raise FileNotFoundError(f"{folder} and its subfolders hold no config.json: pass the folder a release was "
                            "downloaded to (its weights beside a config.json)")
  return parts


def convert_download(folder, output_dir, *, weights: str | None = None,
                     use_ema: bool = True) -> dict[str, epath.Path]:
  """Every part of the downloaded release `folder` converted to output_dir/<kind>; returns {kind: that folder}.

  weights names the weight file of the part at the top of `folder`, when it holds several.
  """
  parts = release_parts(folder)
  return {kind: convert_release(kind, part, storage.as_path(output_dir) / kind,
                                weights=weights if part == pathlib.Path(folder) else None, use_ema=use_ema)
          for kind, part in parts.items()}
