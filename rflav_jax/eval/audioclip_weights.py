"""AudioCLIP's audio weights for `audioclip.ESResNeXtFBSP`, from `AudioCLIP-Full-Training.pt`.

The file (https://github.com/AndreyGuzhov/AudioCLIP/releases/download/v0.1/AudioCLIP-Full-Training.pt, the one
MM-Diffusion's evaluator downloads) is a PyTorch state dict of the whole AudioCLIP model; only its "audio.*" tensors
are read, with the torch-free `checkpoint_io.read_checkpoint`. A state dict of the audio network alone (names without
the prefix) loads too.

`load_audioclip_variables(path)` returns {"params": ..., "batch_stats": ...} for `ESResNeXtFBSP().apply`. Weights
of another network raise `AudioCLIPWeightsError` naming what is missing, unexpected or of the wrong shape.
"""
import functools
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from rflav_jax.convert import checkpoint_io
from rflav_jax.eval import audioclip

PREFIX = "audio."
DOWNLOAD = "https://github.com/AndreyGuzhov/AudioCLIP/releases/download/v0.1/AudioCLIP-Full-Training.pt"
_NORMS = ("bn", "bn1", "bn2", "bn3", "downsample_1")  # BatchNorm modules; the other modules are convolutions or fc
_NORM_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
                "running_var": ("batch_stats", "var")}


class AudioCLIPWeightsError(ValueError):
  """A weight file that does not hold AudioCLIP's audio network."""


@functools.cache
def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our variables' shapes by path, e.g. ("params", "layer1_0", "conv2", "kernel") -> (3, 3, 4, 128)."""
  abstract = jax.eval_shape(audioclip.ESResNeXtFBSP().init, jax.random.key(0), jnp.zeros((1, audioclip.WIN_LENGTH)))
  return {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}


def _our_path(name: str) -> tuple[str, ...]:
  """Our variable's path for a reference name: "layer1.0.downsample.1.running_var" -> ("batch_stats", "layer1_0",
  "downsample_1", "var"); the window, a buffer of the network there, is a parameter of our "fbsp" module."""
  if name == "window":
    return ("params", "fbsp", "window")
  *parts, leaf = name.split(".")
  modules = []
  for part in parts:
    if part.isdigit() and modules:
      modules[-1] += f"_{part}"
    else:
      modules.append(part)
  if modules and modules[-1] in _NORMS and leaf in _NORM_LEAVES:
    collection, ours = _NORM_LEAVES[leaf]
    return (collection, *modules, ours)
  return ("params", *modules, "kernel" if leaf == "weight" else leaf)


def _layout(array: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
  """torch layout -> ours: conv weights (out, in, h, w) -> (h, w, in, out), linear weights (out, in) -> (in, out)."""
  if path[-1] != "kernel":
    return array
  return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array.T


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  if path[-1] != "kernel":
    return shape
  return (shape[3], shape[2], *shape[:2]) if len(shape) == 4 else shape[::-1]


def _torch_name(path: tuple[str, ...]) -> str:
  """The reference's name of one of our variables."""
  if path == ("params", "fbsp", "window"):
    return "window"
  collection, *modules, leaf = path
  torch_leaf = next((k for k, v in _NORM_LEAVES.items() if v == (collection, leaf)), None)
  if modules[-1] not in _NORMS or torch_leaf is None:
    torch_leaf = {"kernel": "weight"}.get(leaf, leaf)
  return ".".join([re.sub(r"_(\d+)$", r".\1", m) for m in modules] + [torch_leaf])


def from_torch_state_dict(state: dict[str, np.ndarray], source: str = "state dict") -> dict:
  """Our variables from AudioCLIP's state dict ("audio.*" names) or its audio network's ({name: array})."""
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise AudioCLIPWeightsError(f"{source}: holds a {type(state).__name__} of more than tensors, not a state dict")
  if any(k.startswith(PREFIX) for k in state):
    state = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
  expected = _expected_shapes()
  found = {}
  for name, array in state.items():
    # AudioCLIP's FBSP layer has no bias; an empty parameter stands in for it.
    if name.endswith("num_batches_tracked") or (name == "fbsp.bias" and array.size == 0):
      continue
    found[_our_path(name)] = (name, array)
  missing = sorted(_torch_name(p) for p in expected if p not in found)
  unexpected = sorted(name for p, (name, _) in found.items() if p not in expected)
  wrong = sorted(f"{name} {array.shape} where {_torch_shape(p, expected[p])} is expected"
                 for p, (name, array) in found.items() if p in expected and _layout(array, p).shape != expected[p])
  if missing or unexpected or wrong:
    problems = [f"{len(v)} {k} (e.g. {v[0]})" for k, v in
                (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)) if v]
    raise AudioCLIPWeightsError(f"{source}: not AudioCLIP's audio network (ESResNeXt-fbsp, {PREFIX}* of "
                                f"AudioCLIP-Full-Training.pt): of its {len(expected)} tensors, {'; '.join(problems)}")
  variables = {}
  for path, (_, array) in found.items():
    node = variables
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(_layout(array, path), jnp.float32)
  return variables


def load_audioclip_variables(path: str | os.PathLike) -> dict:
  """AudioCLIP's audio variables from `AudioCLIP-Full-Training.pt` (or any torch/safetensors/npz state dict)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"AudioCLIP weights {path} do not exist; download them from {DOWNLOAD}")
  return from_torch_state_dict(checkpoint_io.read_checkpoint(path), str(path))
