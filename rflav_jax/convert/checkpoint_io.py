"""Reading weight files without PyTorch, trusting nothing in them: safetensors, PyTorch zip checkpoints, npz.

`read_checkpoint(path)` returns what the file holds with every tensor as a numpy array: a flat
{name: array} state dict for `model.safetensors` / `diffusion_pytorch_model.*`, or nested dicts for
files such as HiFi-GAN's `vocoder.pt` ({"generator": {...}, ...}). A file that is truncated, damaged or
hostile raises `CheckpointFormatError` naming the file, the tensor where there is one, and what is wrong.

safetensors files are read by the safetensors library, which checks the whole header against the file before it
reads any data: every tensor must span exactly shape x itemsize bytes and together they must tile the data.

PyTorch's `torch.save` format (torch >= 1.6) is a zip archive of stored (uncompressed) members: `<root>/data.pkl`,
a pickle whose tensors refer to raw storages `<root>/data/<key>`. The unpickler below accepts only the opcodes
and globals a state dict needs, so reading never runs code from the file; each tensor's offset, size and stride
are checked against its storage before a view of it is made. Tensors share their storage's memory, as in torch.
"""
import io
import json
import os
import pathlib
import pickle
import pickletools
import struct
import zipfile
from typing import Any

import ml_dtypes  # also lets numpy resolve the name 'bfloat16', as the safetensors reader asks it to
import numpy as np
import safetensors

from rflav_jax.errors import CheckpointFormatError

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "ComplexDoubleStorage": np.complex128,
    "ComplexFloatStorage": np.complex64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# The safetensors library's numpy path asks numpy for these by attribute (numpy.float8_e4m3fn), which numpy lacks;
# they are read at their header offsets once the library has checked the header (_read_float8).
_FLOAT8_DTYPES = {"F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2}
_ZIP_MAGIC = b"PK\x03\x04"
# torch < 1.6 (or _use_new_zipfile_serialization=False) starts with the pickled magic number 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e"
_MAX_NESTING = 100
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def read_checkpoint(path: str | os.PathLike) -> Any:
  """Reads a .safetensors, .pt/.pth/.bin/.ckpt (PyTorch zip) or .npz file into numpy arrays."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint file {path} does not exist")
  if path.suffix == ".safetensors":
    return _read_safetensors(path)
  with open(path, "rb") as f:
    head = f.read(len(_LEGACY_TORCH_MAGIC))
  if head.startswith(_ZIP_MAGIC) and not zipfile.is_zipfile(path):
    raise CheckpointFormatError(
        f"{path}: truncated: the zip archive has no end record ({path.stat().st_size} bytes); copy or download the "
        "file again")
  if path.suffix == ".npz":
    return _read_npz(path)
  if zipfile.is_zipfile(path):
    return _read_torch_zip(path)
  if head == _LEGACY_TORCH_MAGIC:
    raise CheckpointFormatError(
        f"{path}: written in torch's legacy format (torch < 1.6 or _use_new_zipfile_serialization=False), which "
        "this reader does not support; re-save it with a current torch (`torch.save(torch.load(f), f)`) or convert "
        "it to safetensors.")
  raise CheckpointFormatError(f"{path}: not a safetensors, npz or PyTorch zip checkpoint (starts with {head[:8]!r})")


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


def read_config_json(folder: pathlib.Path, what: str = "release folder (weights + config.json)") -> dict:
  """The config.json dict of a release folder; `what` describes the folder in errors."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} does not exist; pass a {what}")
  path = folder / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: a release folder holds the constructor arguments in config.json")
  try:
    config = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise CheckpointFormatError(f"{path}: unreadable JSON ({error})") from None
  if not isinstance(config, dict):
    raise CheckpointFormatError(f"{path}: holds a JSON {type(config).__name__}, expected an object of arguments")
  return config


