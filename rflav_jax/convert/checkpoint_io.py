"""Reading weight files without PyTorch: safetensors, PyTorch zip checkpoints, npz.

`read_checkpoint(path)` returns what the file holds with every tensor as a numpy array: a flat
{name: array} state dict for `model.safetensors` / `diffusion_pytorch_model.*`, or nested dicts for
files such as HiFi-GAN's `vocoder.pt` ({"generator": {...}, ...}).

PyTorch's `torch.save` format (torch >= 1.6) is a zip archive holding `<root>/data.pkl`, a pickle whose
tensors refer to raw little-endian storages `<root>/data/<key>`. The unpickler below rebuilds each tensor as
a numpy view of its storage and refuses every global it does not know, so reading a checkpoint never runs
code from the file.
"""
import collections
import json
import os
import pathlib
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class CheckpointFormatError(ValueError):
  """A weight file that cannot be read."""


def read_checkpoint(path: str | os.PathLike) -> Any:
  """Reads a .safetensors, .pt/.pth/.bin/.ckpt (PyTorch zip) or .npz file into numpy arrays."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file {path} does not exist")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return load_file(str(path))
  if path.suffix == ".npz":
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  if zipfile.is_zipfile(path):
    return _read_torch_zip(path)
  raise CheckpointFormatError(
      f"{path}: not a safetensors, npz or PyTorch zip checkpoint. Files written by torch < 1.6 use a legacy "
      "format; re-save them with a current torch (`torch.save(torch.load(f), f)`) or convert to safetensors.")


def find_weights(folder: pathlib.Path, weights: str | None = None) -> pathlib.Path:
  """The weight file in `folder`: `weights` if given, else the only file with a weight suffix (safetensors first)."""
  if weights:
    path = folder / weights
    if not path.is_file():
      raise FileNotFoundError(f"weight file {path} does not exist")
    return path
  candidates = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
  safetensors = [p for p in candidates if p.suffix == ".safetensors"]
  if len(safetensors) == 1:
    return safetensors[0]
  if len(candidates) != 1:
    raise FileNotFoundError(
        f"{folder}: expected one weight file ({', '.join(WEIGHT_SUFFIXES)}), found {[p.name for p in candidates]}; "
        "name the one to use with --weights")
  return candidates[0]


def read_config_json(folder: pathlib.Path) -> dict:
  path = folder / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: a release folder holds the constructor arguments in config.json")
  return json.loads(path.read_text())


def read_release(folder: str | os.PathLike, weights: str | None = None,
                 what: str = "release folder (weights + config.json)") -> tuple[Any, dict, pathlib.Path]:
  """(checkpoint, config.json dict, weight file path) of a release folder; `what` describes it in errors."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} does not exist; pass a {what}")
  config = read_config_json(folder)
  path = find_weights(folder, weights)
  return read_checkpoint(path), config, path


def _read_torch_zip(path: pathlib.Path) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise CheckpointFormatError(f"{path}: a PyTorch zip checkpoint holds one data.pkl, found {pickles}")
    root = pickles[0][: -len("data.pkl")]
    with archive.open(pickles[0]) as f:
      return _TorchUnpickler(f, archive, root, path).load()


class _StorageType:
  """Stands in for torch.FloatStorage and friends: only its dtype matters."""

  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *unused_args):
  """torch._utils._rebuild_tensor_v2: a strided view into a flat storage."""
  if not size:
    return storage[offset].copy()
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
  return np.ascontiguousarray(view)


def _rebuild_parameter(data, *unused_args):
  return data


def _rebuild_from_type(func, unused_type, args, unused_state):
  return func(*args)


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles torch.save's data.pkl into numpy arrays, allowing only known globals."""

  _GLOBALS = {
      ("collections", "OrderedDict"): collections.OrderedDict,
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
      ("torch", "Tensor"): None,
      ("torch.nn.parameter", "Parameter"): None,
  }

  def __init__(self, file, archive, root, path):
    super().__init__(file)
    self._archive, self._root, self._path = archive, root, path
    self._storages = {}

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[(module, name)]
    raise CheckpointFormatError(
        f"{self._path}: the pickle refers to {module}.{name}, which is not part of a plain state dict. Save only "
        "tensors and dicts (e.g. `torch.save(model.state_dict(), f)`) or convert the file to safetensors.")

  def persistent_load(self, pid):
    kind, storage_type, key, unused_location, numel = pid
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise CheckpointFormatError(f"{self._path}: unsupported storage reference {pid!r}")
    if key not in self._storages:
      raw = self._archive.read(f"{self._root}data/{key}")
      array = np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder("<"))
      if array.size < numel:
        raise CheckpointFormatError(f"{self._path}: storage {key} holds {array.size} values, expected {numel}")
      self._storages[key] = array
    return self._storages[key]
