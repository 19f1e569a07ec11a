"""SD-VAE: parity with diffusers, weight names and files, config checks, the frame codec, a real-size model."""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from helpers import load_fixture, rel_l2
from rflav_jax.codecs.pixel import VideoCodec
from rflav_jax.codecs.sdvae import (LATENT_SCALE, AutoencoderKL, SdVaeCodec, VaeConfig, from_model_latents,
                                    map_in_chunks, sample_latent, to_model_latents)
from rflav_jax.convert.param_mapping import ConversionError
from rflav_jax.convert.sdvae import abstract_params, sdvae_from_diffusers, sdvae_from_folder

OLD_ATTENTION_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def nchw_to_nhwc(x):
  return np.transpose(x, (0, 2, 3, 1))


@pytest.fixture(scope="module")
def fixture():
  d = load_fixture("sdvae_small.npz")
  state_dict = {k[len("vae/"):]: v for k, v in d.items() if k.startswith("vae/")}
  return d, state_dict, json.loads(str(d["config_json"]))


@pytest.fixture(scope="module")
def small_vae(fixture):
  _, state_dict, config = fixture
  return sdvae_from_diffusers(state_dict, config)


@functools.partial(jax.jit, static_argnums=0)
def encode_and_decode(model, params, image, latent):
  """(mean, logvar) of image and decode(latent); compiled once per model configuration."""
  mean, logvar = model.apply({"params": params}, image, method=model.encode)
  return mean, logvar, model.apply({"params": params}, latent, method=model.decode)


def assert_matches_fixture(model, params, d):
  mean, logvar, decoded = encode_and_decode(model, params, nchw_to_nhwc(d["image"]),
                                            nchw_to_nhwc(d["latent_mean"]))
  errors = (rel_l2(mean, nchw_to_nhwc(d["latent_mean"])), rel_l2(logvar, nchw_to_nhwc(d["latent_logvar"])),
            rel_l2(decoded, nchw_to_nhwc(d["decoded"])))
  assert max(errors) < 1e-5, errors


def test_matches_diffusers(fixture, small_vae):
  assert_matches_fixture(*small_vae, fixture[0])


def test_old_attention_names_load_the_same_weights(fixture):
  d, state_dict, config = fixture
  renamed = {}
  for name, value in state_dict.items():
    for new, old in OLD_ATTENTION_NAMES.items():
      name = name.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
    renamed[name] = value
  assert sum("proj_attn" in k for k in renamed) == 4  # weight + bias, encoder + decoder
  assert_matches_fixture(*sdvae_from_diffusers(renamed, config), d)


def test_missing_and_unexpected_names_are_listed(fixture):
  _, state_dict, config = fixture
  broken = dict(state_dict)
  del broken["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"]
  del broken["encoder.mid_block.attentions.0.to_k.bias"]
  broken["encoder.mid_block.attentions.1.to_q.weight"] = np.zeros((64, 64), np.float32)
  broken["quant_conv.bias"] = np.zeros((6,), np.float32)
  with pytest.raises(ConversionError) as error:
    sdvae_from_diffusers(broken, config)
  message = str(error.value)
  assert "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in message
  assert "encoder.mid_block.attentions.0.to_k.bias or encoder.mid_block.attentions.0.key.bias" in message
  assert "encoder.mid_block.attentions.1.to_q.weight" in message
  assert "quant_conv.bias: checkpoint (6,), model expects (8,)" in message


def test_config_keys():
  accepted = VaeConfig.from_diffusers({
      "_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", "scaling_factor": 0.18215,
      "force_upcast": True, "sample_size": 256, "act_fn": "silu", "block_out_channels": [32, 64],
      "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
      "norm_num_groups": 16})
  assert accepted.block_out_channels == (32, 64) and accepted.downsample_factor == 2
  assert VaeConfig.from_diffusers(dataclasses.asdict(accepted)) == accepted  # how converted folders store it
  with pytest.raises(ValueError, match="down_block_types"):
    VaeConfig.from_diffusers({"block_out_channels": [32, 64], "down_block_types": ["DownBlock2D"] * 2})
  with pytest.raises(ValueError, match="up_block_types"):
    VaeConfig.from_diffusers({"block_out_channels": [32, 64], "up_block_types": ["UpDecoderBlock2D"]})
  with pytest.raises(ValueError, match="act_fn"):
    VaeConfig.from_diffusers({"act_fn": "gelu"})
  with pytest.raises(ValueError, match="unknown keys.*'temporal_layers'"):
    VaeConfig.from_diffusers({"temporal_layers": 2})
  with pytest.raises(ValueError, match="not divisible by norm_num_groups"):
    VaeConfig.from_diffusers({"block_out_channels": [48], "norm_num_groups": 32})


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_reads_diffusers_folder(tmp_path, fixture, suffix):
  torch = pytest.importorskip("torch")
  d, state_dict, config = fixture
  path = tmp_path / f"diffusion_pytorch_model{suffix}"
  if suffix == ".bin":
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
  else:
    save_file(state_dict, str(path))
  (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "AutoencoderKL",
                                                     "scaling_factor": 0.18215}))
  assert_matches_fixture(*sdvae_from_folder(tmp_path), d)


