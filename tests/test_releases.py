"""The released checkpoints as a user gets them: the hub layouts found and converted exactly, and the README's
download, convert and sample commands run as written on folders laid out like the releases."""
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest

from rflav_jax.build import load_flav, load_sdvae, load_vocoder
from rflav_jax.convert import release
from rflav_jax.media.reader import read_audio, read_video

pytest.importorskip("torch", reason="torch (a test extra: requirements-test.txt) writes the .pt files")
import release_testing  # noqa: E402  (imports torch)

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The repositories the README downloads, and the layouts release_testing writes for them.
REPOSITORIES = {
    "MaverickAlex/R-FLAV-B-1-AIST": lambda folder: release_testing.write_flav_release(folder, 10, "safetensors"),
    "MaverickAlex/R-FLAV-B-1-LS": lambda folder: release_testing.write_flav_release(folder, 0, "pt", seed=2),
    "stabilityai/sd-vae-ft-ema": release_testing.write_vae_release,
}


def readme_commands() -> list[list[str]]:
  """The shell commands of the README's "Use the released checkpoints" section, split into words."""
  text = (ROOT / "README.md").read_text()
  section = text[text.index("### Use the released checkpoints"):]
  section = section[:section.index("\n### ", 1)]
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", section, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      words = shlex.split(line, comments=True)
      if words:
        commands.append(words)
  return commands


def assert_same_params(converted, written, atol=0.0):
  for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(written), strict=True):
    np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=atol)


def test_hub_layouts_are_found_and_converted_exactly(tmp_path):
  flav_params, vocoder_params = release_testing.write_flav_release(tmp_path / "aist", 10, "pt")
  vae_params = release_testing.write_vae_release(tmp_path / "vae")
  assert release.release_parts(tmp_path / "aist") == {"flav": tmp_path / "aist", "vocoder": tmp_path / "aist/vocoder"}
  assert release.release_parts(tmp_path / "vae") == {"sdvae": tmp_path / "vae"}  # .cache/ and README.md passed over
  out = release.convert_download(tmp_path / "aist", tmp_path / "converted/aist")
  assert out == {"flav": (tmp_path / "converted/aist/flav").absolute(),
                 "vocoder": (tmp_path / "converted/aist/vocoder").absolute()}
  (vae,) = release.convert_download(tmp_path / "vae", tmp_path / "converted").values()
  assert vae == (tmp_path / "converted/sdvae").absolute()
  model, params = load_flav(out["flav"])
  assert model.num_classes == 10 and model.predict_frames == 10
  assert_same_params(params, flav_params)  # the EMA weights of the training checkpoint, as written
  assert_same_params(load_sdvae(vae)[1], vae_params)  # safetensors taken over .bin; the older attention names
  assert_same_params(load_vocoder(out["vocoder"])[1], vocoder_params, atol=1e-7)  # weight norm folded back
  provenance = json.loads((vae / "model.json").read_text())["provenance"]
  assert provenance["source"].endswith("diffusion_pytorch_model.safetensors")


def test_release_folders_that_cannot_be_read_as_one_are_explained(tmp_path):
  (tmp_path / "empty/.cache").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="empty and its subfolders hold no config.json"):
    release.release_parts(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
    release.release_parts(tmp_path / "nowhere")
  for part, config in (("", {"hidden_size": 64, "depth": 2}), ("a", {"upsample_rates": [8]}),
                       ("b", {"upsample_rates": [4], "resblock_kernel_sizes": [3]})):
    (tmp_path / "two" / part).mkdir(parents=True, exist_ok=True)
    (tmp_path / "two" / part / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"two/a and .*two/b both hold a HiFi-GAN vocoder: convert each with "
                                       "--kind=vocoder --checkpoint_dir"):
    release.release_parts(tmp_path / "two")
  (tmp_path / "mixed").mkdir()
  (tmp_path / "mixed/config.json").write_text(json.dumps({"depth": 2, "latent_channels": 4}))
  with pytest.raises(ValueError, match="not of one clear kind.*'flav': \\['depth'\\].*--kind and --checkpoint_dir"):
    release.release_parts(tmp_path / "mixed")


@pytest.mark.slow
def test_readme_commands_download_convert_and_sample_as_written(tmp_path):
  """The README's commands, run in a folder where `hf download` is played by writing the repositories' layouts
  (small random models); the sampling commands take a config of the small model in place of the B/1 one."""
  commands = readme_commands()
  assert ["pip", "install", "huggingface_hub"] in commands
  downloads = [c for c in commands if c[:2] == ["hf", "download"]]
  assert sorted(c[2] for c in downloads) == sorted(REPOSITORIES)
  written = {}
  for _, _, repository, flag, folder in downloads:
    assert flag == "--local-dir"
    written[folder] = REPOSITORIES[repository](tmp_path / folder)

  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
  (tmp_path / "configs").symlink_to(ROOT / "configs")
  converts = [c for c in commands if c[:3] == ["python", "-m", "launch.convert"]]
  assert len(converts) >= 3
  for command in converts:
    result = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
  assert_same_params(load_flav(tmp_path / "converted/landscape/flav")[1], written["releases/landscape"][0])

  samples = [c for c in commands if c[:3] == ["python", "-m", "launch.sample"]]
  assert len(samples) == 2 and "--config.sample.num_frames=3" in samples[1]  # the CPU command
  for command in samples:
    flags = dict(arg[2:].split("=", 1) for arg in command[3:])
    small = tmp_path / "small_model.py"
    small.write_text(f"import ml_collections\nfrom configs import {pathlib.Path(flags['config']).stem} as released\n"
                     "def get_config():\n  config = released.get_config()\n"
                     "  config.model = ml_collections.ConfigDict(dict(dtype='float32'))  # the folder's model\n"
                     "  return config\n")
    args = {**flags, "config": str(small), "config.sample.num_frames": "2"}
    result = subprocess.run([sys.executable, "-m", "launch.sample", *(f"--{k}={v}" for k, v in args.items())],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "num_streams=1, chunk_frames=2: fitted to this cpu machine" in result.stderr
    mp4 = tmp_path / flags["output_dir"] / "stream_0.mp4"
    assert read_video(mp4).shape == (2, 16, 16, 3)
    assert abs(len(read_audio(mp4)) - 2 * 1600) <= 1600
    assert not (tmp_path / flags["output_dir"] / "stream_1.mp4").exists()
