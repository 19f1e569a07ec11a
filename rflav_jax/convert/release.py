"""Released checkpoint folders (weights + config.json) -> model folders (model.json + Orbax params).

kinds: "flav" (the transformer), "sdvae" (a diffusers AutoencoderKL folder), "vocoder" (HiFi-GAN generator).
`convert_release` maps the release's weights onto the Flax network and writes them with rflav_jax.model_folder;
rflav_jax.build reads the folder back.
"""
import pathlib

from rflav_jax import model_folder
from rflav_jax.convert import flav, hifigan, sdvae
from rflav_jax.convert.checkpoint_io import find_weights, read_checkpoint, read_config_json
from rflav_jax.models.flav import flav_args

KINDS = tuple(model_folder.KINDS)


def convert_release(kind: str, folder, output_dir, *, weights: str | None = None,
                    use_ema: bool = True) -> pathlib.Path:
  """Release folder of `kind` -> a model folder in output_dir; returns output_dir.

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
