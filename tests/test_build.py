"""Configs -> (model, params), codecs and vocoders: fresh weights and model folders, config/checkpoint agreement."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import synthetic_tiny
from rflav_jax import model_folder, standins
from rflav_jax.build import Built, build, build_flav, build_video_codec, build_vocoder, check_config_matches
from rflav_jax.codecs.pixel import PixelCodec
from rflav_jax.codecs.sdvae import SdVaeCodec
from rflav_jax.models.flav import FLAV, dummy_inputs, flav_args, init_params

TINY = dict(latent_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=3,
            predict_frames=4, n_mels=16)


@pytest.mark.slow
def test_dummy_inputs_fit_the_model():
  model = FLAV(**TINY)
  v, a, t, y = dummy_inputs(model, batch=2)
  chex.assert_shape([v, a, t, y], [(2, 4, 8, 8, 3), (2, 4, 10, 16), (2, 4), (2,)])
  chex.assert_type(y, jnp.int32)
  assert dummy_inputs(FLAV(**{**TINY, "num_classes": 0}))[3] is None
  params = init_params(model, 1)
  chex.assert_shape(model.apply({"params": params}, v, a, t, y)[0], v.shape)
  chex.assert_trees_all_equal(params, init_params(model, jax.random.key(1)))  # an int seed and its key: same weights


@pytest.mark.slow
def test_converted_folder_round_trip_and_runtime_overrides(tmp_path):
  config = ml_collections.ConfigDict(TINY)
  model, params = build_flav(config, seed=3)
  folder = model_folder.write(tmp_path / "flav", "flav", params, flav_args(model), {"source": "test", "sha256": None})
  config.update(dtype="bfloat16", remat=True, class_dropout_prob=0.0)  # runtime settings may change
  restored, restored_params = build_flav(config, str(folder))
  assert (restored.dtype, restored.remat, restored.depth) == (jnp.bfloat16, True, 1)
  chex.assert_trees_all_equal(params, restored_params)
  del config.hidden_size  # fields the config leaves out come from the checkpoint
  assert build_flav(config, str(folder))[0].hidden_size == 32


@pytest.mark.slow
def test_build_makes_every_network_of_a_sampling_config_reading_each_folder_once(tmp_path, monkeypatch):
  config = synthetic_tiny.get_config()
  config.model = ml_collections.ConfigDict(TINY)
  model, params = build_flav(config.model, seed=2)
  config.checkpoint = str(model_folder.write(tmp_path / "flav", "flav", params, flav_args(model),
                                             {"source": "test", "sha256": None}))
  small = {**standins.HIFIGAN_V1_256_MELS, "num_mels": 16, "upsample_initial_channel": 16}
  config.vocoder.update(kind="hifigan", checkpoint=str(standins.write_vocoder(tmp_path / "vocoder", small)))
  reads = []
  read = model_folder.read
  monkeypatch.setattr(model_folder, "read", lambda folder, kind=None: reads.append(kind) or read(folder, kind))
  built = build(config)
  assert isinstance(built, Built) and reads == ["flav", "vocoder"]
  assert flav_args(built.model) == flav_args(model) and isinstance(built.codec, PixelCodec)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params, built.params)))
  assert built.vocoder.hifigan[0].config.num_mels == 16 and built.vocoder.audio_scale == config.audio_scale


def test_every_contradiction_is_named():
  stored = flav_args(FLAV(**TINY))
  check_config_matches({**TINY, "dtype": "bfloat16", "attention_impl": "cudnn"}, stored, "the checkpoint in x")
  with pytest.raises(ValueError) as error:
    check_config_matches({**TINY, "hidden_size": 64, "depth": 2, "dtype": "bfloat16"}, stored, "the checkpoint in x")
  message = str(error.value)
  assert "config.model.hidden_size=64 but the checkpoint in x has 32" in message
  assert "config.model.depth=2 but the checkpoint in x has 1" in message and "dtype" not in message
  # Presets expand on both sides; explicit values override the preset.
  check_config_matches({"preset": "FLAV-S/2", "n_mels": 16}, {**flav_args(FLAV(depth=12, hidden_size=384,
                       num_heads=6, patch_size=2)), "n_mels": 16}, "run")
  with pytest.raises(ValueError, match="config.model.patch_size=4 but run has 2"):
    check_config_matches({"preset": "FLAV-S/4"}, {"preset": "FLAV-S/2"}, "run")
  with pytest.raises(ValueError, match=r"config.model sets \['hiden_size'\], which are not FLAV attributes"):
    check_config_matches({"hiden_size": 32}, stored, "run")


def test_bad_folders_are_named_before_loading(tmp_path):
  config = ml_collections.ConfigDict(TINY)
  with pytest.raises(FileNotFoundError, match="does not exist; pass a folder written by launch.convert"):
    build_flav(config, str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match="holds no model.json"):
    build_flav(config, str(tmp_path))
  (tmp_path / "release").mkdir()
  (tmp_path / "release" / "config.json").write_text('{"hidden_size": 32, "depth": 1, "num_heads": 2}')
  with pytest.raises(FileNotFoundError, match="has not been converted: run launch.convert first"):
    build_flav(config, str(tmp_path / "release"))
  model_folder.write(tmp_path / "vocoder", "vocoder", {"w": np.zeros(1)}, {"num_mels": 16},
                     {"source": "test", "sha256": None})
  with pytest.raises(ValueError, match="holds a converted 'vocoder', not a 'flav'"):
    build_flav(config, str(tmp_path / "vocoder"))
  codec = ml_collections.ConfigDict(dict(kind="sdvae", checkpoint=str(tmp_path / "vocoder")))
  with pytest.raises(ValueError, match="not a 'sdvae'"):
    build_video_codec(codec, FLAV(**TINY))
  vocoder = ml_collections.ConfigDict(dict(kind="hifigan", checkpoint="", griffin_lim_iters=8))
  with pytest.raises(ValueError, match="config.vocoder.checkpoint"):
    build_vocoder(vocoder, 1.0, 16)


@pytest.mark.slow
def test_sdvae_codec_from_a_converted_folder(tmp_path):
  folder = standins.write_sdvae(tmp_path / "vae", {"block_out_channels": [8, 8], "norm_num_groups": 4,
                                                    "latent_channels": 3})
  codec = build_video_codec(ml_collections.ConfigDict(dict(kind="sdvae", checkpoint=str(folder))), FLAV(**TINY))
  assert isinstance(codec, SdVaeCodec) and codec.decode(np.zeros((1, 8, 8, 3))).shape == (1, 16, 16, 3)
  with pytest.raises(ValueError, match="makes 3-channel latents; the model takes in_channels=4"):
    build_video_codec(ml_collections.ConfigDict(dict(kind="sdvae", checkpoint=str(folder))),
                      FLAV(**{**TINY, "in_channels": 4}))
