"""Loop detection: does a video keep coming back to frames it has already shown, how often, and how closely?

For a video of T frames:
  D (T, T)     the LPIPS distance of every pair of frames: symmetric, zero diagonal.
  r(k)         = 1 - mean_i D[i, i + k], the mean similarity of frames k apart, k = 0 .. T-1 (r(0) = 1).
  x(k)         r over the analysed lags k = 1 .. K, K = 3T // 4 (each lag averages at least T/4 pairs), less its
               least-squares line: a video that drifts away loses similarity steadily with k, and that trend is
               not a repetition.
  spectrum     |FFT(x)|^2 over frequency bins f = 0 .. K // 2; bin f is a period of K / f frames.
  period P     among 2 .. K // 3 frames (at least three repetitions in the analysed lags), the one whose periodic
               part of x, the mean of x over the lags with the same k mod P, explains the largest share of x's
               variance beyond chance:
                 periodic_share(P) = (eta2 - c) / (1 - c),  eta2 = sum_phases n_phase mean_phase^2 / sum_k x(k)^2
                 (x has mean 0), c = (P - 1) / (K - 1), what eta2 averages for x of independent noise.
               When P divides K, eta2 is exactly the share of x's spectral power (DC aside) that lies at the
               harmonics of bin K / P: a video that repeats puts its spectrum's peaks there.
  strength     how closely the video comes back after one period, in [0, 1]:
                 (r(P) - min_{1 <= k <= P} r(k)) / (1 - min_{1 <= k <= P} r(k)),
               the share of the similarity lost within the period that is regained at lag P. 1: frames P apart
               are identical; 0: the video never gets closer again to where it was (a random walk, noise). A video
               whose frames all look alike has strength 0. Strength is the number to read: periodic_share, being
               relative to x's own variance, can be sizeable for slow drift seen only three or four times.

`distance_matrix` computes D in bounded memory, `analyse` the rest, `loop_plot` draws D, r(k) and the spectrum.
"""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from rflav_jax.eval import lpips
from rflav_jax.media import images

MIN_FRAMES = 8  # 6 analysed lags: periods of 2 frames, seen three times
_features = jax.jit(lpips.features)


@jax.jit
def _pair_distances(params: dict, features: tuple[jnp.ndarray, ...], rows: jnp.ndarray, columns: jnp.ndarray):
  return lpips.distance(params, tuple(f[rows] for f in features), tuple(f[columns] for f in features))


def _padded(array: np.ndarray, size: int) -> np.ndarray:
  """array with its first entry repeated at the end up to `size` entries, so every batch has one shape."""
  return np.concatenate([array, np.repeat(array[:1], size - len(array), axis=0)])


def distance_matrix(params: dict, video: np.ndarray, frame_batch: int = 16, pair_batch: int = 64) -> np.ndarray:
  """LPIPS distances (T, T) float32 between all frames of a uint8 video (T, H, W, 3), H and W >= 31.

  Each frame goes through AlexNet once, `frame_batch` at a time; the T (T - 1) / 2 pairs are then compared
  `pair_batch` at a time. Memory: the features of all frames (about 10 H W floats a frame) plus the differences
  of one batch of pairs (2 pair_batch frames' worth).
  """
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3 or len(video) < 2:
    raise ValueError(f"expected a uint8 RGB video (T, H, W, 3) of at least 2 frames, got {video.dtype} {video.shape}")
  frames = len(video)
  batches = [_features(params, lpips.signed_images(_padded(video[i:i + frame_batch], frame_batch)))
             for i in range(0, frames, frame_batch)]
  features = tuple(jnp.concatenate(layer)[:frames] for layer in zip(*batches))
  rows, columns = np.triu_indices(frames, 1)
  found = []
  for i in range(0, len(rows), pair_batch):
    pairs = [_padded(index[i:i + pair_batch], pair_batch) for index in (rows, columns)]
    found.append(np.asarray(_pair_distances(params, features, *pairs))[:len(rows[i:i + pair_batch])])
  matrix = np.zeros((frames, frames), np.float32)
  matrix[rows, columns] = matrix[columns, rows] = np.concatenate(found)
  return matrix


def lag_similarity(distances: np.ndarray) -> np.ndarray:
  """r(k) = 1 - (mean distance of frames k apart), k = 0 .. T-1, float64, from a (T, T) distance matrix."""
  distances = np.asarray(distances, np.float64)
  return np.array([1 - np.diagonal(distances, k).mean() for k in range(len(distances))])


def detrended(values: np.ndarray) -> np.ndarray:
  """values (n,) less their least-squares line over their index."""
  index = np.arange(len(values))
  return values - np.polyval(np.polyfit(index, values, 1), index)


