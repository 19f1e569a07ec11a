"""Figures of bouncing-ball streams: perfect on real clips, poor on noise and on mismatched picture and sound;
generated streams of the asked length, with progress."""
import logging

import numpy as np
import pytest

from configs import synthetic_tiny
from rflav_jax.data import synthetic
from rflav_jax.eval import evaluate, synthetic_av


@pytest.fixture(scope="module")
def clip():
  return synthetic.generate_clip(3, 0, synthetic.BouncingBallConfig(num_frames=120))


def test_real_clips_score_perfectly(clip):
  figures = synthetic_av.segment_figures(clip.video, clip.mel)
  assert figures["ball_frames"] == 1.0 and figures["background"] == 0.0 and figures["colour_label"] == 1.0
  assert figures["gravity"] == 1.0 and figures["motion"] > 0.1
  assert figures["height_pitch_r"] > 0.99
  assert figures["click_recall"] == 1.0 and figures["click_precision"] == 1.0
  assert figures["video_label"] == figures["audio_label"] == clip.label


def test_noise_and_mismatch_score_poorly(clip):
  rng = np.random.default_rng(0)
  noise_video = rng.integers(0, 256, clip.video.shape, dtype=np.uint8)
  figures = synthetic_av.segment_figures(noise_video, np.clip(rng.normal(size=clip.mel.shape), -1, 1))
  assert figures["ball_frames"] == 0.0 and figures["background"] > 0.3 and abs(figures["height_pitch_r"]) < 0.3
  other = synthetic.generate_clip(3, 1, synthetic.BouncingBallConfig(num_frames=120))
  mismatched = synthetic_av.segment_figures(clip.video, other.mel)
  assert mismatched["ball_frames"] == 1.0 and mismatched["height_pitch_r"] < 0.5
  assert mismatched["click_recall"] < 0.7
  frozen = synthetic_av.segment_figures(np.repeat(clip.video[:1], 120, axis=0), clip.mel)
  assert frozen["motion"] < 1e-9


def test_segments_and_real_mode(clip):
  assert len(synthetic_av.stream_figures(clip.video, clip.mel, 50)) == 2
  with pytest.raises(ValueError, match="fewer than one segment"):
    synthetic_av.stream_figures(clip.video, clip.mel, 200)
  config = synthetic_tiny.get_config()
  results = evaluate.evaluate(config, "real", seconds=6, segment_seconds=3, streams=2)
  assert [(r["stream"], r["segment"]) for r in results] == [(0, 0), (0, 1), (1, 0), (1, 1)]
  assert evaluate.summary(results)["height_pitch_r"] > 0.99


@pytest.mark.slow
def test_joint_streams_have_the_asked_length_and_log_progress(caplog):
  caplog.set_level(logging.INFO)
  config = synthetic_tiny.get_config()
  config.checkpoint = ""  # a fresh model of the sizes below
  config.model.update(latent_size=16, patch_size=8, hidden_size=32, depth=1, num_heads=2, predict_frames=4)
  config.sample.chunk_frames = 3
  results = evaluate.evaluate(config, "joint", seconds=0.7, segment_seconds=0.7, streams=2)
  assert [(r["stream"], r["segment"], r["label"]) for r in results] == [(0, 0, 0), (1, 0, 0)]
  progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("frame ")]
  assert [m.split(",")[0] for m in progress] == [f"frame {n}/7 of 1 stream(s)" for n in (3, 6, 7)] * 2
  assert progress[-1].endswith("ETA 0.0 s")
