"""Model folders: model.json + params/ round trips and moves; older folders (config.py) are read as data, never
run, and rewritten; damaged descriptions are named with the command that writes the folder again."""
import hashlib
import json
import pathlib
import pprint
import re
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from configs import synthetic_tiny
from rflav_jax import build, model_folder, sample
from rflav_jax.convert import load_flav
from rflav_jax.errors import CheckpointFormatError
from rflav_jax.models.flav import flav_args, flav_from_config, init_params
from rflav_jax.train import checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(latent_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=3,
            predict_frames=4, n_mels=16)
# What launch.convert wrote before model.json: the template of its config.py, word for word.
OLD_CONFIG = '''"""Written by launch/convert.py: the {kind} converted from {source}."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.kind = {kind!r}
  config.model = ml_collections.ConfigDict({model})
  config.checkpoint = {checkpoint!r}
  return config
'''


def tiny_folder(folder, storage_dtype="float32", seed=0):
  """A tiny FLAV model folder; returns (folder, model, params)."""
  model = flav_from_config(TINY)
  params = init_params(model, seed)
  folder = model_folder.write(folder, "flav", params, flav_args(model), {"source": "test", "sha256": None},
                              storage_dtype)
  return folder, model, params


def make_old(folder, source="a release in /somewhere/model.safetensors"):
  """Turns a model folder into one of the older format: config.py as launch.convert wrote it, no model.json."""
  args = json.loads((folder / "model.json").read_text())
  (folder / "model.json").unlink()
  (folder / "config.py").write_text(OLD_CONFIG.format(kind=args["kind"], source=source, checkpoint="params",
                                                      model=pprint.pformat(args["model"], indent=4, sort_dicts=True)))


def tree_digest(folder) -> dict:
  folder = pathlib.Path(folder)  # model folders are etils.epath paths, whose glob refuses "**"
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_round_trip_through_json_and_a_move(tmp_path):
  source = tmp_path / "weights.bin"
  source.write_bytes(b"some weights")
  model = flav_from_config(TINY)
  params = init_params(model, 3)
  provenance = model_folder.file_provenance(source)
  folder = model_folder.write(tmp_path / "flav", "flav", params, flav_args(model), provenance, "bfloat16")
  assert sorted(p.name for p in folder.iterdir()) == ["model.json", "params"]
  description = json.loads((folder / "model.json").read_text())  # plain JSON: any reader understands it
  assert description == {"version": 1, "kind": "flav", "storage_dtype": "bfloat16", "model": flav_args(model),
                         "provenance": {"source": str(source), "sha256": hashlib.sha256(b"some weights").hexdigest()}}
  assert str(folder) not in (folder / "model.json").read_text().replace(str(source), "")
  in_bfloat16 = jax.tree.map(lambda x: np.asarray(x.astype("bfloat16").astype("float32")), params)
  moved = pathlib.Path(shutil.move(folder, tmp_path / "elsewhere"))
  restored_model, restored = load_flav(moved)
  assert flav_args(restored_model) == flav_args(model)
  assert_trees_equal(restored, in_bfloat16)
  assert model_folder.read(moved, "flav") == model_folder.ModelFolder(moved, "flav", flav_args(model), "bfloat16",
                                                                       description["provenance"])


def test_older_folders_load_as_data_and_rewrite_to_model_json(tmp_path):
  folder, model, params = tiny_folder(tmp_path / "old", "float16")
  make_old(folder)
  before = tree_digest(folder / "params")
  old = model_folder.read(folder)
  assert (old.kind, old.model, old.storage_dtype) == ("flav", flav_args(model), None)
  assert old.provenance == {"source": "a release in /somewhere/model.safetensors", "sha256": None}
  loaded = load_flav(folder)[1]
  assert_trees_equal(loaded, jax.tree.map(lambda x: np.asarray(x.astype("float16").astype("float32")), params))
  # launch.convert of an older version recorded the params folder's absolute path; moved, the folder still loads.
  config = folder / "config.py"
  config.write_text(config.read_text().replace("'params'", repr(str(tmp_path / "first_place" / "params"))))
  folder = pathlib.Path(shutil.move(folder, tmp_path / "moved"))
  assert_trees_equal(load_flav(folder)[1], loaded)

  model_json = model_folder.rewrite_legacy(folder)
  assert model_json == folder / "model.json" and not (folder / "config.py").exists()
  assert tree_digest(folder / "params") == before  # the weights are not rewritten
  description = json.loads(model_json.read_text())
  assert (description["storage_dtype"], description["model"]) == ("float16", flav_args(model))
  assert_trees_equal(load_flav(folder)[1], loaded)
  with pytest.raises(ValueError, match="already holds model.json"):
    model_folder.rewrite_legacy(folder)


def test_the_shipped_folder_is_data_only():
  folder = pathlib.Path(synthetic_tiny.get_config().checkpoint)
  assert sorted(p.name for p in folder.iterdir()) == ["model.json", "params"]
  description = model_folder.read(folder, "flav")
  assert description.provenance == {"source": "trained by configs/train_synthetic_tiny.py:gpu, step 16000, EMA weights",
                                    "sha256": None}
  assert description.storage_dtype == "float16"


# config.py files that would create MARKER if they were run: each must be refused without running anything.
PLANTED = {
    "top level": OLD_CONFIG.replace("import ml_collections\n", "import ml_collections\nopen(MARKER, 'w')\n"),
    "in get_config": OLD_CONFIG.replace("  config = ml_collections.ConfigDict()\n",
                                        "  open(MARKER, 'w')\n  config = ml_collections.ConfigDict()\n"),
    "in a value": OLD_CONFIG.replace("{model}", "{{'depth': len(open(MARKER, 'w').name)}}"),
    "as the kind": OLD_CONFIG.replace("{kind!r}", "__import__('pathlib').Path(MARKER).touch() or 'flav'"),
}


