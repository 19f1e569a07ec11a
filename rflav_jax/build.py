"""Configs and model folders -> ready networks: FLAV, the video codec and the vocoder.

`build(config)` makes all of a sampling config's networks in one pass, reading each model folder once; training
and evaluation use the parts. `config.model` is a mapping of FLAV attributes with an optional official `preset`
name (see configs/*.py); a model folder (rflav_jax.model_folder) holds its own model arguments, and a config may
then only repeat them, or change the runtime-only settings in RUNTIME_ARGS. `load_flav`, `load_sdvae` and
`load_vocoder` read one folder as (model, params).
"""
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp

from rflav_jax import model_folder
from rflav_jax.codecs.hifigan import HifiGanConfig, HifiGanGenerator
from rflav_jax.codecs.pixel import PixelCodec
from rflav_jax.codecs.sdvae import AutoencoderKL, SdVaeCodec, VaeConfig
from rflav_jax.codecs.vocoder import MelVocoder
from rflav_jax.models.flav import FLAV, KERNEL_ARGS, PRESETS, dummy_inputs, flav_from_config, init_params

# Settings that do not change the weights (compute dtype, rematerialisation, label dropout, the kernels that run): a
# config may set them freely over a checkpoint's.
RUNTIME_ARGS = ("dtype", "remat", "remat_policy", "class_dropout_prob", "label_dropout", *KERNEL_ARGS)
_FIELDS = {name: field.default for name, field in FLAV.__dataclass_fields__.items() if name not in ("parent", "name")}
_CONVERT_COMMAND = {"sdvae": "`python -m launch.convert --kind=sdvae`",
                    "vocoder": "`python -m launch.convert --kind=vocoder`"}


class Built(NamedTuple):
  """A sampling config's networks: FLAV with its params, the video codec (latents <-> frames) and the vocoder."""
  model: FLAV
  params: dict
  codec: PixelCodec | SdVaeCodec
  vocoder: MelVocoder


def build(config) -> Built:
  """config.model / checkpoint / seed, config.codec, config.vocoder and config.audio_scale -> their networks."""
  model, params = build_flav(config.model, config.checkpoint, config.seed)
  return Built(model, params, build_video_codec(config.codec, model),
               build_vocoder(config.vocoder, config.audio_scale, model.n_mels))


def build_flav(model_config, checkpoint: str = "", seed: int = 0) -> tuple[FLAV, dict]:
  """(FLAV, params): freshly initialised from model_config and seed, or loaded from the model folder `checkpoint`.

  With a checkpoint its stored model arguments define the model; model_config must agree with them
  (see `check_config_matches`) and may set RUNTIME_ARGS such as dtype. Every check runs before any weight
  is read.
  """
  if not checkpoint:
    _expanded(model_config, "config.model")
    model = flav_from_config(model_config)
    return model, init_params(model, seed)
  folder = model_folder.read(checkpoint, "flav")
  check_config_matches(model_config, folder.model, f"the checkpoint in {checkpoint}")
  return _flav(folder, {k: v for k, v in model_config.items() if k in RUNTIME_ARGS})


def build_video_codec(codec_config, model: FLAV) -> PixelCodec | SdVaeCodec:
  """config.codec -> PixelCodec, or SdVaeCodec from an SD-VAE model folder; checked against the model."""
  if codec_config.kind == "pixel":
    return PixelCodec(model.in_channels)
  if codec_config.kind != "sdvae":
    raise ValueError(f"config.codec.kind={codec_config.kind!r}: expected 'pixel' or 'sdvae'")
  if not codec_config.checkpoint:
    raise ValueError("config.codec.kind='sdvae' needs config.codec.checkpoint: a folder from "
                     f"{_CONVERT_COMMAND['sdvae']}")
  codec = SdVaeCodec(*_sdvae(model_folder.read(codec_config.checkpoint, "sdvae")))
  if codec.model.config.latent_channels != model.in_channels:
    raise ValueError(f"the SD-VAE in {codec_config.checkpoint} makes {codec.model.config.latent_channels}-channel "
                     f"latents; the model takes in_channels={model.in_channels}")
  return codec


