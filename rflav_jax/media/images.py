"""PNG pictures for people: still frames, contact sheets and spectrograms (written with PyAV)."""
import os

import av
import numpy as np

from rflav_jax import storage

# Anchor colours of a perceptually ordered dark-blue -> green -> yellow map (viridis-like), for spectrograms.
_COLOURS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes a uint8 (H, W, 3) RGB image as a lossless PNG to `path`, a local path or a URL (gs://...)."""
  image = np.ascontiguousarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
  encoder = av.CodecContext.create("png", "w")
  encoder.height, encoder.width = image.shape[:2]
  encoder.pix_fmt = "rgb24"
  packets = encoder.encode(av.VideoFrame.from_ndarray(image, format="rgb24")) + encoder.encode(None)
  storage.as_path(path).write_bytes(b"".join(bytes(packet) for packet in packets))  # one packet: the whole file


def contact_sheet(frames: np.ndarray, columns: int = 10) -> np.ndarray:
  """uint8 frames (T, H, W, 3) -> one uint8 image of ceil(T / columns) rows of `columns` frames (black filler)."""
  frames = np.asarray(frames)
  rows = -(-len(frames) // columns)
  filler = np.zeros((rows * columns - len(frames), *frames.shape[1:]), frames.dtype)
  grid = np.concatenate([frames, filler]).reshape(rows, columns, *frames.shape[1:])
  return grid.transpose(0, 2, 1, 3, 4).reshape(rows * frames.shape[1], columns * frames.shape[2], 3)


def spectrogram_image(mel: np.ndarray, height_per_bin: int = 1) -> np.ndarray:
  """Mel (columns, N) of any scale -> uint8 (N * height_per_bin, columns, 3), low frequencies at the bottom."""
  mel = np.asarray(mel, np.float64)
  span = mel.max() - mel.min()
  level = (mel - mel.min()) / span if span > 0 else np.zeros_like(mel)
  position = level.T[::-1] * (len(_COLOURS) - 1)
  low = np.floor(position).astype(int).clip(0, len(_COLOURS) - 2)
  weight = (position - low)[..., None]
  rgb = (1 - weight) * _COLOURS[low] + weight * _COLOURS[low + 1]
  return np.repeat(rgb.round().astype(np.uint8), height_per_bin, axis=0)


def curve_image(steps: np.ndarray, values: np.ndarray, height: int = 240, width: int = 480,
                log_scale: bool = True) -> np.ndarray:
  """A line plot of values over steps (e.g. a loss curve) -> uint8 (height, width, 3), white on black.

  The vertical axis spans the values' range (log10 of them with log_scale); faint grey lines mark each decade
  (log) or each quarter of the range (linear). Non-finite values are left out.
  """
  steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
  keep = np.isfinite(values) & (values > 0 if log_scale else True)
  steps, values = steps[keep], values[keep]
  image = np.zeros((height, width, 3), np.uint8)
  if len(values) < 2:
    return image
  y = np.log10(values) if log_scale else values
  low, high = y.min(), y.max()
  span = high - low or 1.0
  to_row = lambda v: np.round((height - 1) * (1 - (v - low) / span)).astype(int)
  marks = np.arange(np.ceil(low), np.floor(high) + 1) if log_scale else low + span * np.arange(5) / 4
  image[np.clip(to_row(marks), 0, height - 1)] = 60
  columns = np.round((width - 1) * (steps - steps[0]) / max(steps[-1] - steps[0], 1)).astype(int)
  rows = to_row(y)
  for c0, c1, r0, r1 in zip(columns[:-1], columns[1:], rows[:-1], rows[1:]):  # straight segments between points
    count = max(abs(c1 - c0), abs(r1 - r0)) + 1
    image[np.linspace(r0, r1, count).round().astype(int), np.linspace(c0, c1, count).round().astype(int)] = 255
  return image
