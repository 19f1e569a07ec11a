"""Helpers of the AudioCLIP parity tests, shared with tools/make_audioclip_fixtures.py, which records the reference.

The random weights of the audio branch (30 M numbers) are not stored: both sides draw them from a seed, tensor by
tensor, keyed by the tensor's name in the reference state dict, so a name mapped to the wrong tensor cannot go
unnoticed. The Blackman-Harris window is a buffer, not a weight: both sides use scipy's.
"""
import zlib

import numpy as np
import scipy.signal

FIXTURE = "audioclip_fad.npz"
STEM_GAIN = 1e-2  # the stem sees dB values of order 100: its kernels are scaled down to keep activations of order 1


def random_audioclip_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """He-scaled kernels, BatchNorm near identity, FBSP filters with varied centre, bandwidth and window power."""
  rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
  leaf = name.rsplit(".", 1)[-1]
  if name == "window":
    return scipy.signal.get_window("blackmanharris", shape[0], fftbins=True).astype(np.float32)
  if leaf == "num_batches_tracked":
    return np.zeros(shape, np.int64)
  if name == "fbsp.m":
    return rng.uniform(0.2, 1.2, shape).astype(np.float32)
  if name == "fbsp.fb":
    return rng.uniform(0.5, 2.0, shape).astype(np.float32)
  if name == "fbsp.fc":
    return (np.arange(shape[0]) + rng.uniform(-0.5, 0.5, shape)).astype(np.float32)
  if name == "fbsp.bias":
    return np.zeros(shape, np.float32)  # empty: the layer has no bias
  if name.endswith("bn3.weight"):  # small residual branches: activations stay of order 1 through the 16 blocks
    return rng.uniform(0.1, 0.3, shape).astype(np.float32)
  if leaf == "running_var" or (leaf == "weight" and len(shape) == 1):
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)
  if leaf in ("running_mean", "bias"):
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)
  if leaf == "weight":
    gain = 1.0 if name == "fc.weight" else 2.0
    kernel = rng.standard_normal(shape) * np.sqrt(gain / np.prod(shape[1:]))
    return (kernel * (STEM_GAIN if name == "conv1.weight" else 1.0)).astype(np.float32)
  raise ValueError(f"no rule for AudioCLIP tensor {name}")


def random_audioclip_state_dict(names: list[str], shapes: list[tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
  """{name: array} in torch layouts for the given names (without the "audio." prefix) and shapes."""
  return {name: random_audioclip_tensor(name, tuple(shape), seed) for name, shape in zip(names, shapes)}
