"""AudioCLIP's audio embeddings for FAD against MM-Diffusion's own code (tests/data/audioclip_fad.npz, made by
tools/make_audioclip_fixtures.py), the float32 rounding of its input scaling, the 44.1 kHz conversion, and the
weight reader's refusals."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audioclip_testing import FIXTURE, random_audioclip_state_dict
from helpers import load_npz, rel_l2
from rflav_jax.eval import audioclip, audioclip_weights, fad_audio


@pytest.fixture(scope="module")
def reference() -> dict:
  return load_npz(FIXTURE)


@pytest.fixture(scope="module")
def random_state(reference) -> dict[str, np.ndarray]:
  names, shapes = json.loads(str(reference["state_dict_json"]))
  return random_audioclip_state_dict(names, shapes, int(reference["weight_seed"]))


@pytest.fixture(scope="module")
def variables(random_state) -> dict:
  return audioclip_weights.from_torch_state_dict(random_state)


def assert_matches(got, expected):
  assert rel_l2(got, expected) < 1e-5
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_settings_are_the_references(reference):
  settings = json.loads(str(reference["audio_settings_json"]))
  assert settings == {"n_fft": audioclip.N_FFT, "hop_length": audioclip.HOP_LENGTH, "win_length": audioclip.WIN_LENGTH,
                      "window": "blackmanharris", "normalized": True, "onesided": True, "spec_height": -1,
                      "spec_width": -1, "apply_attention": True}
  assert int(reference["embed_dim"]) == audioclip.EMBED_DIM
  assert int(reference["audio_rate"]) == audioclip.SAMPLE_RATE == fad_audio.SAMPLE_RATE
  assert reference["audio_size"].tolist() == [1, audioclip.CLIP_SAMPLES]


@pytest.mark.parametrize("rounding", ["cuda", "cpu"])
def test_input_scaling_rounds_as_torch(rounding):
  """float32 arithmetic step by step in numpy: x + 32768, times 2, then a product with the float32 reciprocal of
  65535 (torch on a GPU) or a division (on the CPU), minus 1."""
  x = np.random.default_rng(0).uniform(-1, 1, 100_000).astype(np.float32)
  x[:6] = [-1, 1, 0, 2.0 ** -10, -(2.0 ** -11), 0.5]
  doubled = (x + np.float32(32768)) * np.float32(2)
  if rounding == "cuda":
    scaled = doubled * (np.float32(1) / np.float32(65535))
  else:
    scaled = doubled / np.float32(65535)
  expected = scaled - np.float32(1)
  got = jax.jit(audioclip.from_int16_range, static_argnums=1)(x, rounding)
  np.testing.assert_array_equal(got, expected)
  assert got[2] == got[3] == got[4] == np.float32(2.0 ** -16)  # faint samples vanish into the offset, ~1/65535


def test_adaptive_max_pool_takes_torchs_windows():
  x = np.random.default_rng(1).normal(size=(2, 31, 7, 3)).astype(np.float32)
  for size in [(16, 4), (31, 7), (1, 1), (10, 3)]:
    expected = np.empty((2, *size, 3), np.float32)
    for i in range(size[0]):
      for j in range(size[1]):
        rows = slice(i * 31 // size[0], -(-(i + 1) * 31 // size[0]))
        cols = slice(j * 7 // size[1], -(-(j + 1) * 7 // size[1]))
        expected[:, i, j] = x[:, rows, cols].max(axis=(1, 2))
    np.testing.assert_array_equal(audioclip.adaptive_max_pool(jnp.asarray(x), size), expected)


def test_spectrogram_matches_reference(reference, variables):
  """The FBSP front end on 4000 samples (6 frames): dB pictures (B, 341, 6, 3) as the reference's pre-processing."""
  spectrogram = jax.jit(audioclip.FBSPSpectrogram(rounding="cpu").apply)
  got = spectrogram({"params": variables["params"]["fbsp"]}, reference["short_pcm"] / 32768)
  assert got.shape == reference["short_db"].shape == (2, 341, 6, 3)
  assert rel_l2(got, reference["short_db"]) < 1e-5
  np.testing.assert_allclose(got, reference["short_db"], rtol=0, atol=0.05)  # dB, of values near -160


def test_network_on_a_short_input_matches_reference(reference, variables):
  got = jax.jit(audioclip.ESResNeXtFBSP(rounding="cpu").apply)(variables, reference["short_pcm"] / 32768)
  assert got.shape == (2, audioclip.EMBED_DIM)
  assert_matches(got, reference["short_embeddings"])


@pytest.mark.parametrize("rounding, key", [pytest.param("cuda", "fad_embeddings_cuda", marks=pytest.mark.slow),
                                           ("cpu", "fad_embeddings")])
