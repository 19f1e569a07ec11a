"""Clips as MM-Diffusion's evaluation hands them to I3D for FVD/KVD.

fit_square  (host, numpy) what its data loader and evaluator do to every clip: resize keeping the aspect ratio to
            fit a 64x64 square (bicubic), pad the rest with black, map to [-1, 1] in float32 and back to uint8 by
            truncation (which turns some values v into v - 1).
i3d_input   (jax) its FVD `preprocess`: /255, the short side to 224 (bilinear, no corner alignment, no
            antialiasing), the centre 224x224 crop, then [0, 1] -> [-1, 1].

Resizing is a matrix product per axis, with the weights of torch's `interpolate`. Bicubic resizing follows
torchvision's `Resize` on tensors, which antialiases since torchvision 0.17 (PIL's kernel, a = -0.5, widened when
shrinking); `antialias=False` gives torchvision < 0.17 (Keys' kernel, a = -0.75, border pixels repeated).
"""
import math

import jax.numpy as jnp
import numpy as np

FIT_SIZE = 64
I3D_SIZE = 224


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel with parameter a, at offsets x."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _keys_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's bicubic interpolation without antialiasing (align_corners=False)."""
  source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  first = np.floor(source)
  matrix = np.zeros((out_size, in_size))
  for tap in range(-1, 3):
    index = np.clip(first + tap, 0, in_size - 1).astype(int)
    np.add.at(matrix, (np.arange(out_size), index), _cubic(source - first - tap, -0.75))
  return matrix


def _antialiased_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's antialiased bicubic interpolation (PIL's): taps past the borders are dropped and
  the rest normalised to sum 1."""
  scale = in_size / out_size
  stretch = max(scale, 1.0)
  centre = (np.arange(out_size) + 0.5) * scale
  weights = _cubic((np.arange(in_size) + 0.5 - centre[:, None]) / stretch, -0.5)
  return weights / weights.sum(axis=1, keepdims=True)


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of torch's bilinear interpolation without antialiasing (align_corners=False)."""
  source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  first = np.minimum(np.floor(source).astype(int), in_size - 1)
  second = np.minimum(first + 1, in_size - 1)
  frac = source - first
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), first), 1 - frac)
  np.add.at(matrix, (np.arange(out_size), second), frac)
  return matrix


def _check_clips(clips: np.ndarray | jnp.ndarray):
  if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
    raise ValueError(f"expected uint8 RGB clips of shape (B, T, H, W, 3), got {clips.dtype} {clips.shape}")


def fit_square(clips: np.ndarray, size: int = FIT_SIZE, antialias: bool = True) -> np.ndarray:
  """uint8 clips (B, T, H, W, 3) -> uint8 (B, T, size, size, 3) as MM-Diffusion's loader and evaluator make them."""
  clips = np.asarray(clips)
  _check_clips(clips)
  height, width = clips.shape[2:4]
  ratio = min(size / height, size / width)
  new_height, new_width = int(height * ratio), int(width * ratio)
  matrix = _antialiased_matrix if antialias else _keys_matrix
  resized = np.einsum("yh,bthwc,xw->btyxc", matrix(height, new_height), clips.astype(np.float64),
                      matrix(width, new_width), optimize=True)
  resized = np.round(np.clip(resized, 0, 255)).astype(np.uint8)
  top, left = (size - new_height) // 2, (size - new_width) // 2
  out = np.zeros(clips.shape[:2] + (size, size, 3), np.uint8)
  out[:, :, top:top + new_height, left:left + new_width] = resized
  # The loader's float32 [-1, 1] and the evaluator's way back, truncating.
  signed = out.astype(np.float32) / np.float32(127.5) - np.float32(1)
  return np.clip((signed + np.float32(1)) * np.float32(127.5), 0, 255).astype(np.uint8)


def i3d_input(clips: jnp.ndarray, resolution: int = I3D_SIZE) -> jnp.ndarray:
  """uint8 clips (B, T, H, W, 3) -> float32 (B, T, resolution, resolution, 3) in [-1, 1], I3D's input."""
  _check_clips(clips)
  height, width = clips.shape[2:4]
  scale = resolution / min(height, width)
  if height < width:
    new_height, new_width = resolution, math.ceil(width * scale)
  else:
    new_height, new_width = math.ceil(height * scale), resolution
  top, left = (new_height - resolution) // 2, (new_width - resolution) // 2
  rows = _bilinear_matrix(height, new_height)[top:top + resolution]
  columns = _bilinear_matrix(width, new_width)[left:left + resolution]
  video = clips.astype(jnp.float32) / 255.0
  video = jnp.einsum("yh,bthwc,xw->btyxc", jnp.asarray(rows, jnp.float32), video, jnp.asarray(columns, jnp.float32),
                     precision="highest")
  return (video - 0.5) * 2