def read_release(folder: str | os.PathLike, weights: str | None = None,
                 what: str = "release folder (weights + config.json)") -> tuple[Any, dict, pathlib.Path]:
  """(checkpoint, config.json dict, weight file path) of a release folder; `what` describes it in errors."""
  config = read_config_json(folder, what)
  path = find_weights(pathlib.Path(folder), weights)
  return read_checkpoint(path), config, path


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
    raise CheckpointFormatError(f"{path}: damaged npz archive ({error})") from None


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  """{name: array} through the safetensors library's numpy reader; BF16 comes back as ml_dtypes.bfloat16."""
  try:
    with safetensors.safe_open(path, framework="np") as f:  # checks the header against the file
      dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
      arrays = {name: _numpy_tensor(f, name, dtype, path) for name, dtype in dtypes.items()
                if dtype not in _FLOAT8_DTYPES}
  except safetensors.SafetensorError as error:
    raise CheckpointFormatError(f"{path}: truncated or damaged safetensors file ({path.stat().st_size} bytes): "
                                f"{error}; copy or download the file again") from None
  float8 = {name: dtype for name, dtype in dtypes.items() if dtype in _FLOAT8_DTYPES}
  return {**arrays, **_read_float8(path, float8)} if float8 else arrays


def _numpy_tensor(f, name: str, dtype: str, path: pathlib.Path) -> np.ndarray:
  try:
    return f.get_tensor(name)
  except (AttributeError, TypeError):  # numpy has no type of that name
    raise CheckpointFormatError(
        f"{path}: tensor {name!r} is {dtype}, which this reader does not support (float, integer, BF16, "
        f"{', '.join(_FLOAT8_DTYPES)}); save it in one of those") from None


def _read_float8(path: pathlib.Path, dtypes: dict[str, str]) -> dict[str, np.ndarray]:
  """The float8 tensors `dtypes` names, at the offsets of a header that safe_open has already checked."""
  with open(path, "rb") as f:
    header_size = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(header_size))
  arrays = {}
  for name, dtype in dtypes.items():
    (begin, end), shape = header[name]["data_offsets"], header[name]["shape"]
    arrays[name] = np.fromfile(path, _FLOAT8_DTYPES[dtype], end - begin, offset=8 + header_size + begin).reshape(shape)
  return arrays


def _is_index_list(values: Any) -> bool:
  return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _read_torch_zip(path: pathlib.Path) -> Any:
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, struct.error) as error:
    raise CheckpointFormatError(f"{path}: damaged zip archive ({error})") from None
  with archive:
    infos = archive.infolist()
    names = [info.filename for info in infos]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
      raise CheckpointFormatError(f"{path}: the archive holds several members named {duplicates}")
    pickles = [n for n in names if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise CheckpointFormatError(f"{path}: a PyTorch zip checkpoint holds one data.pkl, found {pickles}")
    root = pickles[0][: -len("data.pkl")]
    reader = _ZipReader(archive, path)
    byteorder = reader.read(f"{root}byteorder").decode("ascii", "replace") if f"{root}byteorder" in names else "little"
    if byteorder not in ("little", "big"):
      raise CheckpointFormatError(f"{path}: {root}byteorder holds {byteorder!r}, expected 'little' or 'big'")
    unpickler = _TorchUnpickler(io.BytesIO(reader.read(pickles[0])), path)
    try:
      loaded = unpickler.load()
    except CheckpointFormatError:
      raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, OverflowError) as error:
      raise CheckpointFormatError(
          f"{path}: {pickles[0]} is not a plain state dict pickle: {type(error).__name__}: {error}") from None
    storages = _Storages(reader, root, "<" if byteorder == "little" else ">", path)
    return _materialise(loaded, "", storages, 0)


class _ZipReader:
  """Reads whole stored members of a zip archive, checking their sizes and CRCs."""

  def __init__(self, archive: zipfile.ZipFile, path: pathlib.Path):
    self._archive, self._path = archive, path
    self._file_size = path.stat().st_size

  def read(self, name: str, buffer: bytearray | None = None) -> bytearray:
    """The member's bytes (into `buffer` when given, which must have the member's size)."""
    info = self._archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
      raise CheckpointFormatError(f"{self._path}: member {name} is compressed or encrypted; torch.save stores members")
    if info.compress_size != info.file_size or info.header_offset + info.file_size > self._file_size:
      raise CheckpointFormatError(f"{self._path}: member {name} declares {info.file_size} bytes past the end of the "
                                  f"{self._file_size}-byte file; truncated or damaged")
    buffer = bytearray(info.file_size) if buffer is None else buffer
    try:
      with self._archive.open(info) as f:
        if f.readinto(buffer) != len(buffer) or f.read(1):
          raise CheckpointFormatError(f"{self._path}: member {name} is shorter or longer than its header says")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, struct.error) as error:
      raise CheckpointFormatError(f"{self._path}: member {name} is damaged ({error})") from None
    return buffer

  def size(self, name: str) -> int | None:
    try:
      return self._archive.getinfo(name).file_size
    except KeyError:
      return None


