"""Official PyTorch checkpoints -> Flax params (FLAV, the HiFi-GAN vocoder, the SD-VAE), and model folders read back
as (model, params) (defined in rflav_jax.build)."""
from rflav_jax.build import load_flav, load_sdvae, load_vocoder
from rflav_jax.convert.flav import flav_from_official
from rflav_jax.convert.hifigan import hifigan_from_official
from rflav_jax.convert.release import convert_release
from rflav_jax.convert.sdvae import sdvae_from_diffusers

__all__ = ["convert_release", "flav_from_official", "hifigan_from_official", "load_flav", "load_sdvae", "load_vocoder",
           "sdvae_from_diffusers"]
