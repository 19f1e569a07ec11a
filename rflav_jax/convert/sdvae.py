"""diffusers AutoencoderKL weights (`diffusion_pytorch_model.safetensors` / `.bin`) -> Flax SD-VAE params.

Flax paths mirror the diffusers names with "_<index>" for ".<index>":
("encoder", "down_blocks_0", "resnets_1", "conv1", "kernel") <- "encoder.down_blocks.0.resnets.1.conv1.weight".
The mid-block attention is found under its current names (to_q, to_k, to_v, to_out.0) or the older ones
(query, key, value, proj_attn) of releases such as sd-vae-ft-ema.
"""
import pathlib
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from rflav_jax.build import abstract_params
from rflav_jax.codecs.sdvae import AutoencoderKL, VaeConfig
from rflav_jax.convert import param_mapping
from rflav_jax.convert.checkpoint_io import read_release
from rflav_jax.convert.param_mapping import CONV, IDENTITY, LINEAR, Source

# Current diffusers attention names -> the names of older releases.
_OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def diffusers_names(path: tuple[str, ...]) -> list[str]:
  """The diffusers name(s) of a Flax SD-VAE parameter path, current name first."""
  *modules, leaf = path
  prefix = ".".join(re.sub(r"_(\d+)$", r".\1", m) for m in modules)
  name = f"{prefix}.{'bias' if leaf == 'bias' else 'weight'}"
  for new, old in _OLD_ATTENTION_NAMES.items():
    if f".{new}." in name:
      return [name, name.replace(f".{new}.", f".{old}.")]
  return [name]


def sdvae_from_diffusers(state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any],
                         dtype=jnp.float32) -> tuple[AutoencoderKL, dict]:
  """Builds the Flax AutoencoderKL from a diffusers config.json dict and loads its state dict.

  Returns (model, params): `model.apply({"params": params}, image, method=model.encode)` -> (mean, logvar),
  `method=model.decode` -> image. Raises ConversionError listing every missing, unexpected or mis-shaped
  tensor, and ValueError for configs this port does not implement.
  """
  model = AutoencoderKL(VaeConfig.from_diffusers(config), dtype)
  shapes = param_mapping.param_shapes(abstract_params(model))
  sources = {}
  for path, shape in shapes.items():
    layout = (CONV if len(shape) == 4 else LINEAR) if path[-1] == "kernel" else IDENTITY
    sources[path] = Source(diffusers_names(path), layout)
  hint = ("Check the config against the checkpoint: block_out_channels, layers_per_block, latent_channels, "
          "in/out_channels, use_quant_conv / use_post_quant_conv and mid_block_add_attention.")
  params = param_mapping.fill_params(state_dict, sources, shapes, "SD-VAE state dict", hint)
  return model, params


def sdvae_from_folder(folder: str | pathlib.Path, weights: str | None = None,
                      dtype=jnp.float32) -> tuple[AutoencoderKL, dict]:
  """(model, params) from a diffusers VAE folder: config.json + diffusion_pytorch_model.{safetensors,bin}.

  `weights` names the weight file when the folder holds several (e.g. fp16 and fp32 variants).
  """
  state_dict, config, _ = read_release(folder, weights, "diffusers VAE folder: config.json + "
                                       "diffusion_pytorch_model.safetensors (the 'vae' subfolder of a pipeline)")
  return sdvae_from_diffusers(state_dict, config, dtype)
