"""HiFi-GAN: parity with the official generator, weight-norm forms, files, config checks, streaming."""
import dataclasses
import functools
import json

import jax
import numpy as np
import pytest

from helpers import load_fixture, rel_l2
from rflav_jax.codecs.hifigan import (HifiGanConfig, HifiGanGenerator, receptive_radius_frames,
                                      vocode_chunked, vocode_stream)
from rflav_jax.convert.hifigan import hifigan_from_folder, hifigan_from_official
from rflav_jax.convert.param_mapping import ConversionError


@pytest.fixture(scope="module")
def fixture():
  d = load_fixture("hifigan_small.npz")
  generator = {k[len("generator/"):]: v for k, v in d.items() if k.startswith("generator/")}
  return d, generator, json.loads(str(d["config_json"]))


@functools.partial(jax.jit, static_argnums=0)
def vocode(model, params, log_mel):
  return model.apply({"params": params}, log_mel)


def assert_matches_fixture(model, params, d):
  wav = vocode(model, params, d["mel"].transpose(0, 2, 1))  # official (B, N, frames) -> (B, frames, N)
  assert wav.shape == (2, 200)
  assert rel_l2(wav, d["wav"][:, 0]) < 1e-5


def test_matches_official_generator(fixture):
  d, generator, config = fixture
  assert config["upsample_kernel_sizes"][1] - config["upsample_rates"][1] == 5  # the odd padding case
  assert_matches_fixture(*hifigan_from_official({"generator": generator}, config), d)


def test_new_weight_norm_names_and_bare_state_dict(fixture):
  d, generator, config = fixture
  renamed = {k.replace(".weight_g", ".parametrizations.weight.original0")
             .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in generator.items()}
  assert_matches_fixture(*hifigan_from_official(renamed, config), d)


def test_missing_and_unexpected_names_are_listed(fixture):
  _, generator, config = fixture
  broken = dict(generator)
  del broken["resblocks.2.convs2.1.weight_g"]
  del broken["conv_post.bias"]
  broken["ups.2.bias"] = np.zeros((4,), np.float32)
  with pytest.raises(ConversionError) as error:
    hifigan_from_official({"generator": broken}, config)
  listed = {line.strip() for line in str(error.value).splitlines()}
  assert {"resblocks.2.convs2.1.weight", "conv_post.bias"} <= listed  # missing
  assert {"resblocks.2.convs2.1.weight_v", "ups.2.bias"} <= listed  # unexpected (a lone half of a pair)


def test_config_keys(fixture):
  _, _, config = fixture
  training = {"segment_size": 8000, "learning_rate": 2e-4, "batch_size": 16, "sampling_rate": 16000,
              "hop_size": 160, "dist_config": {"dist_backend": "nccl"}}
  parsed = HifiGanConfig.from_dict({**config, **training})
  assert parsed.hop_length == 10
  assert HifiGanConfig.from_dict(dataclasses.asdict(parsed)) == parsed  # how converted folders store it
  with pytest.raises(ValueError, match="'activation'"):
    HifiGanConfig.from_dict({**config, "activation": "snakebeta"})
  with pytest.raises(ValueError, match="resblock"):
    HifiGanConfig.from_dict({**config, "resblock": "3"})
  with pytest.raises(ValueError, match="lacks the generator keys \\['num_mels'\\]"):
    HifiGanConfig.from_dict({k: v for k, v in config.items() if k != "num_mels"})


def test_reads_released_vocoder_pt(tmp_path, fixture):
  torch = pytest.importorskip("torch")
  d, generator, config = fixture
  checkpoint = {"generator": {k: torch.from_numpy(v) for k, v in generator.items()}}
  torch.save(checkpoint, tmp_path / "vocoder.pt")
  (tmp_path / "config.json").write_text(json.dumps({**config, "segment_size": 8192, "num_gpus": 0}))
  assert_matches_fixture(*hifigan_from_folder(tmp_path), d)


def random_generator(resblock: str):
  """A random-weight generator with an odd (kernel - rate) upsampler and biases, and its params."""
  config = HifiGanConfig(num_mels=8, upsample_rates=(3, 2), upsample_kernel_sizes=(6, 4),
                         upsample_initial_channel=16, resblock=resblock, resblock_kernel_sizes=(3, 5),
                         resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)) if resblock == "1" else ((1, 3), (1, 3)))
  model = HifiGanGenerator(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4, 8), np.float32))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32) / np.sqrt(np.prod(s.shape[:-1])),
                        shapes)  # biases ~ N(0, 1), kernels ~ N(0, 1 / fan_in)
  return model, params


@pytest.mark.parametrize("resblock", ["1", "2"])
def test_receptive_radius_bounds_the_reach_of_one_frame(resblock):
  model, params = random_generator(resblock)
  radius, hop = receptive_radius_frames(model.config), model.config.hop_length
  mel = np.random.default_rng(0).standard_normal((1, 80, 8)).astype(np.float32)
  bumped = mel.copy()
  bumped[:, 40] += 1.0
  changed = np.flatnonzero(np.abs(vocode(model, params, bumped) - vocode(model, params, mel))[0] > 0)
  assert changed.size and changed.min() >= (40 - radius) * hop and changed.max() < (41 + radius) * hop
  assert changed.min() < (40 - radius + 3) * hop  # the bound is not loose by more than a few frames


@pytest.mark.slow
@pytest.mark.parametrize("resblock", ["1", "2"])
def test_streamed_vocoding_equals_whole(resblock):
  model, params = random_generator(resblock)
  mel = np.random.default_rng(1).standard_normal((2, 157, 8)).astype(np.float32)
  whole = np.asarray(vocode(model, params, mel))
  sizes = [5, 0, 23, 1, 40, 17, 30, 41]  # irregular arrival, 157 frames in all
  pieces = np.split(mel, np.cumsum(sizes)[:-1], axis=1)
  streamed = np.concatenate(list(vocode_stream(model, params, pieces, chunk_frames=12)), axis=1)
  assert streamed.shape == whole.shape
  np.testing.assert_allclose(streamed, whole, atol=1e-5, rtol=0)
  np.testing.assert_allclose(vocode_chunked(model, params, mel, chunk_frames=32), whole, atol=1e-5, rtol=0)
  short = vocode_chunked(model, params, mel[:, :9], chunk_frames=32)  # shorter than one window
  np.testing.assert_allclose(short, vocode(model, params, mel[:, :9]), atol=1e-5, rtol=0)
  no_context = vocode_chunked(model, params, mel, chunk_frames=12, context_frames=0)
  assert np.abs(no_context - whole).max() > 1e-3  # context is what makes the joins exact
