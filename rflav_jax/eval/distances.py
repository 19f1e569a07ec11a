"""Distances between two sets of features, in float64, as MM-Diffusion's evaluation computes FVD, KVD and FAD.

frechet_distance  |mu_x - mu_y|^2 + tr(S_x + S_y) - 2 tr sqrt(sqrt(S_x) S_y sqrt(S_x)), with unbiased (N - 1)
                  covariances and TF-GAN's matrix square roots: by singular value decomposition, singular values
                  below 1e-10 left unrooted. FVD on I3D logits; FAD on audio embeddings.
polynomial_mmd    unbiased MMD^2 under the kernel k(a, b) = (a.b / d + 1)^3 (scikit-learn's `polynomial_kernel`
                  defaults), over the full sets: KVD. `polynomial_mmd_subsets` averages it over random subsets, as KID
                  does.
fad               the Fréchet distance of audio embeddings times 1e4, the scale MM-Diffusion reports, with the
                  unscaled distance beside it.

Every function takes features as (N, D) arrays (any float dtype); N is the number of clips, D the feature size.
"""
import numpy as np

FAD_SCALE = 1e4
SQRT_EPS = 1e-10  # TF-GAN's: singular values below it are kept as they are instead of rooted
KERNEL_BLOCK = 1024  # rows of a kernel matrix held at once


def _features(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"{name}: expected features of shape (N, D) with N >= 2, got {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name}: holds NaN or infinite values")
  return x


def _same_size(x: np.ndarray, y: np.ndarray):
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"features of different sizes: {x.shape[1]} and {y.shape[1]} per clip")


def mean_and_covariance(features) -> tuple[np.ndarray, np.ndarray]:
  """(mean (D,), unbiased covariance (D, D)) of features (N, D), in float64."""
  x = _features(features, "features")
  centred = x - x.mean(axis=0)
  return x.mean(axis=0), centred.T @ centred / (x.shape[0] - 1)


def symmetric_sqrt(matrix: np.ndarray, eps: float = SQRT_EPS) -> np.ndarray:
  """Square root (D, D) of a symmetric positive semi-definite matrix (D, D), by SVD as TF-GAN computes it."""
  u, s, vh = np.linalg.svd(matrix)
  return (u * np.where(s < eps, s, np.sqrt(s))) @ vh


def trace_sqrt_product(sigma_x: np.ndarray, sigma_y: np.ndarray) -> float:
  """tr sqrt(S_x S_y), computed as tr sqrt(sqrt(S_x) S_y sqrt(S_x)), whose argument is symmetric."""
  root = symmetric_sqrt(sigma_x)
  return float(np.trace(symmetric_sqrt(root @ sigma_y @ root)))


def frechet_distance_from_moments(mu_x, sigma_x, mu_y, sigma_y) -> float:
  """Fréchet distance of two Gaussians given their means (D,) and covariances (D, D)."""
  mu_x, sigma_x, mu_y, sigma_y = (np.asarray(a, np.float64) for a in (mu_x, sigma_x, mu_y, sigma_y))
  trace = np.trace(sigma_x + sigma_y) - 2.0 * trace_sqrt_product(sigma_x, sigma_y)
  return float(np.sum((mu_x - mu_y) ** 2) + trace)


def frechet_distance(x, y) -> float:
  """Fréchet distance (FVD on I3D logits) between features x (N, D) and y (M, D)."""
  x, y = _features(x, "x"), _features(y, "y")
  _same_size(x, y)
  return frechet_distance_from_moments(*mean_and_covariance(x), *mean_and_covariance(y))


def fad(real, generated) -> tuple[float, float]:
  """(FAD as MM-Diffusion reports it: 1e4 x the Fréchet distance, the unscaled distance) of audio embeddings."""
  distance = frechet_distance(generated, real)
  return FAD_SCALE * distance, distance


def _kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float) -> float:
  """Sum of all entries of the polynomial kernel matrix between rows of a and b, a block of rows at a time."""
  return float(sum(np.sum((a[i:i + KERNEL_BLOCK] @ b.T * gamma + 1.0) ** 3) for i in range(0, len(a), KERNEL_BLOCK)))


def _mmd(x: np.ndarray, y: np.ndarray) -> float:
  m, n, gamma = len(x), len(y), 1.0 / x.shape[1]
  xx = _kernel_sum(x, x, gamma) - np.sum((np.sum(x * x, axis=1) * gamma + 1.0) ** 3)
  yy = _kernel_sum(y, y, gamma) - np.sum((np.sum(y * y, axis=1) * gamma + 1.0) ** 3)
  return float(xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * _kernel_sum(x, y, gamma) / (m * n))


def polynomial_mmd(x, y) -> float:
  """Unbiased MMD^2 (KVD on I3D logits) between features x (N, D) and y (M, D), over the full sets."""
  x, y = _features(x, "x"), _features(y, "y")
  _same_size(x, y)
  return _mmd(x, y)


def polynomial_mmd_subsets(x, y, num_subsets: int = 100, subset_size: int = 1000,
                           seed: int = 0) -> tuple[float, float]:
  """(mean, standard deviation) of the unbiased MMD^2 over `num_subsets` pairs of random subsets, as KID does.

  Each subset holds min(subset_size, N, M) rows of x (N, D) and as many of y (M, D), drawn without replacement by
  numpy's default generator seeded with `seed`.
  """
  x, y = _features(x, "x"), _features(y, "y")
  _same_size(x, y)
  if num_subsets < 1 or subset_size < 2:
    raise ValueError(f"num_subsets={num_subsets}, subset_size={subset_size}: need at least 1 subset of 2 rows")
  rng = np.random.default_rng(seed)
  size = min(subset_size, len(x), len(y))
  values = [_mmd(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))