def test_fad_embeddings_match_reference(reference, variables, rounding, key):
  """1.6 s clips through `embed`, against MM-Diffusion's code run on the CPU and with torch's GPU rounding of the
  input scaling, which by themselves differ by far more than the tolerance."""
  assert rel_l2(reference["fad_embeddings_cuda"], reference["fad_embeddings"]) > 1e-3
  got = audioclip.embed(variables, reference["fad_pcm"] / 32768, rounding=rounding)
  assert_matches(got, reference[key])


def test_embed_pads_and_cuts_to_the_clip_length():
  waves = np.arange(10, dtype=np.float32).reshape(2, 5)
  np.testing.assert_array_equal(audioclip.fit_clip(waves, 8), np.pad(waves, [(0, 0), (0, 3)]))
  np.testing.assert_array_equal(audioclip.fit_clip(waves, 3), waves[:, :3])
  with pytest.raises(ValueError, match=r"expected mono waveforms of shape \(B, samples\) at 44100 Hz, got shape "
                     r"\(2, 1, 5\)"):
    audioclip.embed({}, waves[:, None])


def test_full_audioclip_checkpoint_loads_its_audio_part(tmp_path, random_state, variables):
  torch = pytest.importorskip("torch")
  state = {f"audio.{k}": torch.from_numpy(v) for k, v in random_state.items()}
  state.update({"visual.conv1.weight": torch.zeros(64, 3, 3, 3), "logit_scale_ai": torch.zeros(())})
  path = tmp_path / "AudioCLIP-Full-Training.pt"
  torch.save(state, path)
  loaded = audioclip_weights.load_audioclip_variables(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  np.testing.assert_array_equal(loaded["params"]["layer2_0"]["conv2"]["kernel"],
                                random_state["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))  # (3, 3, 8, 256)


def test_weights_of_another_network_give_one_clear_error(random_state):
  state = {k: v for k, v in random_state.items() if not k.startswith("fbsp.")}
  state.update({"fc.weight": np.zeros((527, 2048), np.float32), "fc.bias": np.zeros(527, np.float32),
                "blocks.0.attn.qkv.weight": np.zeros((3, 3), np.float32)})
  with pytest.raises(audioclip_weights.AudioCLIPWeightsError) as error:
    audioclip_weights.from_torch_state_dict(state, "ESRNXFBSP.pt")
  message = str(error.value)
  assert "\n" not in message and message.startswith("ESRNXFBSP.pt: not AudioCLIP's audio network")
  assert "3 missing (e.g. fbsp.fb)" in message
  assert "1 unexpected (e.g. blocks.0.attn.qkv.weight)" in message
  assert "2 of the wrong shape (e.g. fc.bias (527,) where (1024,) is expected)" in message


def test_a_biased_fbsp_layer_is_refused(random_state):
  state = dict(random_state, **{"fbsp.bias": np.zeros((1025, 2), np.float32)})
  with pytest.raises(audioclip_weights.AudioCLIPWeightsError, match=r"1 unexpected \(e\.g\. fbsp\.bias\)$"):
    audioclip_weights.from_torch_state_dict(state)


def test_missing_weights_file_names_the_download(tmp_path):
  with pytest.raises(FileNotFoundError, match="AudioCLIP-Full-Training.pt do not exist; download them from https://"):
    audioclip_weights.load_audioclip_variables(tmp_path / "AudioCLIP-Full-Training.pt")


def test_resampling_to_44k_keeps_pitch_and_timing():
  """A 440 Hz tone of 1.6 s at 16 kHz becomes 70560 samples of the same tone at 44.1 kHz, mono at FFmpeg's
  mono-to-stereo gain of 1/sqrt(2), the first channel of stereo as it is; 16-bit steps throughout."""
  tone = lambda rate, n: 0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)
  expected = tone(44100, 70560)
  inner = slice(200, -200)  # the resampling filter's reach at both ends
  mono = fad_audio.resample_to_44k(tone(16000, 25600), 16000)
  assert mono.shape == (70560,)
  np.testing.assert_allclose(mono[inner], expected[inner] / np.sqrt(2), rtol=0, atol=1e-4)
  np.testing.assert_array_equal(mono * 32768, np.round(mono * 32768))
  stereo = fad_audio.resample_to_44k(np.stack([tone(16000, 25600), np.zeros(25600)]), 16000)
  np.testing.assert_allclose(stereo[inner], expected[inner], rtol=0, atol=1e-4)
  assert fad_audio.resample_to_44k(np.ones((2, 100)), 44100).max() == 32767 / 32768  # clipped to 16 bits


def test_resampling_refuses_bad_input():
  with pytest.raises(ValueError, match=r"1 or 2 channels, got shape \(6, 100\)"):
    fad_audio.resample_to_44k(np.zeros((6, 100)), 16000)
  with pytest.raises(ValueError, match="sample_rate must be a positive whole number of Hz, got 16000.5"):
    fad_audio.resample_to_44k(np.zeros(100), 16000.5)
