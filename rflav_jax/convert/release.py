"""Released checkpoint folders (weights + config.json) <-> converted folders (Orbax params + config.py).

kinds: "flav" (the transformer), "sdvae" (a diffusers AutoencoderKL folder), "vocoder" (HiFi-GAN generator).
`convert_release` writes a converted folder (see export.py); `load_flav` / `load_sdvae` / `load_vocoder`
read one back as (model, params).
"""
import pathlib

from rflav_jax.codecs.hifigan import HifiGanConfig, HifiGanGenerator
from rflav_jax.codecs.sdvae import AutoencoderKL, VaeConfig
from rflav_jax.convert import export, flav, hifigan, sdvae
from rflav_jax.convert.checkpoint_io import read_release
from rflav_jax.models.flav import flav_args, flav_from_config

KINDS = ("flav", "sdvae", "vocoder")


def convert_release(kind: str, folder, output_dir, *, weights: str | None = None,
                    use_ema: bool = True) -> pathlib.Path:
  """Release folder of `kind` -> Orbax params + config.py in output_dir; returns output_dir."""
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
  checkpoint, config, path = read_release(folder, weights)
  if kind == "flav":
    model, params = flav.flav_from_official(flav.select_state_dict(checkpoint, use_ema), **config)
    config = flav_args(model)
  elif kind == "sdvae":
    _, params = sdvae.sdvae_from_diffusers(checkpoint, config)
  else:
    _, params = hifigan.hifigan_from_official(checkpoint, config)
  return export.save_converted(output_dir, kind, params, config, str(path))


def _converted(folder, kind: str):
  config = export.load_config(pathlib.Path(folder) / "config.py")
  if config.kind != kind:
    raise ValueError(f"{folder} holds a converted {config.kind!r}, not a {kind!r}; check which folder is passed where")
  return config


def load_flav(folder, **overrides):
  """(FLAV, params) from a converted folder; overrides change non-weight attributes, e.g. dtype="bfloat16"."""
  config = _converted(folder, "flav")
  model = flav_from_config({**config.model, **overrides})
  return model, export.restore_params(config.checkpoint, flav.abstract_params(model))


def load_sdvae(folder, dtype="float32"):
  """(AutoencoderKL, params) from a converted folder."""
  config = _converted(folder, "sdvae")
  model = AutoencoderKL(VaeConfig.from_diffusers(config.model), dtype)
  return model, export.restore_params(config.checkpoint, sdvae.abstract_params(model))


def load_vocoder(folder, dtype="float32"):
  """(HifiGanGenerator, params) from a converted folder."""
  config = _converted(folder, "vocoder")
  model = HifiGanGenerator(HifiGanConfig.from_dict(config.model), dtype)
  return model, export.restore_params(config.checkpoint, hifigan.abstract_params(model))
