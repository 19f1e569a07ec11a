"""End-to-end sampling to mp4: frame and audio counts, both vocoders, conditioning, checkpoint/config agreement."""
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import media_file
from configs import synthetic_tiny
from rflav_jax import sample
from rflav_jax.codecs.hifigan import HifiGanConfig, HifiGanGenerator
from rflav_jax.convert import export
from rflav_jax.media.reader import read_audio, read_clip, read_video
from rflav_jax.models.flav import flav_args


def tiny_config(**model):
  config = synthetic_tiny.get_config()
  config.model.update(latent_size=16, patch_size=4, hidden_size=32, depth=1, num_heads=2, predict_frames=4, **model)
  config.sample.update(num_frames=7, chunk_frames=3)
  return config


def check_mp4(path, frames):
  assert read_video(path).shape[0] == frames
  assert abs(len(read_audio(path)) - frames * 1600) <= 1600


def test_griffin_lim_stream_writes_every_frame(tmp_path):
  paths = sample.sample(tiny_config(), tmp_path)
  assert [p.name for p in paths] == ["stream_0.mp4"]
  check_mp4(paths[0], 7)
  assert (tmp_path / "stream_0_frames.png").stat().st_size > 0 and (tmp_path / "stream_0_mel.png").stat().st_size > 0


def test_hifigan_stream_keeps_audio_and_video_aligned(tmp_path):
  vocoder = dict(num_mels=16, upsample_rates=[8, 5, 4], upsample_kernel_sizes=[16, 10, 8], upsample_initial_channel=16,
                 resblock="1", resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]])
  model = HifiGanGenerator(HifiGanConfig.from_dict(vocoder))
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 16)))["params"]
  folder = export.save_converted(tmp_path / "vocoder", "vocoder", params, vocoder, "test")
  config = tiny_config(n_mels=16, num_classes=0)
  config.sample.num_streams = 2
  config.vocoder.update(kind="hifigan", checkpoint=str(folder))
  paths = sample.sample(config, tmp_path / "out")
  for path in paths:
    check_mp4(path, 7)


def test_config_that_contradicts_checkpoint_is_refused(tmp_path):
  config = tiny_config()
  model, params = sample.build_model(config)
  folder = export.save_converted(tmp_path / "flav", "flav", params, flav_args(model), "test")
  config.checkpoint = str(folder)
  restored, _ = sample.build_model(config)  # the same model loads, with runtime settings free to change
  assert restored.depth == 1
  config.model.update(hidden_size=64, dtype="bfloat16")
  with pytest.raises(ValueError, match="config.model.hidden_size=64 but the checkpoint has 32"):
    sample.build_model(config)


def test_bad_sampling_options_are_explained(tmp_path):
  config = tiny_config()
  config.codec.kind = "sdvae"
  with pytest.raises(ValueError, match="config.codec.checkpoint"):
    sample.sample(config, tmp_path)
  config = tiny_config()
  config.sample.label = 9
  with pytest.raises(ValueError, match="config.sample.label=9"):
    sample.sample(config, tmp_path)


@pytest.mark.parametrize("given", ["audio", "video"])
def test_conditional_generation_keeps_the_given_modality(tmp_path, given):
  config = tiny_config()
  config.sample.update(condition=given, condition_file=str(media_file("landscape_video0.mp4")), num_frames=6,
                       condition_guidance=0.5)
  path, = sample.sample(config, tmp_path)
  check_mp4(path, 6)
  original, written = read_clip(media_file("landscape_video0.mp4"), resolution=16), read_clip(path)
  if given == "audio":  # the soundtrack is the given one (through AAC: compare loudness envelopes)
    envelope = lambda x: np.abs(x[:6 * 1600]).reshape(6, -1).mean(axis=1)
    assert np.corrcoef(envelope(original.audio), envelope(written.audio))[0, 1] > 0.9
  else:  # the picture is the given one (through H.264)
    assert np.abs(original.video[:6].astype(float) - written.video.astype(float)).mean() < 8
  config.sample.num_frames = 17
  with pytest.raises(ValueError, match="has 16 frames"):
    sample.sample(config, tmp_path)


def test_readme_demo_command_runs(tmp_path):
  result = subprocess.run([sys.executable, "-m", "launch.sample", "--config=configs/synthetic_tiny.py",
                           f"--output_dir={tmp_path}", "--config.sample.num_frames=3", "--config.model.depth=1"],
                          capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1])
  assert result.returncode == 0, result.stderr[-2000:]
  check_mp4(tmp_path / "stream_0.mp4", 3)
