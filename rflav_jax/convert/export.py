"""Writing converted weights as an Orbax checkpoint plus the ml_collections config that rebuilds the model.

A converted folder holds:
  params/      Orbax (StandardCheckpointer) checkpoint of the float32 params tree,
  config.py    `get_config()` -> ConfigDict with `kind`, `model` (constructor arguments) and `checkpoint`, the
               params folder relative to the folder holding config.py ("params"), so the folder can be moved.
`read_converted(folder)` loads config.py with `checkpoint` resolved to an absolute path.
"""
import importlib.util
import json
import pathlib
import pprint
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from rflav_jax.convert.checkpoint_io import CheckpointFormatError

PARAMS = "params"  # the Orbax folder inside a converted folder
_CONFIG_TEMPLATE = '''"""Written by launch/convert.py: the {kind} converted from {source}."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.kind = {kind!r}
  config.model = ml_collections.ConfigDict({model})
  config.checkpoint = {checkpoint!r}
  return config
'''


def save_converted(out_dir: str | pathlib.Path, kind: str, params: Any, model_args: dict, source: str,
                   storage_dtype: str = "float32") -> pathlib.Path:
  """Saves `params` under out_dir/params and writes out_dir/config.py; returns out_dir.

  storage_dtype: "float32", or "float16" / "bfloat16" to halve the folder; loading casts back to the model's
  float32 parameters.
  """
  out_dir = pathlib.Path(out_dir).resolve()
  out_dir.mkdir(parents=True, exist_ok=True)
  dtype = np.dtype(jax.numpy.dtype(storage_dtype))
  stored = jax.tree.map(lambda x: np.asarray(x).astype(dtype) if np.issubdtype(np.asarray(x).dtype, np.floating)
                        else np.asarray(x), params)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(out_dir / PARAMS, stored, force=True)
  checkpointer.wait_until_finished()
  json.dumps(model_args)  # the config must hold plain values only
  text = _CONFIG_TEMPLATE.format(kind=kind, source=source, model=pprint.pformat(model_args, indent=4, sort_dicts=True),
                                 checkpoint=PARAMS)
  (out_dir / "config.py").write_text(text)
  return out_dir


def restore_params(checkpoint: str | pathlib.Path, abstract_params: Any) -> Any:
  """Restores a params tree saved by `save_converted`, checked against `abstract_params` (shapes/dtypes)."""
  checkpoint = pathlib.Path(checkpoint).resolve()
  if not checkpoint.is_dir():
    raise FileNotFoundError(f"no Orbax checkpoint at {checkpoint}; convert weights with `python -m launch.convert`")
  try:
    params = ocp.StandardCheckpointer().restore(checkpoint, abstract_params)
  except (ValueError, OSError, KeyError) as error:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise CheckpointFormatError(
        f"{checkpoint}: the Orbax checkpoint cannot be restored ({reason}); it is damaged, incompletely copied or "
        "does not hold this model's parameters: convert (launch.convert) or export it again") from None
  expected, restored = flax.traverse_util.flatten_dict(abstract_params), flax.traverse_util.flatten_dict(params)
  mismatched = [f"  {'/'.join(path)}: checkpoint {restored[path].shape}, model expects {tuple(leaf.shape)}"
                for path, leaf in expected.items() if restored[path].shape != tuple(leaf.shape)]
  if mismatched:
    more = [f"  ... and {len(mismatched) - 10} more"] if len(mismatched) > 10 else []
    raise CheckpointFormatError("\n".join([
        f"{checkpoint}: shape mismatch between the params and the model that config.py describes:", *mismatched[:10],
        *more,
        "Did config.py or an override change a size (hidden_size, depth, ...)? Convert the weights again."]))
  return params


def read_converted(folder: str | pathlib.Path) -> ml_collections.ConfigDict:
  """config.py of a converted folder with `checkpoint` resolved against the folder; explains other folders."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} does not exist; pass a folder written by launch.convert or by training")
  if not (folder / "config.py").is_file():
    raise FileNotFoundError(f"{folder} holds no config.py: pass a folder written by launch.convert or by training")
  config = load_config(folder / "config.py")
  checkpoint = pathlib.Path(config.checkpoint)
  if checkpoint.is_absolute() and not checkpoint.exists():
    raise FileNotFoundError(
        f"{folder}/config.py points to {checkpoint}, which no longer exists: the folder was written by an older "
        "launch.convert that recorded absolute paths and has since been moved. Run launch.convert again; new "
        "folders record paths relative to themselves.")
  config.checkpoint = str((folder / checkpoint).resolve())
  return config


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Loads a config.py written by `save_converted` (or any ml_collections config file)."""
  spec = importlib.util.spec_from_file_location("converted_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as error:
    raise CheckpointFormatError(f"{path}: damaged config file ({error.msg}, line {error.lineno})") from None
  if not callable(getattr(module, "get_config", None)):
    raise CheckpointFormatError(f"{path}: defines no get_config(); not a config written by launch.convert")
  return module.get_config()
