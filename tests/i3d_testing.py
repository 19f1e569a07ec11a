"""Helpers of the I3D parity tests, shared with tools/make_eval_fixtures.py, which records the reference numbers.

The random I3D weights (12.7 M numbers, 50 MB) are not stored: both sides draw them from a seed, tensor by tensor,
keyed by the tensor's name in MM-Diffusion's state dict, so a name mapped to the wrong tensor cannot go unnoticed.
"""
import zlib

import numpy as np

FIXTURE = "mm_diffusion_fvd.npz"
ODD_UPSAMPLE = 8  # the odd-sized clip is stored small and repeated 8x along height and width


def random_i3d_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """Weights that keep activations of order 1 through the network: He-scaled kernels, BatchNorm near identity."""
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  if name.endswith("num_batches_tracked"):
    return np.zeros(shape, np.int64)
  if name.endswith("conv3d.weight"):
    gain = 1.0 if name.startswith("logits.") else 2.0
    return (rng.standard_normal(shape) * np.sqrt(gain / np.prod(shape[1:]))).astype(np.float32)
  if name.endswith(("bn.weight", "bn.running_var")):
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  if name.endswith(("bn.bias", "bn.running_mean", "conv3d.bias")):
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)
  raise ValueError(f"no rule for I3D tensor {name}")


def random_i3d_state_dict(names: list[str], shapes: list[tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
  """{name: array} in torch layouts for the given names and shapes."""
  return {name: random_i3d_tensor(name, tuple(shape), seed) for name, shape in zip(names, shapes)}


def odd_clip(codes: np.ndarray) -> np.ndarray:
  """The odd-sized network input (B, T, 8h, 8w, 3) in [-1, 1] from uint8 codes (B, T, h, w, 3)."""
  video = np.repeat(np.repeat(codes, ODD_UPSAMPLE, axis=2), ODD_UPSAMPLE, axis=3)
  return video.astype(np.float32) / np.float32(127.5) - np.float32(1)
