"""Released checkpoint folders (weights + config.json) <-> converted folders (Orbax params + config.py).

kinds: "flav" (the transformer), "sdvae" (a diffusers AutoencoderKL folder), "vocoder" (HiFi-GAN generator).
`convert_release` writes a converted folder (see export.py); `load_flav` / `load_sdvae` / `load_vocoder`
read one back as (model, params).
"""
import pathlib

from rflav_jax.codecs.hifigan import HifiGanConfig, HifiGanGenerator
from rflav_jax.codecs.sdvae import AutoencoderKL, VaeConfig
from rflav_jax.convert import export, flav, hifigan, sdvae
from rflav_jax.convert.checkpoint_io import find_weights, read_checkpoint, read_config_json
from rflav_jax.models.flav import flav_args, flav_from_config

KINDS = ("flav", "sdvae", "vocoder")
_NAMES = {"flav": "FLAV", "sdvae": "SD-VAE (diffusers AutoencoderKL)", "vocoder": "HiFi-GAN vocoder"}
# config.json keys found in one kind's releases only.
_MARKERS = {"flav": ("hidden_size", "depth", "predict_frames"), "sdvae": ("block_out_channels", "latent_channels"),
            "vocoder": ("upsample_rates", "resblock_kernel_sizes")}


def release_kind(config: dict) -> str | None:
  """The kind whose marker keys a release's config.json holds; None if no kind's or several kinds'."""
  kinds = [kind for kind, keys in _MARKERS.items() if any(key in config for key in keys)]
  return kinds[0] if len(kinds) == 1 else None


def convert_release(kind: str, folder, output_dir, *, weights: str | None = None,
                    use_ema: bool = True) -> pathlib.Path:
  """Release folder of `kind` -> Orbax params + config.py in output_dir; returns output_dir.

  Refuses, naming the likely mix-up, a folder already converted or one whose config.json is of another kind.
  """
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
  folder = pathlib.Path(folder)
  if (folder / "config.py").is_file() and (folder / export.PARAMS).is_dir():
    raise ValueError(f"{folder} is already a converted folder (config.py + {export.PARAMS}/): pass it to the "
                     f"launchers as it is, e.g. --config.checkpoint={folder}")
  config = read_config_json(folder)
  looks = release_kind(config)
  if looks not in (None, kind):
    keys = sorted(key for key in _MARKERS[looks] if key in config)
    raise ValueError(f"{folder}: this looks like a {_NAMES[looks]} release folder (config.json has {keys}), not a "
                     f"{_NAMES[kind]} one: use --kind={looks}")
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
  return export.save_converted(output_dir, kind, params, config, str(path))


def converted_config(folder, kind: str):
  """The converted folder's config (checkpoint resolved), refusing release folders and other kinds."""
  folder = pathlib.Path(folder)
  if (folder / "config.json").is_file() and not (folder / "config.py").exists():
    looks = release_kind(read_config_json(folder)) or kind
    raise FileNotFoundError(
        f"{folder} is a {_NAMES[looks]} release folder (weights + config.json) that has not been converted: run "
        f"launch.convert first (`python -m launch.convert --kind={looks} --checkpoint_dir={folder} "
        "--output_dir=<new folder>`) and pass <new folder>")
  config = export.read_converted(folder)
  if config.kind != kind:
    raise ValueError(f"{folder} holds a converted {config.kind!r}, not a {kind!r}; check which folder is passed where")
  return config


def load_flav(folder, **overrides):
  """(FLAV, params) from a converted folder; overrides change non-weight attributes, e.g. dtype="bfloat16"."""
  config = converted_config(folder, "flav")
  model = flav_from_config({**config.model, **overrides})
  return model, export.restore_params(config.checkpoint, flav.abstract_params(model))


def load_sdvae(folder, dtype="float32"):
  """(AutoencoderKL, params) from a converted folder."""
  config = converted_config(folder, "sdvae")
  model = AutoencoderKL(VaeConfig.from_diffusers(config.model), dtype)
  return model, export.restore_params(config.checkpoint, sdvae.abstract_params(model))


def load_vocoder(folder, dtype="float32"):
  """(HifiGanGenerator, params) from a converted folder."""
  config = converted_config(folder, "vocoder")
  model = HifiGanGenerator(HifiGanConfig.from_dict(config.model), dtype)
  return model, export.restore_params(config.checkpoint, hifigan.abstract_params(model))