def test_bad_input_shapes_are_rejected(small_vae):
  model, params = small_vae
  with pytest.raises(ValueError, match="channels-last"):
    model.apply({"params": params}, jnp.zeros((1, 3, 32, 32)), method=model.encode)
  with pytest.raises(ValueError, match="multiples of 2"):
    model.apply({"params": params}, jnp.zeros((1, 31, 32, 3)), method=model.encode)


def test_latent_scaling_and_sampling():
  z = np.linspace(-3, 3, 12, dtype=np.float32)
  np.testing.assert_allclose(to_model_latents(z), z * 0.18215, rtol=1e-7)
  np.testing.assert_allclose(from_model_latents(to_model_latents(z)), z, rtol=1e-6)
  mean = jnp.full((64, 64, 4), 2.0)
  logvar = jnp.full((64, 64, 4), np.log(0.25), jnp.float32)
  draw = sample_latent(mean, logvar, jax.random.key(0))
  standardised = (draw - 2.0) / 0.5
  assert abs(float(standardised.mean())) < 0.05 and abs(float(standardised.std()) - 1) < 0.05
  assert not np.allclose(draw, sample_latent(mean, logvar, jax.random.key(1)))


@pytest.mark.parametrize("rows, chunk_size, calls", [
    (20, 16, [10, 10]), (80, 16, [16] * 5), (17, 16, [9, 9]), (1, 16, [1]), (5, 1, [1] * 5)])
def test_map_in_chunks_uses_the_fewest_equal_chunks(rows, chunk_size, calls):
  seen = []
  out = map_in_chunks(lambda z: (seen.append(z.shape[0]), z * 2)[1], np.arange(rows, dtype=np.float32), chunk_size)
  assert seen == calls  # one compiled shape per call; at most len(calls) - 1 padded rows
  np.testing.assert_array_equal(out, np.arange(rows) * 2)


def test_codec_chunks_match_one_batch(fixture, small_vae):
  d, _, _ = fixture
  model, params = small_vae
  codec = SdVaeCodec(model, params, chunk_size=2)
  assert isinstance(codec, VideoCodec)
  assert codec.latent_shape((32, 48)) == (16, 24, 4)
  images = nchw_to_nhwc(d["image"])
  video = np.stack([images, images[::-1], images], axis=1)  # (B=2, T=3, 32, 32, 3): 6 frames in 3 chunks
  latents = codec.encode(video)
  assert latents.shape == (2, 3, 16, 16, 4)
  expected_mean = nchw_to_nhwc(d["latent_mean"]) * LATENT_SCALE
  assert rel_l2(latents[:, 0], expected_mean) < 1e-5 and rel_l2(latents[:, 1], expected_mean[::-1]) < 1e-5
  frames = codec.decode(latents)
  assert frames.shape == video.shape and frames.dtype == np.float32
  assert rel_l2(frames[:, 2], nchw_to_nhwc(d["decoded"])) < 1e-5
  uint8_frames = np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)
  np.testing.assert_allclose(codec.encode(uint8_frames), codec.encode(uint8_frames / 127.5 - 1), atol=1e-6)
  sampled = codec.encode(images, key=jax.random.key(0))
  assert sampled.shape == latents[:, 0].shape and not np.allclose(sampled, latents[:, 0])


def random_params(shapes, seed=0):
  """Random weights for a parameter tree: kernels ~ N(0, 1 / fan_in), norm scales 1, biases 0."""
  rng = np.random.default_rng(seed)

  def init(path, s):
    name = path[-1].key
    if name == "kernel":
      return rng.standard_normal(s.shape, np.float32) / np.sqrt(np.prod(s.shape[:-1]))
    return np.ones(s.shape, np.float32) if name == "scale" else np.zeros(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(init, shapes)


@pytest.mark.slow
def test_real_size_round_trip():
  config = VaeConfig.from_diffusers({
      "_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
      "norm_num_groups": 32, "down_block_types": ["DownEncoderBlock2D"] * 4,
      "up_block_types": ["UpDecoderBlock2D"] * 4, "latent_channels": 4, "sample_size": 256})
  model = AutoencoderKL(config)
  shapes = abstract_params(model)
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == 83_653_863  # SD's AutoencoderKL
  codec = SdVaeCodec(model, random_params(shapes), chunk_size=1)
  frame = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
  latents = codec.encode(frame)
  assert latents.shape == (1, 32, 32, 4) == (1, *codec.latent_shape((256, 256)))
  decoded = codec.decode(latents)
  assert decoded.shape == (1, 256, 256, 3)
  assert np.isfinite(latents).all() and np.isfinite(decoded).all() and decoded.std() > 0
