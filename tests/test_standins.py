"""Random-weight stand-ins of the releases: the releases' architectures (their published sizes), written as
model folders that load through the same functions as converted releases."""
import chex
import jax
import numpy as np
import pytest

from configs import flav_b1_aist
from rflav_jax import build, model_folder, standins
from rflav_jax.codecs.audio import MelParams
from rflav_jax.codecs.hifigan import HifiGanConfig, HifiGanGenerator
from rflav_jax.codecs.sdvae import AutoencoderKL, VaeConfig
from rflav_jax.models.flav import dummy_inputs, flav_from_config, init_params

count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_architectures_have_the_released_sizes():
  assert count(build.abstract_params(AutoencoderKL(VaeConfig.from_diffusers(standins.SD_VAE_FT_EMA)))) == 83_653_863
  b1 = flav_from_config(flav_b1_aist.get_config().model)
  assert round(count(jax.eval_shape(b1.init, jax.random.key(0), *dummy_inputs(b1))["params"]) / 1e6) == 324
  vocoder = HifiGanConfig.from_dict(standins.HIFIGAN_V1_256_MELS)
  assert np.prod(vocoder.upsample_rates) == MelParams().hop_length and vocoder.num_mels == MelParams().n_mels
  assert model_folder.release_kind(standins.SD_VAE_FT_EMA) == "sdvae"
  assert model_folder.release_kind(standins.HIFIGAN_V1_256_MELS) == "vocoder"


@pytest.mark.slow
def test_folders_load_as_converted_releases(tmp_path):
  model_config = dict(latent_size=8, patch_size=4, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=3,
                      predict_frames=4, n_mels=16)
  model, params = build.load_flav(standins.write_flav(tmp_path / "flav", model_config, seed=5))
  assert model.hidden_size == 32
  chex.assert_trees_all_equal(params, init_params(model, 5))

  vae, vae_params = build.load_sdvae(standins.write_sdvae(
      tmp_path / "sdvae", {"block_out_channels": [8, 8], "norm_num_groups": 4, "latent_channels": 4}))
  latents = np.random.default_rng(0).normal(size=(1, 8, 8, 4)).astype(np.float32)
  assert vae.apply({"params": vae_params}, latents, method=vae.decode).shape == (1, 16, 16, 3)

  small = {**standins.HIFIGAN_V1_256_MELS, "num_mels": 16, "upsample_initial_channel": 16}
  generator, generator_params = build.load_vocoder(standins.write_vocoder(tmp_path / "vocoder", small))
  assert isinstance(generator, HifiGanGenerator) and count(generator_params) == count(
      build.abstract_params(HifiGanGenerator(HifiGanConfig.from_dict(small))))
  mel = np.random.default_rng(1).normal(size=(1, 7, 16)).astype(np.float32)
  assert generator.apply({"params": generator_params}, mel).shape == (1, 7 * 160)
