"""Model folders: a network's weights as data, read without running anything found in the folder.

A model folder holds
  model.json  {"version": 1, "kind": "flav" | "sdvae" | "vocoder", "storage_dtype": "float32" | "float16" |
               "bfloat16", "provenance": {...}, "model": {the network's constructor arguments}}
  params/     the params tree as an Orbax (StandardCheckpointer) checkpoint, floats stored in storage_dtype.
provenance says where the weights came from: "source" (the weight file converted, the workdir of the training run,
or a description) and "sha256" (the source file's, or null when the source is not one file), plus "step" and
"weights" ("ema" or "params") for training exports. Nothing in a folder names a place outside it, so it can be
moved. launch.convert and training write model folders; rflav_jax.build turns them into networks.

Folders of the older format hold a generated config.py in place of model.json. They are read as data: config.py
is parsed, never run, and accepted only in the exact form launch.convert wrote, with literal values;
`python -m launch.convert --rewrite_folder=DIR` rewrites such a folder as model.json.

Files are reached only through etils.epath.Path's own methods (no os.path, no open()), so a folder may be local or
in cloud storage (gs://bucket/model).
"""
import ast
import dataclasses
import hashlib
import json
import pathlib
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rflav_jax import storage
from rflav_jax.errors import CheckpointFormatError

MODEL_JSON = "model.json"
PARAMS = "params"
LEGACY_CONFIG = "config.py"
VERSION = 1
KINDS = {"flav": "FLAV", "sdvae": "SD-VAE (diffusers AutoencoderKL)", "vocoder": "HiFi-GAN vocoder"}
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
REWRITE_COMMAND = "python -m launch.convert --rewrite_folder={folder}"
_FIELDS = {"version": int, "kind": str, "storage_dtype": str, "provenance": dict, "model": dict}
# config.json keys found in one kind's release folders only.
_RELEASE_MARKERS = {"flav": ("hidden_size", "depth", "predict_frames"),
                    "sdvae": ("block_out_channels", "latent_channels"),
                    "vocoder": ("upsample_rates", "resblock_kernel_sizes")}
# The config.py that launch.convert wrote, with the names in _SLOTS standing for the literal values it held.
_LEGACY_FORM = ast.parse('''
DOCSTRING
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.kind = KIND
  config.model = ml_collections.ConfigDict(MODEL)
  config.checkpoint = CHECKPOINT
  return config
''')
_SLOTS = ("DOCSTRING", "KIND", "MODEL", "CHECKPOINT")
_LEGACY_DOCSTRING = "Written by launch/convert.py: the {kind} converted from "


@dataclasses.dataclass(frozen=True)
class ModelFolder:
  """What a model folder holds: `model` the constructor arguments of a network of `kind`, its weights in `params`.

  storage_dtype is None for folders of the older format, which did not record it.
  """
  path: epath.Path
  kind: str
  model: dict
  storage_dtype: str | None
  provenance: dict

  @property
  def params(self) -> epath.Path:
    return self.path / PARAMS


def write(folder, kind: str, params: Any, model_args: dict, provenance: dict,
          storage_dtype: str = "float32") -> epath.Path:
  """Saves `params` as folder/params (floats cast to storage_dtype) and describes them in folder/model.json.

  model_args: the constructor arguments, JSON values only; provenance: {"source", "sha256", ...} (module
  docstring; `file_provenance` makes it for a weight file). model.json is written last, so a folder holds one
  only once its params are complete; a config.py of the older format is removed. Every process of a
  multi-process run calls this (the params are saved together); the first one writes model.json. Returns the
  folder, absolute.
  """
  description = _description(kind, model_args, storage_dtype, provenance)
  folder = _path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  first = jax.process_index() == 0
  if first:
    (folder / MODEL_JSON).unlink(missing_ok=True)
  dtype = jnp.dtype(storage_dtype)
  stored = jax.tree.map(lambda x: np.asarray(x).astype(dtype) if jnp.issubdtype(np.asarray(x).dtype, jnp.floating)
                        else np.asarray(x), params)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(folder / PARAMS, stored, force=True)
  checkpointer.wait_until_finished()
  if first:
    _write_json(folder / MODEL_JSON, description)
    (folder / LEGACY_CONFIG).unlink(missing_ok=True)
  return folder