def periodic_share(x: np.ndarray, period: int) -> float:
  """Share of the variance of x (mean 0, lags 1 .. K) explained by its mean per phase k mod period, beyond chance."""
  phases = np.arange(1, len(x) + 1) % period
  counts, sums = np.bincount(phases, minlength=period), np.bincount(phases, x, minlength=period)
  total = float(np.sum(x * x))
  if total == 0:
    return 0.0
  chance = (period - 1) / (len(x) - 1)
  return (float(np.sum(sums * sums / counts)) / total - chance) / (1 - chance)


def return_strength(similarity: np.ndarray, period: int) -> float:
  """(r(P) - min_{1..P} r) / (1 - min_{1..P} r): how much of the similarity lost within a period comes back."""
  lowest = similarity[1:period + 1].min()
  return float((similarity[period] - lowest) / (1 - lowest)) if lowest < 1 else 0.0


@dataclasses.dataclass(frozen=True)
class Loops:
  """The loop analysis of one video (see the module's docstring for the definitions)."""
  distances: np.ndarray  # (T, T) LPIPS distances
  similarity: np.ndarray  # r(k), k = 0 .. T-1
  spectrum: np.ndarray  # |FFT(x)|^2, bins 0 .. K // 2 of the K analysed lags
  lags: int  # K, the number of analysed lags
  shares: np.ndarray  # periodic_share of the candidate periods 2 .. K // 3
  period: int  # frames
  strength: float

  def summary(self) -> dict:
    """JSON-ready numbers: frames, analysed lags, period (frames), strength and the period's periodic share."""
    return {"frames": len(self.similarity), "analysed_lags": self.lags, "period": self.period,
            "strength": self.strength, "periodic_share": float(self.shares[self.period - 2])}


def analyse(distances: np.ndarray) -> Loops:
  """The loop analysis of a (T, T) frame distance matrix, T >= MIN_FRAMES."""
  distances = np.asarray(distances)
  if distances.ndim != 2 or distances.shape[0] != distances.shape[1] or len(distances) < MIN_FRAMES:
    raise ValueError(f"loop detection needs a square distance matrix of at least {MIN_FRAMES} frames (periods of 2 "
                     f"frames or more, seen three times in 3/4 of the video), got shape {distances.shape}")
  similarity = lag_similarity(distances)
  lags = len(distances) * 3 // 4
  x = detrended(similarity[1:lags + 1])
  shares = np.array([periodic_share(x, period) for period in range(2, lags // 3 + 1)])
  period = 2 + int(np.argmax(shares))
  return Loops(distances, similarity, np.abs(np.fft.rfft(x)) ** 2, lags, shares, period,
               return_strength(similarity, period))


def video_loops(params: dict, video: np.ndarray, **batches) -> Loops:
  """The loop analysis of a uint8 video (T, H, W, 3) with LPIPS parameters from `lpips_weights`."""
  return analyse(distance_matrix(params, video, **batches))


def _mark(panel: np.ndarray, steps: np.ndarray, at: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
  """panel (a `images.curve_image` of values over steps) with vertical lines at the steps `at`, behind the curve."""
  width = panel.shape[1]
  columns = np.round((width - 1) * (at - steps[0]) / max(steps[-1] - steps[0], 1)).astype(int)
  columns = columns[(columns >= 0) & (columns < width)]
  background = np.all(panel[:, columns] == 0, axis=-1)
  panel[:, columns] = np.where(background[..., None], np.asarray(colour, np.uint8), panel[:, columns])
  return panel


def loop_plot(loops: Loops, height: int = 240) -> np.ndarray:
  """uint8 (height, W, 3) image of three panels, left to right:
  the distance matrix (frame i down, frame j across; dark blue = identical, yellow = the largest distance);
  r(k) over lags 0 .. K (white), with the period's multiples marked in red;
  the spectrum's power over bins 1 .. K // 2 (log scale, white), with the period's harmonics marked in red."""
  frames, lags = len(loops.similarity), loops.lags
  scale = max(1, height // frames)
  matrix = images.spectrogram_image(loops.distances[::-1].T)  # rows top to bottom: frame 0 first
  matrix = np.repeat(np.repeat(matrix, scale, axis=0), scale, axis=1)[:height]
  lag_steps = np.arange(lags + 1)
  similarity = _mark(images.curve_image(lag_steps, loops.similarity[:lags + 1], height, 2 * height, log_scale=False),
                     lag_steps, np.arange(loops.period, lags + 1, loops.period), (160, 30, 30))
  bins = np.arange(1, len(loops.spectrum))
  spectrum = _mark(images.curve_image(bins, loops.spectrum[1:], height, 2 * height, log_scale=True),
                   bins, np.arange(1, loops.period) * lags / loops.period, (160, 30, 30))
  gap = np.full((height, 8, 3), 255, np.uint8)
  matrix = np.pad(matrix, ((0, height - len(matrix)), (0, 0), (0, 0)))
  return np.concatenate([matrix, gap, similarity, gap, spectrum], axis=1)


def write_loop_plot(path: str | os.PathLike, loops: Loops) -> None:
  """Writes `loop_plot(loops)` as a PNG."""
  images.write_png(path, loop_plot(loops))
