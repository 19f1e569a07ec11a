"""Damaged and hostile weight files are refused with CheckpointFormatError; user mix-ups are named; the CLI says so.

The fuzz test loads hundreds of mutated files in a subprocess (a crash fails the test instead of killing pytest)
and compares every outcome with an independent truth: the unmutated file, an element-by-element reading of a
rewritten pickle, or the safetensors library.
"""
import collections
import io
import json
import pathlib
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from helpers import digest, fixture_release, load_fixture
from rflav_jax import model_folder
from rflav_jax.convert import convert_release, load_flav, load_sdvae, load_vocoder
from rflav_jax.convert.checkpoint_io import CheckpointFormatError, read_checkpoint

torch = pytest.importorskip("torch", reason="torch (a test extra: requirements-test.txt) writes the .pt files")
REPO = pathlib.Path(__file__).resolve().parents[1]


class _Storage:
  def __init__(self, key, storage_type, numel):
    self.key, self.storage_type, self.numel = key, storage_type, numel


class _Tensor:
  """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def __reduce__(self):
    return torch._utils._rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False,  # pylint: disable=protected-access
                                             collections.OrderedDict())


class _Items:
  """Pickles as an OrderedDict filled from `pairs`, duplicates included."""

  def __init__(self, pairs):
    self.pairs = pairs

  def __reduce__(self):
    return collections.OrderedDict, (), None, None, iter(self.pairs)


class _Pickler(pickle.Pickler):
  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
    return None


# name -> (storage key, offset, size, stride); storages: key -> values.
STORAGES = {"0": np.arange(12, dtype=np.float32) * 1.5, "1": np.arange(-3, 5, dtype=np.int64),
            "2": np.array([0.5, -2.0, 4.25], np.float16)}
SPECS = {"w": ("0", 2, (2, 3), (4, 1)), "t": ("0", 0, (3, 2), (1, 3)), "i": ("1", 1, (5,), (1,)),
         "h": ("2", 0, (), ()), "e": ("1", 0, (2, 0), (1, 1))}
_TYPES = {np.float32: "FloatStorage", np.int64: "LongStorage", np.float16: "HalfStorage"}


def write_torch_zip(path, specs, storages=STORAGES, numels=None, pairs=None, record_bytes=None, types=None):
  """A torch.save-format zip whose data.pkl holds {name: tensor per `specs`} (or `pairs`, duplicates allowed)."""
  refs = {k: _Storage(k, (types or {}).get(k, getattr(torch, _TYPES[v.dtype.type])), (numels or {}).get(k, v.size))
          for k, v in storages.items()}
  refs["99"] = _Storage("99", torch.FloatStorage, 4)  # named by a spec, absent from the archive
  tensors = [(name, _Tensor(refs[key], offset, size, stride)) for name, (key, offset, size, stride) in specs.items()]
  buffer = io.BytesIO()
  _Pickler(buffer, protocol=2).dump(_Items(pairs or tensors))
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("archive/data.pkl", buffer.getvalue())
    archive.writestr("archive/byteorder", "little")
    for key, values in storages.items():
      archive.writestr(f"archive/data/{key}", (record_bytes or {}).get(key, values.tobytes()))
    archive.writestr("archive/version", "3\n")


def element_by_element(spec, storages=STORAGES):
  """The tensor a (key, offset, size, stride) spec describes, read one element at a time; None if out of bounds."""
  key, offset, size, stride = spec
  if key not in storages:
    return None
  storage = storages[key]
  if 0 in size:
    return np.zeros(size, storage.dtype)
  if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
    return None
  return np.array([storage[offset + sum(i * s for i, s in zip(index, stride))] for index in np.ndindex(*size)],
                  storage.dtype).reshape(size)


_LOADER = """
import hashlib, json, pathlib, sys
sys.path.insert(0, sys.argv[2])
from helpers import digest
from rflav_jax.convert.checkpoint_io import CheckpointFormatError, read_checkpoint
results = {}
for path in sorted(pathlib.Path(sys.argv[1]).iterdir()):
  print(path.name, file=sys.stderr, flush=True)
  try:
    results[path.name] = {"loaded": digest(read_checkpoint(path))}
  except Exception as error:  # recorded; the test fails on anything but CheckpointFormatError
    results[path.name] = {"error": type(error).__name__, "message": str(error)}