def plant(folder: pathlib.Path, config_text: str) -> pathlib.Path:
  """A folder of the older format holding `config_text` as its config.py (and an empty params/)."""
  (folder / "params").mkdir(parents=True)
  (folder / "config.py").write_text(config_text)
  return folder


@pytest.mark.parametrize("where", PLANTED)
def test_no_loading_path_runs_a_planted_config(tmp_path, where):
  marker = tmp_path / "ran"
  text = PLANTED[where].format(kind="flav", source="x", checkpoint="params", model=pprint.pformat(TINY))
  ran_here = tmp_path / "ran_when_executed"  # the plant works: run as Python, it makes its marker
  namespace = {}
  exec(compile(text.replace("MARKER", repr(str(ran_here))), "planted", "exec"), namespace)  # pylint: disable=exec-used
  namespace["get_config"]()
  assert ran_here.exists()

  folder = plant(tmp_path / "planted", text.replace("MARKER", repr(str(marker))))
  rewrite = f"`python -m launch.convert --rewrite_folder={folder}`"
  refused = f"{re.escape(str(folder))}/config.py .*never run.*{re.escape(rewrite)}"
  config = synthetic_tiny.get_config()
  config.checkpoint = str(folder)
  config.model = ml_collections.ConfigDict(TINY)
  config.sample.num_frames = 4
  codec = ml_collections.ConfigDict(dict(kind="sdvae", checkpoint=str(folder)))
  vocoder = ml_collections.ConfigDict(dict(kind="hifigan", checkpoint=str(folder), griffin_lim_iters=1))
  for load in (lambda: load_flav(folder), lambda: build.load_sdvae(folder), lambda: build.load_vocoder(folder),
               lambda: build.build_flav(config.model, str(folder)), lambda: build.build(config),
               lambda: build.build_video_codec(codec, flav_from_config(TINY)),
               lambda: build.build_vocoder(vocoder, 1.0, 16), lambda: sample.sample(config, tmp_path / "out"),
               lambda: model_folder.rewrite_legacy(folder)):
    with pytest.raises(CheckpointFormatError, match=refused):
      load()
  assert not marker.exists() and (folder / "config.py").exists() and not (folder / "model.json").exists()


def test_the_rewrite_launcher_refuses_a_planted_config_in_one_line(tmp_path):
  marker = tmp_path / "ran"
  text = PLANTED["top level"].format(kind="flav", source="x", checkpoint="params", model=pprint.pformat(TINY))
  folder = plant(tmp_path / "planted", text.replace("MARKER", repr(str(marker))))
  result = subprocess.run([sys.executable, "-m", "launch.convert", f"--rewrite_folder={folder}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert line.startswith(f"error: {folder}/config.py ") and f"--rewrite_folder={folder}`" in line
  assert not marker.exists() and not (folder / "model.json").exists()


@pytest.mark.slow
def test_damaged_descriptions_and_checkpoints_are_named_with_the_command_that_rewrites_them(tmp_path):
  folder, _, _ = tiny_folder(tmp_path / "flav")
  description = json.loads((folder / "model.json").read_text())
  for change, message in (({"version": 2}, "is of version 2; this code reads version 1"),
                          ({"kind": "unet"}, "has kind 'unet', expected one of"),
                          ({"storage_dtype": "int8"}, "has storage_dtype 'int8'"),
                          ({"model": [1]}, "has values of the wrong type: model must be a JSON object"),
                          ({"provenance": {"sha256": None}}, 'has a provenance without "source"'),
                          ({"extra": 1}, r"has the keys \[.*'extra'")):
    (folder / "model.json").write_text(json.dumps({**description, **change}))
    with pytest.raises(CheckpointFormatError, match=f"{re.escape(str(folder))}/model.json {message}"):
      load_flav(folder)
  (folder / "model.json").write_text(json.dumps(description))
  shutil.rmtree(folder / "params")
  with pytest.raises(FileNotFoundError, match="no Orbax checkpoint at .*/flav/params.*its weights came from test"):
    load_flav(folder)

  params = init_params(flav_from_config(TINY), 0)
  export = checkpointing.save_export(tmp_path / "export", params, flav_args(flav_from_config(TINY)), tmp_path / "run",
                                     step=7, weights="params")
  assert model_folder.read(export).provenance == {"source": str(tmp_path / "run"), "sha256": None, "step": 7,
                                                  "weights": "params"}
  next(p for p in pathlib.Path(export, "params").rglob("_METADATA")).write_text('{"tree')
  command = f"`python -m launch.export --workdir={tmp_path}/run --step=7 --weights=params --output_dir={export}`"
  with pytest.raises(CheckpointFormatError, match=f"cannot be restored.*{re.escape(command)}"):
    load_flav(export)


def test_release_folders_and_missing_folders_are_explained(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist; pass a folder written by launch.convert"):
    model_folder.read(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match="holds no model.json"):
    model_folder.read(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"upsample_rates": [8, 5, 4]}))
  with pytest.raises(FileNotFoundError, match="HiFi-GAN vocoder release folder .* --kind=vocoder"):
    model_folder.read(tmp_path, "flav")
  with pytest.raises(FileNotFoundError, match="holds no config.py: pass a model folder of the older format"):
    model_folder.rewrite_legacy(tmp_path)
