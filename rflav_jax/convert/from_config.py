"""Configs -> ready models: FLAV (fresh or from a converted folder), the video codec and the vocoder.

Sampling and training build their networks here. `config.model` is a mapping of FLAV attributes with an
optional official `preset` name (see configs/*.py); a converted or trained folder holds its own model
arguments, and a config may then only repeat them, or change the runtime-only settings in RUNTIME_ARGS.
"""
from typing import Mapping

from rflav_jax.codecs.pixel import PixelCodec
from rflav_jax.codecs.sdvae import SdVaeCodec
from rflav_jax.codecs.vocoder import MelVocoder
from rflav_jax.convert import export, release
from rflav_jax.models.flav import FLAV, PRESETS, flav_from_config, init_params

# Model settings that do not change the weights: a config may set them freely over a checkpoint's.
RUNTIME_ARGS = ("dtype", "attention_impl", "remat", "remat_policy", "class_dropout_prob")
_FIELDS = {name: field.default for name, field in FLAV.__dataclass_fields__.items() if name not in ("parent", "name")}
_CONVERT_COMMAND = {"flav": "`python -m launch.convert --kind=flav` (or training)",
                    "sdvae": "`python -m launch.convert --kind=sdvae`",
                    "vocoder": "`python -m launch.convert --kind=vocoder`"}


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


def build_flav(model_config, checkpoint: str = "", seed: int = 0) -> tuple[FLAV, dict]:
  """(FLAV, params): freshly initialised from model_config and seed, or loaded from a converted folder.

  With a checkpoint its stored model arguments define the model; model_config must agree with them
  (see `check_config_matches`) and may set RUNTIME_ARGS such as dtype. Every check runs before any weight
  is read.
  """
  if not checkpoint:
    _expanded(model_config, "config.model")
    model = flav_from_config(model_config)
    return model, init_params(model, seed)
  stored = release.converted_config(checkpoint, "flav")
  check_config_matches(model_config, stored.model, f"the checkpoint in {checkpoint}")
  return release.load_flav(checkpoint, **{k: v for k, v in model_config.items() if k in RUNTIME_ARGS})


def build_video_codec(codec_config, model: FLAV):
  """config.codec -> PixelCodec, or SdVaeCodec from a converted SD-VAE folder; checked against the model."""
  if codec_config.kind == "pixel":
    return PixelCodec(model.in_channels)
  if codec_config.kind != "sdvae":
    raise ValueError(f"config.codec.kind={codec_config.kind!r}: expected 'pixel' or 'sdvae'")
  if not codec_config.checkpoint:
    raise ValueError("config.codec.kind='sdvae' needs config.codec.checkpoint: a folder from "
                     f"{_CONVERT_COMMAND['sdvae']}")
  release.converted_config(codec_config.checkpoint, "sdvae")
  codec = SdVaeCodec(*release.load_sdvae(codec_config.checkpoint))
  if codec.model.config.latent_channels != model.in_channels:
    raise ValueError(f"the SD-VAE in {codec_config.checkpoint} makes {codec.model.config.latent_channels}-channel "
                     f"latents; the model takes in_channels={model.in_channels}")
  return codec


def build_vocoder(vocoder_config, audio_scale: float, n_mels: int) -> MelVocoder:
  """config.vocoder -> a MelVocoder: Griffin-Lim, or HiFi-GAN from a converted vocoder folder."""
  if vocoder_config.kind not in ("griffin_lim", "hifigan"):
    raise ValueError(f"config.vocoder.kind={vocoder_config.kind!r}: expected 'griffin_lim' or 'hifigan'")
  hifigan = None
  if vocoder_config.kind == "hifigan":
    if not vocoder_config.checkpoint:
      raise ValueError("config.vocoder.kind='hifigan' needs config.vocoder.checkpoint: a folder from "
                       f"{_CONVERT_COMMAND['vocoder']}")
    release.converted_config(vocoder_config.checkpoint, "vocoder")
    hifigan = release.load_vocoder(vocoder_config.checkpoint)
  return MelVocoder(n_mels, audio_scale, hifigan, vocoder_config.griffin_lim_iters)
