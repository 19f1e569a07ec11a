"""Bouncing-ball dataset: determinism, the exact picture-sound link read back from data alone, TFDS form."""
import numpy as np
import pytest

from rflav_jax.codecs.audio import frames_from_mel, mel_from_waveform
from rflav_jax.data import synthetic
from rflav_jax.data import synthetic_analysis as analysis
from rflav_jax.data import synthetic_tfds


def test_same_seed_same_data_and_different_seeds_differ():
  first = synthetic.synthetic_dataset(3, seed=7)
  again = synthetic.synthetic_dataset(3, seed=7)
  other = synthetic.synthetic_dataset(3, seed=8)
  for name in first:
    np.testing.assert_array_equal(first[name], again[name], err_msg=name)
  assert not np.array_equal(first["video"], other["video"])
  assert not np.array_equal(first["mel"], other["mel"])


def test_clip_layout_and_mel_is_the_real_front_end():
  clip = synthetic.generate_clip(seed=1, index=0, config=synthetic.BouncingBallConfig(resolution=64, num_frames=12))
  assert clip.video.shape == (12, 64, 64, 3) and clip.video.dtype == np.uint8
  assert clip.audio.shape == (12 * 1600,) and clip.audio.dtype == np.float32
  assert np.abs(clip.audio).max() <= 1.0
  assert clip.mel.shape == (12, 10, 256) and clip.mel.dtype == np.float32
  np.testing.assert_array_equal(clip.mel, frames_from_mel(mel_from_waveform(clip.audio * 32768.0)))
  assert clip.height.shape == clip.pitch_hz.shape == clip.contacts.shape == (12,)


def test_heights_follow_gravity_between_contacts():
  """Away from contacts the height is one parabola: equal second differences (= -gravity dt^2)."""
  for index in range(6):
    clip = synthetic.generate_clip(seed=2, index=index)
    height = clip.height.astype(np.float64)
    second = height[2:] - 2 * height[1:-1] + height[:-2]
    free = ~(clip.contacts[:-2] | clip.contacts[1:-1] | clip.contacts[2:])  # no contact in frames n .. n + 2
    assert free.sum() >= 3
    assert np.all(second[free] < 0)
    np.testing.assert_allclose(second[free], second[free][0], atol=1e-6)


@pytest.mark.parametrize("resolution", [32, 64])
def test_picture_sound_link_holds_on_every_clip(resolution):
  data = synthetic.synthetic_dataset(12, synthetic.BouncingBallConfig(resolution=resolution), seed=resolution)
  assert data["contacts"].sum() >= 12 and set(data["label"]) == {0, 1, 2}  # the checks below see every case
  for video, mel, label, height, contacts in zip(data["video"], data["mel"], data["label"], data["height"],
                                                 data["contacts"]):
    video_height = analysis.ball_height_from_video(video)
    np.testing.assert_allclose(video_height, height, atol=2e-3)  # the picture shows the latent height
    np.testing.assert_allclose(analysis.height_from_mel(mel), video_height, atol=0.02)  # pitch <-> height
    np.testing.assert_array_equal(analysis.contacts_from_mel(mel), contacts)  # clicks at contact frames
    np.testing.assert_array_equal(analysis.contacts_from_video(video)[1:-1], contacts[1:-1])  # lowest frames
    assert analysis.label_from_video(video) == analysis.label_from_mel(mel) == label  # colour <-> timbre


def test_analysis_detects_mismatched_sound():
  """Pairing one clip's picture with another's sound breaks the measured link."""
  a, b = synthetic.generate_clip(seed=3, index=0), synthetic.generate_clip(seed=3, index=1)
  mismatch = np.abs(analysis.height_from_mel(b.mel) - analysis.ball_height_from_video(a.video))
  assert mismatch.max() > 0.1
  assert analysis.contacts_from_mel(np.full_like(a.mel, -1.0)).sum() == 0  # silence has no clicks


def test_pitch_from_mel_reads_a_pure_tone():
  """A steady 440 Hz tone through the front end reads back as 440 Hz (independent of the generator)."""
  t = np.arange(16000) / 16000
  mel = frames_from_mel(mel_from_waveform(0.5 * np.sin(2 * np.pi * 440.0 * t) * 32768))
  np.testing.assert_allclose(analysis.pitch_from_mel(mel), 440.0, rtol=0.01)


def test_bad_inputs_are_rejected():
  with pytest.raises(ValueError, match="resolution"):
    synthetic.BouncingBallConfig(resolution=8)
  with pytest.raises(ValueError, match="uint8"):
    analysis.ball_height_from_video(np.zeros((4, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r"\(T, 10, N\)"):
    analysis.pitch_from_mel(np.zeros((40, 256)))


def test_tfds_builder_holds_the_generated_clips(tmp_path):
  builder = synthetic_tfds.build_bouncing_ball(tmp_path, num_train=3, num_test=2, num_frames=8, seed=5)
  assert builder.info.splits["train"].num_examples == 3 and builder.info.splits["test"].num_examples == 2
  config = synthetic.BouncingBallConfig(num_frames=8)
  for split, indices in (("train", {0, 1, 2}), ("test", {3, 4})):
    seen = set()
    source = builder.as_data_source(split=split)
    for example in (source[i] for i in range(len(source))):
      clip = synthetic.generate_clip(5, int(example["index"]), config)
      np.testing.assert_array_equal(example["video"], clip.video)
      np.testing.assert_array_equal(example["mel"], clip.mel)
      np.testing.assert_array_equal(example["contacts"], clip.contacts)
      assert example["label"] == clip.label
      seen.add(int(example["index"]))
    assert seen == indices
