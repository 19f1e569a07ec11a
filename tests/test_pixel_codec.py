"""Pixel identity codec: scaling of real frames, exact round trip, the shared VideoCodec interface."""
import numpy as np
import pytest

from helpers import media_file
from rflav_jax.codecs.pixel import PixelCodec, VideoCodec, to_signed_unit
from rflav_jax.media.reader import read_video


def test_real_frames_round_trip_exactly():
  frames = read_video(media_file("aist_video0.mp4"))[None]  # (B=1, T, 256, 256, 3) uint8
  codec = PixelCodec()
  assert isinstance(codec, VideoCodec)
  assert codec.latent_shape(frames.shape[2:4]) == (256, 256, 3)
  encoded = codec.encode(frames)
  assert encoded.shape == frames.shape and encoded.dtype == np.float32
  assert -1.0 <= encoded.min() < -0.9 and 0.9 < encoded.max() <= 1.0
  decoded = codec.decode(encoded)
  np.testing.assert_array_equal(np.round((decoded + 1) * 127.5).astype(np.uint8), frames)


def test_scaling_end_points_and_float_input():
  np.testing.assert_array_equal(to_signed_unit(np.array([0, 255], np.uint8)), [-1.0, 1.0])
  frames = np.linspace(-1, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
  encoded = PixelCodec().encode(frames)
  assert encoded.dtype == np.float32
  np.testing.assert_allclose(encoded, frames, rtol=1e-7)


def test_bad_input_is_rejected():
  codec = PixelCodec()
  with pytest.raises(ValueError, match="dtype int32"):
    codec.encode(np.zeros((2, 4, 4, 3), np.int32))
  with pytest.raises(ValueError, match="channels-last"):
    codec.encode(np.zeros((2, 3, 4, 4), np.uint8))
  with pytest.raises(ValueError, match="channels-last"):
    codec.decode(np.zeros((4, 4)))
