"""Writing converted weights as an Orbax checkpoint plus the ml_collections config that rebuilds the model.

A converted folder holds:
  params/      Orbax (StandardCheckpointer) checkpoint of the float32 params tree,
  config.py    `get_config()` -> ConfigDict with `kind`, `model` (constructor arguments) and `checkpoint`,
               usable directly as an absl `--config=<folder>/config.py` flag value.
"""
import importlib.util
import json
import pathlib
import pprint
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

_CONFIG_TEMPLATE = '''"""Written by launch/convert.py: the {kind} converted from {source}."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.kind = {kind!r}
  config.model = ml_collections.ConfigDict({model})
  config.checkpoint = {checkpoint!r}
  return config
'''


def save_converted(out_dir: str | pathlib.Path, kind: str, params: Any, model_args: dict, source: str) -> pathlib.Path:
  """Saves `params` under out_dir/params and writes out_dir/config.py; returns out_dir."""
  out_dir = pathlib.Path(out_dir).resolve()
  out_dir.mkdir(parents=True, exist_ok=True)
  checkpoint = out_dir / "params"
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(checkpoint, jax.tree.map(np.asarray, params), force=True)
  checkpointer.wait_until_finished()
  json.dumps(model_args)  # the config must hold plain values only
  text = _CONFIG_TEMPLATE.format(kind=kind, source=source, model=pprint.pformat(model_args, indent=4, sort_dicts=True),
                                 checkpoint=str(checkpoint))
  (out_dir / "config.py").write_text(text)
  return out_dir


def restore_params(checkpoint: str | pathlib.Path, abstract_params: Any) -> Any:
  """Restores a params tree saved by `save_converted`, checked against `abstract_params` (shapes/dtypes)."""
  checkpoint = pathlib.Path(checkpoint)
  if not checkpoint.exists():
    raise FileNotFoundError(f"no Orbax checkpoint at {checkpoint}; convert weights with `python -m launch.convert`")
  return ocp.StandardCheckpointer().restore(checkpoint.resolve(), abstract_params)


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Loads a config.py written by `save_converted` (or any ml_collections config file)."""
  spec = importlib.util.spec_from_file_location("converted_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
