"""FVD/KVD/FAD distances against closed forms, scipy's matrix square root, scikit-learn's polynomial kernel and
MM-Diffusion's own functions (tests/data/mm_diffusion_fvd.npz, made by tools/make_eval_fixtures.py)."""
import pathlib

import numpy as np
import pytest
import scipy.linalg

from i3d_testing import FIXTURE
from rflav_jax.eval import distances


def _spd(rng, d: int) -> np.ndarray:
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_frechet_distance_of_gaussians_matches_closed_form():
  rng = np.random.default_rng(0)
  for d in (1, 5, 32):
    mu1, mu2, s1, s2 = rng.normal(size=d), rng.normal(size=d), _spd(rng, d), _spd(rng, d)
    got = distances.frechet_distance_from_moments(mu1, s1, mu2, s2)
    assert got == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-9, abs=1e-12)
  a, b = rng.uniform(0.5, 2, size=8), rng.uniform(0.5, 2, size=8)  # diagonal: sum (sqrt a - sqrt b)^2
  diagonal = distances.frechet_distance_from_moments(np.zeros(8), np.diag(a), np.ones(8), np.diag(b))
  assert diagonal == pytest.approx(8 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-12)


def test_frechet_distance_of_samples_uses_unbiased_moments():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) @ _spd(rng, 6) + 0.3
  expected = _scipy_frechet(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
  assert distances.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
  assert distances.frechet_distance(x.astype(np.float32), y) == pytest.approx(
      distances.frechet_distance(x.astype(np.float32).astype(np.float64), y), rel=1e-15)


def test_distances_match_mm_diffusion():
  """fvd.py's frechet_distance (torch, float64) and evaluator.py's polynomial_mmd, on the same features."""
  with np.load(pathlib.Path(__file__).parent / "data" / FIXTURE) as ref:
    assert distances.frechet_distance(ref["dist_x"], ref["dist_y"]) == pytest.approx(float(ref["dist_fvd"]), rel=1e-10)
    assert distances.polynomial_mmd(ref["dist_x"], ref["dist_y"]) == pytest.approx(float(ref["dist_kvd"]), rel=1e-10)
    # Fewer clips than dimensions: singular covariances, where TF-GAN's square root leaves tiny values unrooted.
    assert distances.frechet_distance(ref["low_rank_x"], ref["low_rank_y"]) == pytest.approx(
        float(ref["low_rank_fvd"]), rel=1e-9)


def test_frechet_distance_identities():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(300, 16)) * 5
  assert abs(distances.frechet_distance(x, x)) < 1e-9 * np.trace(np.cov(x, rowvar=False))
  shift = rng.normal(size=16)
  assert distances.frechet_distance(x, x + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-9)
  assert distances.frechet_distance(x, x[::-1]) == pytest.approx(0, abs=1e-9)


def test_fad_is_frechet_distance_scaled_by_1e4():
  rng = np.random.default_rng(3)
  real, generated = rng.normal(size=(30, 8)), rng.normal(size=(20, 8)) + 0.1
  scaled, unscaled = distances.fad(real, generated)
  assert unscaled == pytest.approx(distances.frechet_distance(generated, real), rel=1e-12)
  assert scaled == pytest.approx(1e4 * unscaled, rel=1e-15)


def test_symmetric_sqrt_squares_back_and_keeps_tiny_singular_values():
  rng = np.random.default_rng(4)
  s = _spd(rng, 10)
  root = distances.symmetric_sqrt(s)
  np.testing.assert_allclose(root @ root, s, rtol=0, atol=1e-12)
  tiny = np.diag([4.0, 1e-12])  # below 1e-10 a singular value is kept as it is, as TF-GAN does
  np.testing.assert_allclose(distances.symmetric_sqrt(tiny), np.diag([2.0, 1e-12]), rtol=1e-12, atol=0)


def _mmd_double_loop(x, y) -> float:
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def test_polynomial_mmd_matches_double_loop_and_sklearn(monkeypatch):
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(9, 4)), rng.normal(size=(7, 4)) * 1.5 + 0.2
  assert distances.polynomial_mmd(x, y) == pytest.approx(_mmd_double_loop(x, y), rel=1e-12)
  pairwise = pytest.importorskip("sklearn.metrics.pairwise")
  x, y = rng.normal(size=(300, 20)), rng.normal(size=(200, 20)) + 0.1
  kxx, kyy, kxy = pairwise.polynomial_kernel(x), pairwise.polynomial_kernel(y), pairwise.polynomial_kernel(x, y)
  expected = ((kxx.sum() - np.trace(kxx)) / (300 * 299) + (kyy.sum() - np.trace(kyy)) / (200 * 199)
              - 2 * kxy.sum() / (300 * 200))
  monkeypatch.setattr(distances, "KERNEL_BLOCK", 64)  # several blocks per kernel matrix
  assert distances.polynomial_mmd(x, y) == pytest.approx(expected, rel=1e-10)


def test_polynomial_mmd_near_zero_for_one_distribution():
  rng = np.random.default_rng(6)
  same = distances.polynomial_mmd(rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8)))
  different = distances.polynomial_mmd(rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8)) + 0.5)
  assert abs(same) < 0.01 * different


def test_polynomial_mmd_subsets_are_seeded_and_agree_with_full_sets():
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(60, 5)), rng.normal(size=(50, 5)) + 0.3
  mean, std = distances.polynomial_mmd_subsets(x, y, num_subsets=4, subset_size=100)
  # Subsets as large as the smaller set: y whole, 50 rows of x.
  assert std >= 0 and distances.polynomial_mmd_subsets(x, y, 4, 100) == (mean, std)
  assert distances.polynomial_mmd_subsets(x[:50], y, 3, 50)[0] == pytest.approx(distances.polynomial_mmd(x[:50], y),
                                                                              rel=1e-9)
  assert distances.polynomial_mmd_subsets(x, y, 20, 20, seed=1) != distances.polynomial_mmd_subsets(x, y, 20, 20)


@pytest.mark.parametrize("x, y, message", [
    (np.zeros((1, 4)), np.zeros((5, 4)), r"x: expected features of shape \(N, D\) with N >= 2, got \(1, 4\)"),
    (np.zeros((3, 4)), np.zeros((3, 5)), "features of different sizes: 4 and 5 per clip"),
    (np.zeros(4), np.zeros((3, 4)), r"got \(4,\)"),
    (np.full((3, 4), np.nan), np.zeros((3, 4)), "x: holds NaN or infinite values"),
])
def test_bad_features_give_one_clear_error(x, y, message):
  for fn in (distances.frechet_distance, distances.polynomial_mmd):
    with pytest.raises(ValueError, match=message):
      fn(x, y)
