"""Model folders of random weights with a release's architecture, where the real weights are not at hand.

A stand-in runs exactly as long as the release it stands for (same shapes, same programs), but what it makes is
noise: it is for measuring speed (`launch.make_standins`, docs/PERFORMANCE.md) and for tests of the wiring.
Each folder is what `launch.convert` writes (model.json + params/) and loads through the same functions.
"""
import os

import jax
import jax.numpy as jnp
from etils import epath

from rflav_jax import model_folder
from rflav_jax.codecs.hifigan import HifiGanConfig, HifiGanGenerator
from rflav_jax.codecs.sdvae import AutoencoderKL, VaeConfig
from rflav_jax.models.flav import flav_args, flav_from_config, init_params

# stabilityai/sd-vae-ft-ema's config.json (architecture keys): 83,653,863 parameters.
SD_VAE_FT_EMA = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 256, "up_block_types": ["UpDecoderBlock2D"] * 4}
# A HiFi-GAN of the V1 size for R-FLAV's mel (256 bins, 160 samples per mel column at 16 kHz). The released
# vocoder's exact layer sizes are not known here; this generator has 14.3M parameters.
HIFIGAN_V1_256_MELS = {
    "num_mels": 256, "upsample_rates": [8, 5, 4], "upsample_kernel_sizes": [16, 10, 8],
    "upsample_initial_channel": 512, "resblock": "1", "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]]}

_PROVENANCE = {"source": "random weights (a stand-in: rflav_jax/standins.py)", "sha256": None}


def write_flav(folder: str | os.PathLike, model_config, seed: int = 0, storage_dtype: str = "float32") -> epath.Path:
  """A FLAV of `model_config` (a config.model mapping, e.g. FLAV-B/1's) with the weights of its initialisers."""
  model = flav_from_config(model_config)
  return model_folder.write(folder, "flav", init_params(model, seed), flav_args(model), _PROVENANCE, storage_dtype)


def write_sdvae(folder: str | os.PathLike, config: dict = SD_VAE_FT_EMA, seed: int = 0) -> epath.Path:
  """An SD-VAE of the diffusers AutoencoderKL `config` (default: sd-vae-ft-ema's)."""
  model = AutoencoderKL(VaeConfig.from_diffusers(config))
  size = model.config.downsample_factor
  params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, size, size, model.config.in_channels)))["params"]
  return model_folder.write(folder, "sdvae", params, dict(config), _PROVENANCE)


def write_vocoder(folder: str | os.PathLike, config: dict = HIFIGAN_V1_256_MELS, seed: int = 0) -> epath.Path:
  """A HiFi-GAN generator of the vocoder `config` (default: V1 size, 256 mels, x160)."""
  model = HifiGanGenerator(HifiGanConfig.from_dict(config))
  params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 8, model.config.num_mels)))["params"]
  return model_folder.write(folder, "vocoder", params, dict(config), _PROVENANCE)
