"""Converting a released checkpoint folder (weights + config.json) into a converted folder (see export.py)."""
import json
import pathlib

from rflav_jax.convert import export
from rflav_jax.convert.checkpoint_io import read_checkpoint
from rflav_jax.convert.flav import flav_from_official, select_state_dict
from rflav_jax.models.flav import flav_args

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


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


def convert_flav_release(folder, output_dir, *, weights: str | None = None, use_ema: bool = True) -> pathlib.Path:
  """Release folder (FLAV weights + config.json) -> Orbax params + config.py in output_dir."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
  config = read_config_json(folder)
  path = find_weights(folder, weights)
  model, params = flav_from_official(select_state_dict(read_checkpoint(path), use_ema), **config)
  return export.save_converted(output_dir, "flav", params, flav_args(model), str(path))
