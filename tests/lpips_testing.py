"""Helpers of the LPIPS parity tests, shared with tools/make_lpips_fixtures.py, which records the reference numbers.

The random LPIPS weights (2.5 M numbers) are not stored: both sides draw them from a seed, tensor by tensor, keyed
by the tensor's name in lpips.LPIPS(net='alex')'s state dict, so a name mapped to the wrong tensor cannot go
unnoticed.
"""
import zlib

import numpy as np

FIXTURE = "lpips_reference.npz"
# lpips.LPIPS(net='alex')'s learned tensors: AlexNet's convolutions (out, in, k, k) and the five 1x1 heads.
CONVS = {"net.slice1.0": (64, 3, 11, 11), "net.slice2.3": (192, 64, 5, 5), "net.slice3.6": (384, 192, 3, 3),
         "net.slice4.8": (256, 384, 3, 3), "net.slice5.10": (256, 256, 3, 3)}
HEADS = {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate((64, 192, 384, 256, 256))}


def random_lpips_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """He-scaled kernels, small biases and non-negative heads (as the trained ones are)."""
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  if name.endswith("model.1.weight"):
    return rng.uniform(0, 0.2, shape).astype(np.float32)
  if name.endswith(".weight"):
    return (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)
  if name.endswith(".bias"):
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)
  raise ValueError(f"no rule for LPIPS tensor {name}")


def random_lpips_state_dict(seed: int) -> dict[str, np.ndarray]:
  """{name: array} of lpips.LPIPS(net='alex')'s learned tensors, in torch layouts."""
  shapes = {**{f"{k}.weight": s for k, s in CONVS.items()}, **{f"{k}.bias": s[:1] for k, s in CONVS.items()}, **HEADS}
  return {name: random_lpips_tensor(name, shape, seed) for name, shape in shapes.items()}


def smooth_images(rng: np.random.Generator, count: int, size: int, cell: int = 8) -> np.ndarray:
  """uint8 images (count, size, size, 3): random colours on a grid of cell x cell blocks, plus pixel noise."""
  cells = -(-size // cell)
  coarse = rng.uniform(0, 255, (count, cells, cells, 3))
  images = np.repeat(np.repeat(coarse, cell, axis=1), cell, axis=2)[:, :size, :size]
  return np.clip(images + rng.normal(0, 8, images.shape), 0, 255).astype(np.uint8)