class _StorageType:
  """Stands in for torch.FloatStorage and friends: only its dtype matters."""

  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _StorageRef:
  """A storage named by the pickle: archive key, element type and element count."""

  def __init__(self, key: str, storage_type: _StorageType, numel: int):
    self.key, self.storage_type, self.numel = key, storage_type, numel


class _TensorRecord:
  """torch._utils._rebuild_tensor_v2's arguments, turned into an array once its name is known."""

  def __init__(self, storage, offset, size, stride, *unused_args):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Storages:
  """The archive's storages as flat numpy arrays, read once each."""

  def __init__(self, reader: _ZipReader, root: str, byteorder: str, path: pathlib.Path):
    self._reader, self._root, self._byteorder, self.path = reader, root, byteorder, path
    self._arrays = {}

  def get(self, ref: _StorageRef, tensor: str) -> np.ndarray:
    if ref.key in self._arrays:
      return self._arrays[ref.key]
    member = f"{self._root}data/{ref.key}"
    nbytes, itemsize = self._reader.size(member), ref.storage_type.dtype.itemsize
    where = f"{self.path}: tensor {tensor!r}: storage {ref.key}"
    if nbytes is None:
      raise CheckpointFormatError(f"{where}: the archive has no record {member}")
    if nbytes % itemsize:
      raise CheckpointFormatError(f"{where} holds {nbytes} bytes, not a multiple of {ref.storage_type.name}'s "
                                  f"{itemsize}")
    if nbytes != ref.numel * itemsize:
      raise CheckpointFormatError(f"{where} holds {nbytes // itemsize} values, the pickle declares {ref.numel}")
    array = np.frombuffer(self._reader.read(member), ref.storage_type.dtype.newbyteorder(self._byteorder))
    self._arrays[ref.key] = array
    return array


def _materialise(obj: Any, name: str, storages: _Storages, depth: int) -> Any:
  """`obj` with every _TensorRecord replaced by a checked view of its storage; `name` is obj's path in errors."""
  if depth > _MAX_NESTING:
    raise CheckpointFormatError(f"{storages.path}: {name!r} is nested more than {_MAX_NESTING} levels deep")
  if isinstance(obj, _TensorRecord):
    return _tensor_view(obj, name, storages)
  if isinstance(obj, dict):
    return {k: _materialise(v, f"{name}.{k}" if name else str(k), storages, depth + 1) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    items = [_materialise(v, f"{name}[{i}]", storages, depth + 1) for i, v in enumerate(obj)]
    return items if isinstance(obj, list) else tuple(items)
  if isinstance(obj, (str, bytes, int, float, complex, type(None))):
    return obj
  raise CheckpointFormatError(f"{storages.path}: {name!r} is a {type(obj).__name__}, not data")


def _tensor_view(record: _TensorRecord, name: str, storages: _Storages) -> np.ndarray:
  """The tensor as a view of its storage, after checking offset, size and stride against the storage's length."""
  where = f"{storages.path}: tensor {name!r}"
  ref, offset, size, stride = record.storage, record.offset, record.size, record.stride
  if not isinstance(ref, _StorageRef):
    raise CheckpointFormatError(f"{where}: its storage is a {type(ref).__name__}, not a storage record")
  if not (isinstance(size, tuple) and isinstance(stride, tuple) and _is_index_list([offset, *size, *stride])
          and len(size) == len(stride) <= 32):
    raise CheckpointFormatError(f"{where}: invalid offset {offset!r}, size {size!r} or stride {stride!r} "
                                "(non-negative integers, one stride per dimension, at most 32)")
  storage = storages.get(ref, name)
  if 0 in size:
    return np.zeros(size, storage.dtype)
  end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
  if end > storage.size:
    raise CheckpointFormatError(f"{where}: offset {offset}, size {size} and stride {stride} reach element {end - 1} "
                                f"of storage {ref.key}, which holds {storage.size}")
  itemsize = storage.dtype.itemsize
  return np.ndarray(size, storage.dtype, storage, offset * itemsize, tuple(s * itemsize for s in stride))


# The opcodes torch.save's protocol-2 pickles (and plain data in later protocols) use; no object construction.
_ALLOWED_OPCODES = frozenset((
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE",
    "BININT", "BININT1", "BININT2", "LONG1", "LONG4", "BINFLOAT",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "APPEND", "APPENDS", "LIST",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "GLOBAL", "STACK_GLOBAL", "REDUCE", "BINPERSID", "BUILD",
    "BINPUT", "LONG_BINPUT", "MEMOIZE", "BINGET", "LONG_BINGET"))
_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}