def file_provenance(path) -> dict:
  """{"source": the file's absolute path, "sha256": its hex digest}: the provenance of weights converted from it."""
  path = _path(path)
  with path.open("rb") as f:
    return {"source": str(path), "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def read(folder, kind: str | None = None) -> ModelFolder:
  """What the model folder `folder` holds (model.json, or the older format's config.py read as data).

  Raises, with what to do: FileNotFoundError for a missing folder or a release folder that was not converted,
  ValueError if it holds another kind than `kind` (when given), CheckpointFormatError for a damaged or refused
  description.
  """
  folder = _path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} does not exist; pass a folder written by launch.convert or by training")
  if (folder / MODEL_JSON).is_file():
    found = _read_model_json(folder)
  elif (folder / LEGACY_CONFIG).is_file():
    found = _read_legacy(folder)
    logging.warning("%s is a model folder of the older format (config.py, read as data and never run); `%s` "
                    "rewrites it as model.json", folder, REWRITE_COMMAND.format(folder=folder))
  elif (folder / "config.json").is_file():
    looks = release_kind(_json_or_none(folder / "config.json")) or kind or "flav"
    raise FileNotFoundError(
        f"{folder} is a {KINDS[looks]} release folder (weights + config.json) that has not been converted: run "
        f"launch.convert first (`python -m launch.convert --kind={looks} --checkpoint_dir={folder} "
        "--output_dir=<new folder>`) and pass <new folder>")
  else:
    raise FileNotFoundError(f"{folder} holds no {MODEL_JSON}: pass a folder written by launch.convert or by training")
  if kind is not None and found.kind != kind:
    raise ValueError(f"{folder} holds a converted {found.kind!r}, not a {kind!r}; check which folder is passed where")
  return found


def restore_params(folder: ModelFolder, abstract_params: Any) -> Any:
  """The folder's params in the structure, shapes and dtypes of `abstract_params` (ShapeDtypeStructs).

  Raises CheckpointFormatError listing the shapes that differ, or for a damaged checkpoint, with the command
  that writes the folder again.
  """
  path = folder.params
  if not path.is_dir():
    raise FileNotFoundError(f"no Orbax checkpoint at {path}; write the folder again: {_rewrite_hint(folder)}")
  try:
    params = ocp.StandardCheckpointer().restore(path, abstract_params)
  except (ValueError, OSError, KeyError) as error:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise CheckpointFormatError(
        f"{path}: the Orbax checkpoint cannot be restored ({reason}); it is damaged, incompletely copied or does "
        f"not hold this model's parameters: write it again with {_rewrite_hint(folder)}") from None
  expected, restored = flax.traverse_util.flatten_dict(abstract_params), flax.traverse_util.flatten_dict(params)
  mismatched = [f"  {'/'.join(path)}: checkpoint {restored[path].shape}, model expects {tuple(leaf.shape)}"
                for path, leaf in expected.items() if restored[path].shape != tuple(leaf.shape)]
  if mismatched:
    described_by = MODEL_JSON if folder.storage_dtype else LEGACY_CONFIG
    more = [f"  ... and {len(mismatched) - 10} more"] if len(mismatched) > 10 else []
    raise CheckpointFormatError("\n".join([
        f"{path}: shape mismatch between the params and the model that {described_by} describes:", *mismatched[:10],
        *more, f"Did {described_by} or an override change a size (hidden_size, depth, ...)? Write the folder again "
        f"with {_rewrite_hint(folder)}"]))
  return params


