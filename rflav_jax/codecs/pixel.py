"""The video codec protocol, and the identity codec for models that work directly on pixels.

A `VideoCodec` turns frames (..., H, W, C) into what the flow model sees and back. Both `PixelCodec` (here)
and `rflav_jax.codecs.sdvae.SdVaeCodec` satisfy it, so sampling and data preparation use one code path for
latent-space and pixel-space models.
"""
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VideoCodec(Protocol):
  """Frames <-> model space, channels-last, any leading axes (e.g. (B, T, H, W, C)); numpy in and out."""

  def encode(self, frames, key=None) -> np.ndarray:
    """frames (..., H, W, C) uint8 in [0, 255] or float in [-1, 1] -> model inputs (..., h, w, c).

    `key` (a jax.random key) asks for a random draw where the codec is stochastic.
    """

  def decode(self, latents) -> np.ndarray:
    """model outputs (..., h, w, c) -> frames (..., H, W, C) as float32 in [-1, 1] (not clipped)."""

  def latent_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int, int]:
    """(H, W) of a frame -> (h, w, c) of its encoding."""

  @property
  def downsample_factor(self) -> int:
    """Frame pixels per latent position along each axis (H = h * factor)."""


def to_signed_unit(frames) -> np.ndarray:
  """uint8 frames in [0, 255] -> float32 in [-1, 1]; float frames (already in [-1, 1]) -> float32 as is."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return frames.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(frames.dtype, np.floating):
    raise ValueError(f"frames have dtype {frames.dtype}; expected uint8 in [0, 255] or float in [-1, 1].")
  return frames.astype(np.float32)


def to_uint8(frames) -> np.ndarray:
  """Frames in [-1, 1] (any shape) -> uint8 in [0, 255], rounded and clipped: the inverse of `to_signed_unit`."""
  return np.clip(np.round((np.asarray(frames, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


class PixelCodec:
  """Identity codec: the model sees the frames themselves, scaled to [-1, 1]."""

  def __init__(self, channels: int = 3):
    self.channels = channels

  downsample_factor = 1

  def latent_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int, int]:
    return (*frame_shape, self.channels)

  def encode(self, frames, key=None) -> np.ndarray:
    del key  # deterministic
    frames = to_signed_unit(frames)
    self._check(frames, "frames")
    return frames

  def decode(self, latents) -> np.ndarray:
    latents = np.asarray(latents, np.float32)
    self._check(latents, "latents")
    return latents

  def _check(self, x: np.ndarray, what: str):
    if x.ndim < 3 or x.shape[-1] != self.channels:
      raise ValueError(f"pixel codec {what} have shape {x.shape}; expected (..., height, width, "
                       f"{self.channels}) channels-last.")