class _OpcodeTable(dict):
  """pickle._Unpickler's dispatch table restricted to _ALLOWED_OPCODES; others raise."""

  def __missing__(self, code):
    raise pickle.UnpicklingError(f"opcode {_OPCODE_NAMES.get(code, hex(code))}, which a state dict does not use")


def _rebuild_parameter(data, *unused_args):
  return data


def _rebuild_from_type(func, unused_type, args, unused_state):
  return func(*args)


class _TorchUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """Unpickles torch.save's data.pkl into containers of _TensorRecords, allowing only known opcodes and globals.

  Built on the pure-Python unpickler so that opcodes can be refused and dict items checked one by one.
  """

  dispatch = _OpcodeTable({code: load for code, load in pickle._Unpickler.dispatch.items()  # pylint: disable=protected-access
                           if _OPCODE_NAMES[code] in _ALLOWED_OPCODES})
  _GLOBALS = {
      ("collections", "OrderedDict"): dict,
      ("torch._utils", "_rebuild_tensor_v2"): _TensorRecord,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
      ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
      ("torch", "Tensor"): None,
      ("torch.nn.parameter", "Parameter"): None,
  }

  def __init__(self, file, path: pathlib.Path):
    super().__init__(file)
    self._path = path
    self._storages = {}

  def find_class(self, module, name):
    if module == "torch" and name.endswith("Storage"):
      if name not in _STORAGE_DTYPES:
        raise CheckpointFormatError(f"{self._path}: tensors of torch.{name} are not supported; supported: "
                                    f"{', '.join(_STORAGE_DTYPES)}")
      return _StorageType(name)
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[(module, name)]
    raise CheckpointFormatError(
        f"{self._path}: the pickle refers to {module}.{name}, which is not part of a plain state dict. Save only "
        "tensors and dicts (e.g. `torch.save(model.state_dict(), f)`) or convert the file to safetensors.")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str) and _is_index_list([pid[4]])):
      raise CheckpointFormatError(f"{self._path}: unsupported storage reference {pid!r}")
    _, storage_type, key, _, numel = pid
    ref = self._storages.setdefault(key, _StorageRef(key, storage_type, numel))
    if (ref.storage_type.name, ref.numel) != (storage_type.name, numel):
      raise CheckpointFormatError(f"{self._path}: storage {key} is referred to as {ref.numel} x {ref.storage_type.name} "
                                  f"and as {numel} x {storage_type.name}")
    return ref

  def load_setitem(self):
    value, key = self.stack.pop(), self.stack.pop()
    self._set_item(key, value)

  def load_setitems(self):
    items = self.pop_mark()
    for i in range(0, len(items) - 1, 2):
      self._set_item(items[i], items[i + 1])

  def load_build(self):
    """BUILD sets attributes: allowed only on dicts (a state dict's `_metadata`, which is dropped)."""
    self.stack.pop()
    if not isinstance(self.stack[-1], dict):
      raise CheckpointFormatError(f"{self._path}: the pickle sets the state of a {type(self.stack[-1]).__name__}")

  def _set_item(self, key, value):
    target = self.stack[-1]
    if not isinstance(target, dict):
      raise CheckpointFormatError(f"{self._path}: the pickle sets an item of a {type(target).__name__}")
    if key in target:
      raise CheckpointFormatError(f"{self._path}: the name {key!r} appears twice in one dict")
    target[key] = value

  dispatch[pickle.SETITEM[0]] = load_setitem
  dispatch[pickle.SETITEMS[0]] = load_setitems
  dispatch[pickle.BUILD[0]] = load_build