def rewrite_legacy(folder) -> epath.Path:
  """Rewrites a model folder of the older format as model.json beside its params/, which stay as they are, and
  removes its config.py (read as data, never run). Returns the path of model.json."""
  folder = _path(folder)
  if (folder / MODEL_JSON).is_file():
    raise ValueError(f"{folder} already holds {MODEL_JSON}: it is in the current format, there is nothing to rewrite")
  if not (folder / LEGACY_CONFIG).is_file():
    raise FileNotFoundError(f"{folder} holds no {LEGACY_CONFIG}: pass a model folder of the older format "
                            "(config.py + params/)")
  old = _read_legacy(folder)
  _write_json(folder / MODEL_JSON, _description(old.kind, old.model, _stored_dtype(old.params), old.provenance))
  (folder / LEGACY_CONFIG).unlink()
  return folder / MODEL_JSON


def release_kind(config: dict | None) -> str | None:
  """The kind whose marker keys a release folder's config.json holds; None if no kind's or several kinds'."""
  kinds = [kind for kind, keys in _RELEASE_MARKERS.items() if any(key in (config or {}) for key in keys)]
  return kinds[0] if len(kinds) == 1 else None


def release_markers(kind: str, config: dict) -> list[str]:
  """The keys of `config` (a release's config.json) that mark it as one of `kind`."""
  return sorted(key for key in _RELEASE_MARKERS[kind] if key in config)


def _path(folder) -> epath.Path:
  """The path object that every file access goes through: a local path made absolute, or a URL such as
  gs://bucket/model as it is."""
  return storage.as_path(folder)


def _description(kind: str, model_args: dict, storage_dtype: str, provenance: dict) -> dict:
  """The content of model.json, checked as the reader checks it."""
  try:
    data = json.loads(json.dumps({"version": VERSION, "kind": kind, "storage_dtype": storage_dtype,
                                  "provenance": provenance, "model": dict(sorted(model_args.items()))}))
  except (TypeError, ValueError) as error:
    raise ValueError(f"model arguments and provenance must be JSON values: {error}") from None
  problem = _problem(data)
  if problem:
    raise ValueError(f"the model folder to write {problem}")
  return data


def _problem(data: Any) -> str | None:
  """What makes `data` not a model.json object, or None."""
  if not isinstance(data, dict):
    return f"holds a JSON {type(data).__name__}, expected an object"
  if data.get("version") != VERSION:
    return f"is of version {data.get('version')!r}; this code reads version {VERSION}"
  if set(data) != set(_FIELDS):
    return f"has the keys {sorted(data)}, expected {sorted(_FIELDS)}"
  wrong = [f"{key} must be a JSON {'object' if kind is dict else kind.__name__}" for key, kind in _FIELDS.items()
           if not isinstance(data[key], kind)]
  if wrong:
    return "has values of the wrong type: " + ", ".join(wrong)
  if data["kind"] not in KINDS:
    return f"has kind {data['kind']!r}, expected one of {list(KINDS)}"
  if data["storage_dtype"] not in STORAGE_DTYPES:
    return f"has storage_dtype {data['storage_dtype']!r}, expected one of {list(STORAGE_DTYPES)}"
  provenance = data["provenance"]
  if not (isinstance(provenance.get("source"), str) and isinstance(provenance.get("sha256", 0), (str, type(None)))):
    return 'has a provenance without "source" (a string) and "sha256" (a hex string or null)'
  return None


def _write_json(path: epath.Path, description: dict) -> None:
  """Writes `description` to `path` whole (a reader finds no part of it)."""
  storage.write_atomically(path, json.dumps(description, indent=2) + "\n")


