"""LPIPS (Zhang et al. 2018), version 0.1 with the AlexNet backbone and linear heads, as the `lpips` package computes
`lpips.LPIPS(net='alex', version='0.1')(a, b)`, channels-last.

For images a, b (B, H, W, 3) in [-1, 1]:
  1. the scaling layer: x' = (x - SHIFT) / SCALE per channel;
  2. torchvision's AlexNet features, taken after each of its five ReLUs (conv1 .. conv5);
  3. each feature map divided by its channel norm at every pixel (+ 1e-10);
  4. squared differences of a's and b's maps, weighted over channels by the 1x1 head of that layer (no bias),
     averaged over the map's pixels;
  5. summed over the five layers -> (B,); 0, up to float rounding, for identical images.

Parameters: params["alexnet"]["conv1" .. "conv5"] {"kernel": (k, k, in, out), "bias"} and
params["heads"]["lin1" .. "lin5"] {"kernel": (C, 1)}; `lpips_weights` loads the published weights onto them.
Convolutions run at full float32 precision on every backend.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The scaling layer's constants (lpips.ScalingLayer): ImageNet's mean and std in the [-1, 1] scale.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
# torchvision's AlexNet features up to the last ReLU: (channels, kernel, stride, padding, max pool before it).
ALEXNET_CONVS = ((64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True), (256, 3, 1, 1, False),
                 (256, 3, 1, 1, False))
MIN_SIZE = 31  # smaller frames leave nothing for the second max pool


class AlexNetRelus(nn.Module):
  """Scaled images (B, H, W, 3) -> the outputs of AlexNet's five ReLUs, (B, h_k, w_k, C_k) each."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
    relus = []
    for k, (channels, kernel, stride, pad, pool) in enumerate(ALEXNET_CONVS, start=1):
      if pool:
        x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
      x = nn.relu(nn.Conv(channels, (kernel, kernel), stride, padding=[(pad, pad)] * 2,
                          precision=jax.lax.Precision.HIGHEST, name=f"conv{k}")(x))
      relus.append(x)
    return tuple(relus)


class LinearHeads(nn.Module):
  """Squared differences of unit-normalised features, one (B, h_k, w_k, C_k) per layer -> distances (B,)."""

  @nn.compact
  def __call__(self, differences: tuple[jnp.ndarray, ...]) -> jnp.ndarray:
    return sum(nn.Dense(1, use_bias=False, precision=jax.lax.Precision.HIGHEST, name=f"lin{k}")(d).mean(axis=(1, 2, 3))
               for k, d in enumerate(differences, start=1))


def signed_images(images: np.ndarray) -> np.ndarray:
  """uint8 RGB (..., H, W, 3) -> float32 in [-1, 1], as lpips.im2tensor: x / 127.5 - 1."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.shape[-1] != 3:
    raise ValueError(f"expected uint8 RGB images (..., H, W, 3), got {images.dtype} {images.shape}")
  return (images / (255 / 2) - 1).astype(np.float32)


def features(params: dict, images: jnp.ndarray) -> tuple[jnp.ndarray, ...]:
  """Unit-normalised AlexNet features of images (B, H, W, 3) in [-1, 1]: five maps (B, h_k, w_k, C_k) whose channel
  vectors have norm 1 (or are 0). H and W must be at least MIN_SIZE."""
  if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < MIN_SIZE:
    raise ValueError(f"LPIPS takes RGB images (B, H, W, 3) at least {MIN_SIZE} pixels a side, got {images.shape}")
  scaled = (images - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
  relus = AlexNetRelus().apply({"params": params["alexnet"]}, scaled)
  return tuple(f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + NORM_EPS) for f in relus)


def distance(params: dict, features_a: tuple[jnp.ndarray, ...], features_b: tuple[jnp.ndarray, ...]) -> jnp.ndarray:
  """LPIPS distances (B,) between two batches of `features`."""
  return LinearHeads().apply({"params": params["heads"]}, tuple((a - b) ** 2 for a, b in zip(features_a, features_b)))


@jax.jit
def lpips(params: dict, images_a: jnp.ndarray, images_b: jnp.ndarray) -> jnp.ndarray:
  """LPIPS distances (B,) float32 between images (B, H, W, 3) in [-1, 1] (`signed_images` of uint8 frames)."""
  return distance(params, features(params, images_a), features(params, images_b))
