"""Converting release folders: weight files read without PyTorch, Orbax output, the launcher."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from helpers import fixture_release, load_fixture, rel_l2
from rflav_jax.convert import convert_release, load_flav, load_sdvae, load_vocoder
from rflav_jax.convert.checkpoint_io import CheckpointFormatError, read_checkpoint

torch = pytest.importorskip("torch", reason="torch (a test extra: requirements-test.txt) writes the .pt files")


@pytest.mark.parametrize("fmt", [pytest.param("safetensors", marks=pytest.mark.slow), "pt"])
def test_converted_release_reproduces_official_outputs(tmp_path, fmt):
  folder, d = fixture_release(tmp_path, fmt)
  out = convert_release("flav", folder, tmp_path / "converted")
  assert (out / "model.json").exists() and (out / "params").is_dir() and not (out / "config.py").exists()
  weights = folder / ("model.safetensors" if fmt == "safetensors" else "ckpt.pt")
  description = json.loads((out / "model.json").read_text())
  assert description["provenance"] == {"source": str(weights.absolute()),
                                       "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
  assert (description["kind"], description["storage_dtype"]) == ("flav", "float32")
  model, params = load_flav(out)
  assert model.num_classes == 3 and model.causal_attn and model.remat
  v, a = d["in/v"].transpose(0, 1, 3, 4, 2), d["in/a"][:, :, 0].transpose(0, 1, 3, 2)
  t = ((d["in/t"].astype(np.float64) - 1) / 999).astype(np.float32)
  out_v, out_a = model.apply({"params": params}, v, a, t, d["in/y"])
  assert rel_l2(out_v, d["out/v"].transpose(0, 1, 3, 4, 2)) < 1e-5
  assert rel_l2(out_a, d["out/a"][:, :, 0].transpose(0, 1, 3, 2)) < 1e-5


def test_release_folder_problems_are_explained(tmp_path):
  folder, _ = fixture_release(tmp_path, "safetensors")
  (folder / "extra.pt").write_bytes(b"")
  (folder / "model.safetensors").rename(folder / "a.bin")
  with pytest.raises(FileNotFoundError, match="expected one weight file.*--weights"):
    convert_release("flav", folder, tmp_path / "out")
  (folder / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match="config.json"):
    convert_release("flav", folder, tmp_path / "out", weights="a.bin")


def test_torch_files_are_read_without_torch_exactly(tmp_path):
  tensors = {"f32": torch.randn(3, 4), "strided": torch.randn(4, 3).t(), "i64": torch.arange(5),
             "f16": torch.randn(2, 2).half(), "bf16": torch.randn(3).bfloat16(), "scalar": torch.tensor(3.5),
             "slice": torch.randn(10)[2:7]}
  torch.save({"generator": tensors, "step": 7}, tmp_path / "vocoder.pt")
  loaded = read_checkpoint(tmp_path / "vocoder.pt")
  assert loaded["step"] == 7
  for name, tensor in tensors.items():
    np.testing.assert_array_equal(loaded["generator"][name].astype(np.float64), tensor.float().numpy())
    assert loaded["generator"][name].shape == tuple(tensor.shape)


def test_pickles_that_would_run_code_are_refused(tmp_path):
  torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pt")
  with pytest.raises(CheckpointFormatError, match="torch.nn.modules.linear.Linear.*state_dict"):
    read_checkpoint(tmp_path / "module.pt")
  (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
  with pytest.raises(CheckpointFormatError, match="junk.pt: not a safetensors, npz or PyTorch zip"):
    read_checkpoint(tmp_path / "junk.pt")
  torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
  with pytest.raises(CheckpointFormatError, match="legacy.pt: written in torch's legacy format"):
    read_checkpoint(tmp_path / "legacy.pt")


@pytest.mark.slow
def test_convert_launcher_documents_every_flag():
  result = subprocess.run([sys.executable, "-m", "launch.convert", "--help"], capture_output=True, text=True)
  for flag in ("--kind", "--checkpoint_dir", "--output_dir", "--weights", "--[no]use_ema"):
    assert flag in result.stdout


@pytest.mark.slow
def test_codec_releases_convert_and_load(tmp_path):
  vae = load_fixture("sdvae_small.npz")
  folder = tmp_path / "vae"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({**json.loads(str(vae["config_json"])), "scaling_factor": 0.18215}))
  save_file({k[len("vae/"):]: v for k, v in vae.items() if k.startswith("vae/")},
            str(folder / "diffusion_pytorch_model.safetensors"))
  model, params = load_sdvae(convert_release("sdvae", folder, tmp_path / "vae_converted"))
  decoded = model.apply({"params": params}, vae["latent_mean"].transpose(0, 2, 3, 1), method=model.decode)
  assert rel_l2(decoded, vae["decoded"].transpose(0, 2, 3, 1)) < 1e-4

  voc = load_fixture("hifigan_small.npz")
  folder = tmp_path / "vocoder"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps({**json.loads(str(voc["config_json"])), "segment_size": 8192}))
  generator = {k[len("generator/"):]: torch.from_numpy(v) for k, v in voc.items() if k.startswith("generator/")}
  torch.save({"generator": generator}, folder / "vocoder.pt")
  converted = convert_release("vocoder", folder, tmp_path / "vocoder_converted")
  model, params = load_vocoder(converted)
  wav = model.apply({"params": params}, voc["mel"].transpose(0, 2, 1))
  assert rel_l2(wav, voc["wav"][:, 0]) < 1e-4
  with pytest.raises(ValueError, match="holds a converted 'vocoder', not a 'sdvae'"):
    load_sdvae(converted)