print(json.dumps(results))
"""


@pytest.mark.slow
def test_fuzzed_files_load_exactly_or_raise_checkpoint_format_error(tmp_path):
  rng = np.random.default_rng(0)
  mutants, expected = tmp_path / "mutants", {}  # file name -> digest, "error" or "truncated"
  mutants.mkdir()

  # 1. A real torch.save file: truncations and flipped bytes (zip CRCs guard every member).
  tensors = {"f32": torch.randn(3, 4), "strided": torch.randn(4, 3).t(), "i64": torch.arange(5),
             "f16": torch.randn(2, 2).half(), "bf16": torch.randn(3).bfloat16(), "scalar": torch.tensor(3.5),
             "slice": torch.randn(10)[2:7], "tied": None}
  tensors["tied"] = tensors["slice"][1:3]
  torch.save({"generator": tensors, "step": 7}, tmp_path / "orig.pt")
  original = (tmp_path / "orig.pt").read_bytes()
  loaded = read_checkpoint(tmp_path / "orig.pt")
  for name, tensor in tensors.items():
    np.testing.assert_array_equal(loaded["generator"][name].astype(np.float64), tensor.float().numpy())
  for i, cut in enumerate(rng.choice(np.arange(4, len(original)), 60, replace=False)):
    (mutants / f"pt_cut_{i:03d}.pt").write_bytes(original[:cut])
    expected[f"pt_cut_{i:03d}.pt"] = "truncated"
  for i, position in enumerate(rng.choice(len(original), 120, replace=False)):
    data = bytearray(original)
    data[position] ^= int(rng.integers(1, 256))
    (mutants / f"pt_flip_{i:03d}.pt").write_bytes(bytes(data))
    expected[f"pt_flip_{i:03d}.pt"] = digest(loaded)

  # 2. Hand-written pickles with rewritten offsets, sizes, strides, storages and storage records.
  write_torch_zip(tmp_path / "hand.pt", SPECS)
  truth = {name: element_by_element(spec) for name, spec in SPECS.items()}
  by_torch = torch.load(tmp_path / "hand.pt", weights_only=True)
  for name, values in truth.items():
    np.testing.assert_array_equal(by_torch[name].numpy(), values)
  np.testing.assert_equal(read_checkpoint(tmp_path / "hand.pt"), truth)
  huge = [2 ** 40, 2 ** 62, 4096]
  for i in range(100):
    specs = dict(SPECS)
    name = str(rng.choice(list(SPECS)))
    key, offset, size, stride = specs[name]
    field = rng.integers(4)
    if field == 0:
      offset = int(rng.choice([rng.integers(16), rng.choice(huge)]))
    elif field == 1 and size:
      size = tuple(int(rng.choice([rng.integers(8), rng.choice(huge)])) if rng.random() < 0.5 else n for n in size)
    elif field == 2 and size:
      stride = tuple(int(rng.choice([rng.integers(6), rng.choice(huge)])) if rng.random() < 0.5 else s
                     for s in stride)
    else:
      key = str(rng.choice(["0", "1", "2", "99"]))
    specs[name] = (key, offset, size, stride)
    write_torch_zip(mutants / f"pkl_{i:03d}.pt", specs)
    truths = {n: element_by_element(s) for n, s in specs.items()}
    expected[f"pkl_{i:03d}.pt"] = "error" if any(v is None for v in truths.values()) else digest(truths)
  broken = {"numel": dict(numels={"0": 11}), "bytes": dict(record_bytes={"0": STORAGES["0"].tobytes() + b"x"}),
            "duplicate": dict(pairs=[("a", _Tensor(_Storage("1", torch.LongStorage, 8), 0, (2,), (1,)))] * 2)}
  for what, kwargs in broken.items():
    write_torch_zip(mutants / f"pkl_{what}.pt", SPECS, **kwargs)
    expected[f"pkl_{what}.pt"] = "error"

  # 3. safetensors written by the library: truncations, header lengths and JSON headers rewritten.
  arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.arange(5, dtype=np.int16),
            "c": np.ones((2, 2, 2), np.float64)}
  save_file(arrays, str(tmp_path / "orig.safetensors"))
  original = (tmp_path / "orig.safetensors").read_bytes()
  np.testing.assert_equal(read_checkpoint(tmp_path / "orig.safetensors"), arrays)
  header_size = struct.unpack("<Q", original[:8])[0]
  header = json.loads(original[8:8 + header_size])
  for i, cut in enumerate(rng.choice(len(original), 40, replace=False)):
    (mutants / f"st_cut_{i:03d}.safetensors").write_bytes(original[:cut])
    expected[f"st_cut_{i:03d}.safetensors"] = "truncated"
  for i in range(20):
    data = bytearray(original)
    data[int(rng.integers(8))] ^= int(rng.integers(1, 256))
    (mutants / f"st_len_{i:03d}.safetensors").write_bytes(bytes(data))
    expected[f"st_len_{i:03d}.safetensors"] = "error"
  for i in range(30):
    rewritten = json.loads(json.dumps(header))
    entry = rewritten[str(rng.choice(list(arrays)))]
    field = rng.integers(3)
    if field == 0:
      entry["shape"][int(rng.integers(len(entry["shape"])))] = int(rng.integers(6))
    elif field == 1:
      entry["data_offsets"][int(rng.integers(2))] += int(rng.choice([-8, -2, 2, 8, 2 ** 40]))
    else:
      entry["dtype"] = str(rng.choice(["F32", "F16", "I16", "F64", "U8", "I64", "X9"]))
    text = json.dumps(rewritten).encode()
    data = struct.pack("<Q", len(text)) + text + original[8 + header_size:]
    (mutants / f"st_json_{i:03d}.safetensors").write_bytes(data)
    try:
      expected[f"st_json_{i:03d}.safetensors"] = digest(load_file(str(mutants / f"st_json_{i:03d}.safetensors")))
    except Exception:  # pylint: disable=broad-except
      expected[f"st_json_{i:03d}.safetensors"] = "error"
  text = original[8:8 + header_size].replace(b'"b":', b'"a":')
  (mutants / "st_duplicate.safetensors").write_bytes(original[:8] + text + original[8 + header_size:])
  expected["st_duplicate.safetensors"] = "error"

  assert len(expected) >= 300
  run = subprocess.run([sys.executable, "-c", _LOADER, str(mutants), str(pathlib.Path(__file__).parent)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
  assert run.returncode == 0, f"the reader crashed on {run.stderr.splitlines()[-1:]}: {run.stderr[-2000:]}"
  results = json.loads(run.stdout.splitlines()[-1])
  counts = collections.Counter()
  for name, want in expected.items():
    got = results[name]
    if "loaded" in got:
      assert got["loaded"] == want, f"{name} loaded other values"
      counts["loaded exactly (unchanged file)" if name.startswith("pt_flip") else "loaded exactly (rewritten)"] += 1
    else:
      damaged = name.startswith("pt_flip")  # may load unchanged or be refused; valid rewrites must load
      assert got["error"] == "CheckpointFormatError" and (want in ("error", "truncated") or damaged), (name, got)
      assert name in got["message"]
      if want == "truncated":
        assert "truncated" in got["message"], (name, got["message"])
      counts["CheckpointFormatError"] += 1
  print(dict(counts), "of", len(expected))
  assert counts["CheckpointFormatError"] >= 200 and counts["loaded exactly (unchanged file)"] >= 20


@pytest.mark.parametrize("spec, problem", [
    (("2", 0, (4096,), (1,)), "reach element 4095 of storage 2, which holds 3"),
    (("0", 12, (1,), (1,)), "reach element 12 of storage 0, which holds 12"),
    (("0", 0, (2, 2), (2 ** 62, 1)), "reach element"),
    (("0", -1, (2,), (1,)), "invalid offset -1"),
    (("99", 0, (2,), (1,)), "no record archive/data/99"),
])
def test_out_of_bounds_tensors_are_refused_naming_file_and_tensor(tmp_path, spec, problem):
  write_torch_zip(tmp_path / "bad.pt", {**SPECS, "bad": spec})
  with pytest.raises(CheckpointFormatError, match=rf"bad.pt: tensor 'bad'.*{problem}"):
    read_checkpoint(tmp_path / "bad.pt")


def test_storage_records_and_pickles_outside_a_state_dict_are_refused(tmp_path):
  write_torch_zip(tmp_path / "odd.pt", SPECS, record_bytes={"0": STORAGES["0"].tobytes() + b"x"})
  with pytest.raises(CheckpointFormatError, match="odd.pt: tensor '[wt]': storage 0 holds 49 bytes, not a multiple"):
    read_checkpoint(tmp_path / "odd.pt")
  write_torch_zip(tmp_path / "dup.pt", SPECS, pairs=[("a", 1), ("a", 2)])
  with pytest.raises(CheckpointFormatError, match="dup.pt: .*the name 'a' appears twice"):
    read_checkpoint(tmp_path / "dup.pt")
  with zipfile.ZipFile(tmp_path / "inst.pt", "w") as archive:  # protocol 0: INST builds an object
    archive.writestr("archive/data.pkl", pickle.dumps(collections.Counter(), protocol=0).replace(b"c", b"i", 1))
  with pytest.raises(CheckpointFormatError, match="inst.pt: archive/data.pkl is not a plain state dict pickle"):
    read_checkpoint(tmp_path / "inst.pt")
  with zipfile.ZipFile(tmp_path / "complex.pt", "w") as archive:
    archive.writestr("archive/data.pkl", pickle.dumps(1j))
  with pytest.raises(CheckpointFormatError, match="complex.pt: the pickle refers to builtins.complex"):
    read_checkpoint(tmp_path / "complex.pt")
  write_torch_zip(tmp_path / "quint8.pt", SPECS, types={"1": torch.QUInt8Storage})
  with pytest.raises(CheckpointFormatError, match="quint8.pt: tensors of torch.QUInt8Storage are not supported"):
    read_checkpoint(tmp_path / "quint8.pt")


def test_state_dicts_with_metadata_and_shared_storages_load_as_torch_does(tmp_path):
  module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
  state_dict = module.state_dict()
  state_dict["tied"] = state_dict["0.weight"][1]
  torch.save(state_dict, tmp_path / "sd.pt")
  loaded = read_checkpoint(tmp_path / "sd.pt")
  assert list(loaded) == list(state_dict)
  for name, tensor in state_dict.items():
    np.testing.assert_array_equal(loaded[name], tensor.numpy())
  loaded["tied"][0] = 42.0  # shares its storage, as in torch
  assert loaded["0.weight"][1, 0] == 42.0


def test_truncated_and_damaged_release_files_are_named(tmp_path):
  folder, _ = fixture_release(tmp_path, "pt")
  path = folder / "ckpt.pt"
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(CheckpointFormatError, match=r"ckpt.pt: truncated"):
    convert_release("flav", folder, tmp_path / "out")
  (tmp_path / "st").mkdir()
  folder, _ = fixture_release(tmp_path / "st", "safetensors")
  path = folder / "model.safetensors"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(CheckpointFormatError, match=r"model.safetensors: truncated or damaged safetensors file "
                     r"\(\d+ bytes\): .*file not fully covered; copy or download the file again$"):
    convert_release("flav", folder, tmp_path / "out")
  data = bytearray(path.read_bytes())
  data[8:12] = b"\xff\xfe{["
  path.write_bytes(bytes(data))
  with pytest.raises(CheckpointFormatError, match=r"model.safetensors: truncated or damaged .*invalid UTF-8 in header"):
    convert_release("flav", folder, tmp_path / "out")


def test_safetensors_of_every_supported_dtype_load_bit_exactly_and_others_are_named(tmp_path):
  arrays = {"bf16": (np.arange(6) / 4 - 0.5).astype(ml_dtypes.bfloat16).reshape(2, 3),
            "e4m3": np.linspace(-2, 2, 5).astype(ml_dtypes.float8_e4m3fn),
            "e5m2": np.linspace(-8, 8, 3).astype(ml_dtypes.float8_e5m2).reshape(1, 3),
            "f16": np.array(2.5, np.float16), "u8": np.arange(4, dtype=np.uint8), "flag": np.array([True, False]),
            "empty": np.zeros((0, 3), np.float32)}
  save_file(arrays, str(tmp_path / "all.safetensors"))
  loaded = read_checkpoint(tmp_path / "all.safetensors")
  assert digest(loaded) == digest(arrays)
  assert {k: v.dtype for k, v in loaded.items()} == {k: v.dtype for k, v in arrays.items()}  # V1, V2 in digests
  packed = json.dumps({"w": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}}).encode()
  (tmp_path / "fp4.safetensors").write_bytes(struct.pack("<Q", len(packed)) + packed + bytes(2))
  with pytest.raises(CheckpointFormatError, match="fp4.safetensors: tensor 'w' is F4, which this reader does not "
                     "support"):
    read_checkpoint(tmp_path / "fp4.safetensors")


def test_converted_folders_move_and_old_or_damaged_ones_are_explained(tmp_path):
  release, d = fixture_release(tmp_path, "safetensors")
  converted = convert_release("flav", release, tmp_path / "converted")
  assert model_folder.read(converted).params == converted / "params"
  (tmp_path / "elsewhere").mkdir()
  moved = shutil.move(converted, tmp_path / "elsewhere" / "flav")
  model, params = load_flav(moved)
  np.testing.assert_array_equal(params["video_final_layer"]["linear"]["bias"], d["param/video_final_layer.linear.bias"])
  with pytest.raises(FileNotFoundError, match="release folder .* not been converted: run launch.convert first.*"
                     "--kind=flav"):
    load_flav(release)
  with pytest.raises(ValueError, match="already a converted folder"):
    convert_release("flav", tmp_path / "elsewhere" / "flav", tmp_path / "again")

  fresh = convert_release("flav", release, tmp_path / "fresh")
  with pytest.raises(CheckpointFormatError, match=r"(?s)fresh/params: shape mismatch.*\(64,\), model expects \(128,\).* and \d+ more"):
    load_flav(fresh, hidden_size=model.hidden_size * 2, num_heads=model.num_heads * 2)
  next(p for p in pathlib.Path(fresh, "params").rglob("*") if p.name == "_METADATA").write_text("{\"tree")
  with pytest.raises(CheckpointFormatError, match="fresh/params: the Orbax checkpoint cannot be restored"):
    load_flav(fresh)
  (fresh / "model.json").write_text('{"kind": "fl')
  with pytest.raises(CheckpointFormatError, match="fresh/model.json: damaged"):
    load_flav(fresh)


def codec_releases(tmp_path):
  """Stand-ins of the vocoder and SD-VAE releases built from the fixtures: {kind: folder}."""
  folders = {}
  for kind, name, prefix in (("vocoder", "hifigan_small.npz", "generator/"), ("sdvae", "sdvae_small.npz", "vae/")):
    d = load_fixture(name)
    folder = folders[kind] = tmp_path / kind
    folder.mkdir()
    (folder / "config.json").write_text(str(d["config_json"]))
    state_dict = {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}
    if kind == "vocoder":
      torch.save({"generator": {k: torch.from_numpy(v) for k, v in state_dict.items()}}, folder / "vocoder.pt")
    else:
      save_file(state_dict, str(folder / "diffusion_pytorch_model.safetensors"))
  return folders


def test_kind_mix_ups_name_the_kind_the_folder_looks_like(tmp_path):
  folders = {"flav": fixture_release(tmp_path, "pt")[0], **codec_releases(tmp_path)}
  names = {"flav": "FLAV", "sdvae": "SD-VAE", "vocoder": "HiFi-GAN vocoder"}
  for looks, folder in folders.items():
    for kind in folders:
      if kind != looks:
        with pytest.raises(ValueError, match=f"this looks like a {names[looks]}.* release folder.*use --kind={looks}"):
          convert_release(kind, folder, tmp_path / f"{looks}_as_{kind}")
  vocoder = convert_release("vocoder", folders["vocoder"], tmp_path / "vocoder_converted")
  load_vocoder(vocoder)
  with pytest.raises(FileNotFoundError, match="vocoder release folder .* --kind=vocoder"):
    load_vocoder(folders["vocoder"])
  with pytest.raises(ValueError, match="holds a converted 'vocoder', not a 'sdvae'"):
    load_sdvae(vocoder)


def _launch(*args):
  return subprocess.run([sys.executable, "-m", "launch.convert", *args], capture_output=True, text=True, cwd=REPO,
                        timeout=300)


@pytest.mark.slow
def test_launcher_prints_one_error_line_with_the_fix(tmp_path):
  folders = codec_releases(tmp_path)
  result = _launch("--kind=flav", f"--checkpoint_dir={folders['vocoder']}", f"--output_dir={tmp_path / 'out'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1:] == [
      f"error: {folders['vocoder']}: this looks like a HiFi-GAN vocoder release folder (config.json has "
      "['resblock_kernel_sizes', 'upsample_rates']), not a FLAV one: use --kind=vocoder"]
  result = _launch("--kind=vocoder", f"--checkpoint_dir={folders['vocoder']}", f"--output_dir={tmp_path / 'out'}",
                   "--weights=missing.pt", "--verbose_errors")
  assert result.returncode == 1
  assert "Traceback" in result.stderr and "FileNotFoundError: weight file" in result.stderr