def _json_or_none(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None


def _read_model_json(folder: epath.Path) -> ModelFolder:
  path = folder / MODEL_JSON
  try:
    data = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as error:
    raise CheckpointFormatError(f"{path}: damaged ({error}); write the folder again (launch.convert, launch.export)"
                                ) from None
  problem = _problem(data)
  if problem:
    raise CheckpointFormatError(f"{path} {problem}; write the folder again (launch.convert, launch.export)")
  return ModelFolder(folder, data["kind"], data["model"], data["storage_dtype"], data["provenance"])


def _read_legacy(folder: epath.Path) -> ModelFolder:
  """The description in an older folder's config.py, parsed as data: only the form launch.convert wrote."""
  path = folder / LEGACY_CONFIG

  def refused(reason: str) -> CheckpointFormatError:
    return CheckpointFormatError(
        f"{path} {reason}. Model folders are read as data and never run, so config.py must be as launch.convert "
        f"wrote it, with literal values only. Restore that form and rewrite the folder as model.json with "
        f"`{REWRITE_COMMAND.format(folder=folder)}`, or write it again (launch.convert, launch.export)")

  try:
    tree = ast.parse(path.read_text())
  except (SyntaxError, ValueError) as error:
    raise refused(f"is damaged ({error})") from None
  slots = {}
  if not _matches(tree, _LEGACY_FORM, slots):
    raise refused("is not of the form launch.convert wrote (a get_config() that sets kind, model and checkpoint)")
  try:
    values = {name: ast.literal_eval(node) for name, node in slots.items()}
    model = json.loads(json.dumps(values["MODEL"]))
  except (ValueError, TypeError, SyntaxError, RecursionError):
    raise refused("holds a value that is not a literal of JSON's types") from None
  docstring, kind, checkpoint = values["DOCSTRING"], values["KIND"], values["CHECKPOINT"]
  if not (isinstance(docstring, str) and kind in KINDS and isinstance(model, dict) and isinstance(checkpoint, str)
          and pathlib.PurePosixPath(checkpoint).name == PARAMS):
    raise refused(f"does not set kind to one of {list(KINDS)}, model to a dict and checkpoint to its params folder")
  source = docstring.removeprefix(_LEGACY_DOCSTRING.format(kind=kind)).removesuffix(".")
  return ModelFolder(folder, kind, model, None, {"source": source, "sha256": None})


def _matches(node: Any, form: Any, slots: dict) -> bool:
  """Whether the syntax tree `node` has the shape of `form`; the _SLOTS names in `form` match any expression,
  which is put into `slots`."""
  if isinstance(form, ast.Name) and form.id in _SLOTS:
    slots[form.id] = node
    return isinstance(node, ast.expr)
  if isinstance(form, list):
    return isinstance(node, list) and len(node) == len(form) and all(map(_matches, node, form, [slots] * len(form)))
  if isinstance(form, ast.AST):
    return type(node) is type(form) and all(_matches(getattr(node, f), getattr(form, f), slots) for f in form._fields)
  return node == form


def _stored_dtype(params: epath.Path) -> str:
  """The dtype the Orbax checkpoint `params` stores its floats in."""
  try:
    metadata = ocp.StandardCheckpointer().metadata(params).item_metadata
  except (ValueError, OSError, KeyError) as error:
    raise CheckpointFormatError(f"{params}: the Orbax checkpoint's metadata cannot be read ({error})") from None
  dtypes = {jnp.dtype(leaf.dtype).name for leaf in jax.tree.leaves(metadata)
            if jnp.issubdtype(leaf.dtype, jnp.floating)}
  if len(dtypes) != 1 or not dtypes <= set(STORAGE_DTYPES):
    raise CheckpointFormatError(f"{params}: stores its floats as {sorted(dtypes)}, expected one of {STORAGE_DTYPES}")
  return dtypes.pop()


def _rewrite_hint(folder: ModelFolder) -> str:
  """The command that writes `folder` again from where its provenance says its weights came from."""
  provenance = folder.provenance
  if "step" in provenance:
    weights = " --weights=params" if provenance.get("weights") == "params" else ""
    return (f"`python -m launch.export --workdir={provenance['source']} --step={provenance['step']}{weights} "
            f"--output_dir={folder.path}`")
  if provenance["sha256"]:
    source = pathlib.PurePath(provenance["source"])
    return (f"`python -m launch.convert --kind={folder.kind} --checkpoint_dir={source.parent} "
            f"--weights={source.name} --output_dir={folder.path}`")
  return f"launch.convert or launch.export (its weights came from {provenance['source']})"