def build_vocoder(vocoder_config, audio_scale: float, n_mels: int) -> MelVocoder:
  """config.vocoder -> a MelVocoder: Griffin-Lim, or HiFi-GAN from a vocoder model folder."""
  if vocoder_config.kind not in ("griffin_lim", "hifigan"):
    raise ValueError(f"config.vocoder.kind={vocoder_config.kind!r}: expected 'griffin_lim' or 'hifigan'")
  hifigan = None
  if vocoder_config.kind == "hifigan":
    if not vocoder_config.checkpoint:
      raise ValueError("config.vocoder.kind='hifigan' needs config.vocoder.checkpoint: a folder from "
                       f"{_CONVERT_COMMAND['vocoder']}")
    hifigan = _vocoder(model_folder.read(vocoder_config.checkpoint, "vocoder"))
  return MelVocoder(n_mels, audio_scale, hifigan, vocoder_config.griffin_lim_iters)


def check_config_matches(model_config, model_args: Mapping, source: str) -> None:
  """Raises ValueError naming every config.model value that contradicts model_args, the model of `source`.

  Fields the config leaves out are taken from `source`; RUNTIME_ARGS may differ. `source` reads in the
  message as e.g. "config.model.hidden_size=64 but the checkpoint in out/ has 32".
  """
  wanted, have = _expanded(model_config, "config.model"), _expanded(model_args, source)
  have = {**_FIELDS, **have}
  wrong = [f"config.model.{k}={v!r} but {source} has {have[k]!r}" for k, v in sorted(wanted.items())
           if k not in RUNTIME_ARGS and have[k] != v]
  if wrong:
    raise ValueError("the config contradicts " + source + ":\n  " + "\n  ".join(wrong) +
                     f"\nFix the config or drop those fields ({source} defines the model).")


def load_flav(folder, **overrides) -> tuple[FLAV, dict]:
  """(FLAV, params) from a model folder; overrides change non-weight attributes, e.g. dtype="bfloat16"."""
  return _flav(model_folder.read(folder, "flav"), overrides)


def load_sdvae(folder, dtype="float32") -> tuple[AutoencoderKL, dict]:
  """(AutoencoderKL, params) from a model folder."""
  return _sdvae(model_folder.read(folder, "sdvae"), dtype)


def load_vocoder(folder, dtype="float32") -> tuple[HifiGanGenerator, dict]:
  """(HifiGanGenerator, params) from a model folder."""
  return _vocoder(model_folder.read(folder, "vocoder"), dtype)


def abstract_params(model: FLAV | AutoencoderKL | HifiGanGenerator) -> dict:
  """The params tree `model` takes, as ShapeDtypeStructs (nothing is computed)."""
  if isinstance(model, FLAV):
    inputs = dummy_inputs(model)
  elif isinstance(model, AutoencoderKL):
    size = model.config.downsample_factor
    inputs = (jnp.zeros((1, size, size, model.config.in_channels)),)
  else:
    inputs = (jnp.zeros((1, 8, model.config.num_mels)),)
  return jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]


def _flav(folder: model_folder.ModelFolder, overrides: Mapping) -> tuple[FLAV, dict]:
  model = flav_from_config({**folder.model, **overrides})
  return model, model_folder.restore_params(folder, abstract_params(model))


def _sdvae(folder: model_folder.ModelFolder, dtype="float32") -> tuple[AutoencoderKL, dict]:
  model = AutoencoderKL(VaeConfig.from_diffusers(folder.model), dtype)
  return model, model_folder.restore_params(folder, abstract_params(model))


def _vocoder(folder: model_folder.ModelFolder, dtype="float32") -> tuple[HifiGanGenerator, dict]:
  model = HifiGanGenerator(HifiGanConfig.from_dict(folder.model), dtype)
  return model, model_folder.restore_params(folder, abstract_params(model))


def _expanded(model_args: Mapping, what: str) -> dict:
  """model_args with its `preset` expanded (explicit values win); ValueError on names FLAV does not have."""
  args = dict(model_args)
  preset = args.pop("preset", None)
  if preset is not None and preset not in PRESETS:
    raise ValueError(f"{what}.preset={preset!r} is not an official preset; known presets: {', '.join(PRESETS)}")
  unknown = sorted(set(args) - set(_FIELDS))
  if unknown:
    raise ValueError(f"{what} sets {unknown}, which are not FLAV attributes; valid names: preset, {', '.join(_FIELDS)}")
  return {**PRESETS.get(preset, {}), **args}
