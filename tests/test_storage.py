"""Cloud storage: the path helper, the emulator settings, and training into a GCS emulator with --workdir=gs://...

The slow tests start gcp-storage-emulator (tests/gcs_emulator.py) and run `python -m launch.train` with
STORAGE_EMULATOR_HOST set, in an empty working folder with empty TMPDIR and HOME, and read what the run left in the
bucket through the emulator's own HTTP API.
"""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import types

import chex
import jax
import numpy as np
import pytest

import gcs_emulator
from rflav_jax import standins, storage
from rflav_jax.convert import convert_release, load_flav
from rflav_jax.eval import eval_set
from rflav_jax.media import reader
from helpers import ROOT, fixture_release, media_file, saved_state

BUCKET = "bucket"
TINY_VAE = {"block_out_channels": [8, 8], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 4}
MICRO_MODEL = {"latent_size": 16, "patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2,
               "predict_frames": 4}  # the model of RUN
RUN = ("--config=configs/train_synthetic_tiny.py:micro", "--config.compilation_cache_dir=gs://bucket/xla",
       "--config.train.sample_every=5", "--config.train.sample_frames=6")  # 10 steps, checkpoints at 5 and 10


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  run = storage.as_path("gs://bucket/run")
  assert storage.is_remote(run) and os.fspath(run / "checkpoints" / "5") == "gs://bucket/run/checkpoints/5"
  assert os.fspath(storage.as_path(run)) == "gs://bucket/run"
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert os.fspath(storage.as_path("runs/tiny")) == str(tmp_path / "runs" / "tiny")
  assert os.fspath(storage.as_path("~/xla")) == str(tmp_path / "home" / "xla")
  assert not storage.is_remote("runs/tiny")
  storage.write_atomically(storage.as_path("metrics.jsonl"), "old\n")
  storage.write_atomically(storage.as_path("metrics.jsonl"), "new\n")
  assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"] and (tmp_path / "metrics.jsonl").read_text() == "new\n"


def test_a_staged_file_appears_whole_or_not_at_all(tmp_path):
  target = storage.as_path(tmp_path / "shard.array_record")
  with storage.staged_file(target) as local:
    pathlib.Path(local).write_bytes(b"first")
    assert not target.exists()  # not while it is written
  assert target.read_bytes() == b"first"
  with pytest.raises(RuntimeError), storage.staged_file(target) as local:
    pathlib.Path(local).write_bytes(b"half")
    raise RuntimeError("the writer died")
  assert target.read_bytes() == b"first"
  with storage.staged_folder(storage.as_path(tmp_path / "dataset")) as local:
    assert local == str(tmp_path / "dataset")  # a local folder is built in place


def test_the_emulator_host_is_mapped_onto_every_storage_client(monkeypatch):
  settings = storage.emulator_settings("127.0.0.1:9023")
  for name in settings:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.delenv(storage.EMULATOR_VARIABLE, raising=False)
  assert storage.use_emulator_from_env() is None and not any(name in os.environ for name in settings)
  assert storage.tensorflow_reaches("gs://bucket/run/tensorboard")

  monkeypatch.setenv(storage.EMULATOR_VARIABLE, "127.0.0.1:9023")
  url = "http://127.0.0.1:9023"
  assert storage.use_emulator_from_env() == url
  for name in (storage.EMULATOR_VARIABLE, "TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
    assert os.environ[name] == url, name
  assert os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] and os.environ["FSSPEC_GCS_TOKEN"] == "anon"
  assert os.environ["EPATH_USE_TF"] == "false" and os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] == "false"
  assert storage.emulator_settings("http://localhost:1")["TENSORSTORE_GCS_HTTP_URL"] == "http://localhost:1"
  assert not storage.tensorflow_reaches("gs://bucket/run/tensorboard")
  assert storage.tensorflow_reaches("/tmp/run/tensorboard")


@pytest.fixture(scope="module")
def emulator():
  with gcs_emulator.running_emulator(BUCKET) as host:
    yield host


def empty_folders(root: pathlib.Path) -> types.SimpleNamespace:
  """Empty cwd, tmp and home folders for a run that must write nothing locally."""
  folders = types.SimpleNamespace(**{name: root / name for name in ("cwd", "tmp", "home")})
  for folder in vars(folders).values():
    folder.mkdir(parents=True)
  return folders


def run(host: str, folders: types.SimpleNamespace, module: str, *args: str, wait: bool = True):
  """`python -m module args` in folders.cwd against the emulator at `host`; its CompletedProcess (asserted to have
  succeeded) or, with wait=False, its Popen."""
  env = {**os.environ, storage.EMULATOR_VARIABLE: host, "TMPDIR": str(folders.tmp), "HOME": str(folders.home),
         "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  command = [sys.executable, "-m", module, *args]
  if not wait:
    return subprocess.Popen(command, cwd=folders.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
  result = subprocess.run(command, cwd=folders.cwd, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def train(host: str, workdir: str, folders: types.SimpleNamespace, *args: str, wait: bool = True):
  """`python -m launch.train` of RUN (then `args`) into `workdir` against the emulator at `host`."""
  return run(host, folders, "launch.train", f"--workdir={workdir}",
             *[arg.replace("configs/", f"{ROOT}/configs/") for arg in RUN], *args, wait=wait)


def assert_no_files(folders: types.SimpleNamespace) -> None:
  """No file in any of the folders (TFDS leaves an empty tmp*tfds folder in TMPDIR for each dataset it builds)."""
  assert [path for folder in vars(folders).values() for path in folder.rglob("*") if not path.is_dir()] == []


def download(host: str, prefix: str, to: pathlib.Path) -> pathlib.Path:
  """Copies every object under `prefix` in the bucket into the local folder `to`."""
  for name in gcs_emulator.object_names(host, BUCKET, prefix):
    target = to / name.removeprefix(prefix).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gcs_emulator.read_object(host, BUCKET, name))
  return to


@pytest.fixture(scope="module")
def straight_run(emulator, tmp_path_factory):
  """An uninterrupted run into gs://bucket/straight; its local folders."""
  folders = empty_folders(tmp_path_factory.mktemp("straight"))
  train(emulator, "gs://bucket/straight", folders)
  return folders


@pytest.mark.slow
def test_training_into_a_bucket_writes_every_artifact_there_and_nothing_on_local_disk(emulator, straight_run,
                                                                                      tmp_path):
  assert_no_files(straight_run)
  names = set(gcs_emulator.object_names(emulator, BUCKET, "straight/"))
  expected = {"config.json", "metrics.jsonl", "loss_curve.png", "export/model.json",
              *[f"checkpoints/{step}/commit_success.txt" for step in (5, 10)],
              *[f"samples/step_{step:07d}/{file}" for step in (5, 10)
                for file in ("stream_0.mp4", "stream_0_frames.png", "stream_0_mel.png")]}
  assert {f"straight/{name}" for name in expected} <= names
  assert any(name.startswith("straight/export/params/") for name in names)
  assert gcs_emulator.object_names(emulator, BUCKET, "xla/")  # JAX's compilation cache

  read = lambda name: gcs_emulator.read_object(emulator, BUCKET, f"straight/{name}")
  assert [json.loads(line)["step"] for line in read("metrics.jsonl").decode().splitlines()] == list(range(1, 11))
  assert read("loss_curve.png").startswith(b"\x89PNG") and read("samples/step_0000005/stream_0_mel.png")[:4] == \
      b"\x89PNG"
  assert read("samples/step_0000010/stream_0.mp4")[4:8] == b"ftyp"  # an mp4 file, copied up whole
  assert json.loads(read("config.json"))["train"]["num_steps"] == 10

  # The bucket's export holds the EMA weights of its last checkpoint (export_dtype float16).
  local = download(emulator, "straight/", tmp_path / "straight")
  model, exported = load_flav(local / "export")
  assert model.hidden_size == 32
  ema = saved_state(local, 10)["ema_params"]
  jax.tree.map(lambda e, x: np.testing.assert_array_equal(e, x.astype(np.float16).astype(np.float32)), exported, ema)


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_exactly_from_the_bucket(emulator, straight_run, tmp_path):
  folders = empty_folders(tmp_path / "killed")
  run = train(emulator, "gs://bucket/killed", folders, wait=False)
  while gcs_emulator.read_object(emulator, BUCKET, "killed/checkpoints/5/commit_success.txt") is None:
    assert run.poll() is None, run.stdout.read()[-3000:]
    time.sleep(0.05)
  time.sleep(random.Random(os.getpid()).uniform(0, 0.5))
  assert run.poll() is None, "the run ended before it could be killed"
  run.send_signal(signal.SIGKILL)
  run.wait()

  resumed = train(emulator, "gs://bucket/killed", folders)
  assert "resumed from the checkpoint at step 5 in gs://bucket/killed/checkpoints" in resumed.stderr
  straight, killed = (download(emulator, f"{name}/", tmp_path / name) for name in ("straight", "killed"))
  chex.assert_trees_all_equal(saved_state(killed, 10), saved_state(straight, 10))
  jax.tree.map(np.testing.assert_array_equal, load_flav(straight / "export")[1], load_flav(killed / "export")[1])


@pytest.mark.slow
def test_a_dataset_and_its_latents_prepared_into_a_bucket_train_from_there(emulator, tmp_path):
  """launch.prepare_data builds a TFDS dataset of a media folder and its cached latents in the bucket, leaving
  nothing on local disk; training reads each from there."""
  source = tmp_path / "media" / "train" / "aist"
  source.mkdir(parents=True)
  (source / "clip.mp4").symlink_to(media_file("aist_video0.mp4"))
  vae = standins.write_sdvae(tmp_path / "sdvae", TINY_VAE)  # downsampling 2: 16x16 frames -> 8x8x4 latents
  folders = empty_folders(tmp_path / "prepare")
  result = run(emulator, folders, "launch.prepare_data", f"--source_dir={tmp_path / 'media'}",
               "--data_dir=gs://bucket/tfds", "--resolution=16", "--clip_frames=6", "--labelled", f"--sdvae={vae}",
               "--latents_dir=gs://bucket/latents")
  assert_no_files(folders)
  dataset = "gs://bucket/tfds/av_folder/media_r16_fps10_t6_labelled/1.1.0"
  assert f"dataset: {dataset}" in result.stdout
  names = set(gcs_emulator.object_names(emulator, BUCKET))
  assert {f"{dataset.removeprefix('gs://bucket/')}/{name}" for name in
          ("dataset_info.json", "features.json", "build_report.json", "av_folder-train.array_record-00000-of-00001")
          } <= names
  assert {"latents/latents.json", "latents/latents-00000-of-00001.array_record"} <= names
  report = json.loads(gcs_emulator.read_object(emulator, BUCKET, dataset.removeprefix("gs://bucket/") +
                                               "/build_report.json"))
  num_clips = report["examples"]["train"]
  assert num_clips >= 2 and f"latents: gs://bucket/latents ({num_clips} clips in 1 shards" in result.stdout

  tfds_run = empty_folders(tmp_path / "from_tfds")
  short = ("--config.train.batch_size=2", "--config.train.num_steps=2", "--config.train.sample_every=0")
  train(emulator, "gs://bucket/from_tfds", tfds_run, "--config.data.source=tfds",
        f"--config.data.dataset_dir={dataset}", *short)
  latents_run = empty_folders(tmp_path / "from_latents")
  train(emulator, "gs://bucket/from_latents", latents_run, "--config.data.source=latents",
        "--config.data.latents_dir=gs://bucket/latents", "--config.codec.kind=sdvae",
        f"--config.codec.checkpoint={vae}", "--config.model.latent_size=8", "--config.model.in_channels=4",
        "--config.model.patch_size=2", *short)
  for name, folders in (("from_tfds", tfds_run), ("from_latents", latents_run)):
    assert_no_files(folders)
    metrics = gcs_emulator.read_object(emulator, BUCKET, f"{name}/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2]


@pytest.mark.slow
def test_sampling_reads_a_model_folder_from_the_bucket_and_writes_streams_and_an_eval_set_there(emulator,
                                                                                                straight_run,
                                                                                                tmp_path):
  folders = empty_folders(tmp_path / "sample")
  common = (f"--config={ROOT}/configs/synthetic_tiny.py", "--config.checkpoint=gs://bucket/straight/export",
            "--config.compilation_cache_dir=gs://bucket/xla", "--config.sample.num_frames=8",
            "--config.sample.chunk_frames=4",
            *[f"--config.model.{name}={value}" for name, value in MICRO_MODEL.items()])
  run(emulator, folders, "launch.sample", *common, "--output_dir=gs://bucket/samples")
  run(emulator, folders, "launch.sample", *common, "--config.sample.eval_clips=3", "--config.sample.eval_frames=4",
      "--config.sample.eval_batch_size=2", "--output_dir=gs://bucket/eval_set")
  assert_no_files(folders)
  assert {"samples/stream_0.mp4", "samples/stream_0_frames.png", "samples/stream_0_mel.png"} <= set(
      gcs_emulator.object_names(emulator, BUCKET, "samples/"))
  assert sorted(gcs_emulator.object_names(emulator, BUCKET, "eval_set/")) == sorted(
      ["eval_set/eval_set.json", *[f"eval_set/video/sample_{i}_video.mp4" for i in range(3)],
       *[f"eval_set/audio/sample_{i}_audio.wav" for i in range(3)]])
  local = download(emulator, "eval_set/", tmp_path / "eval_set")
  for i in range(3):
    mp4, wav = eval_set.clip_paths(local, i)
    assert reader.read_video(mp4).shape == (4, 16, 16, 3) and wav.read_bytes()[:4] == b"RIFF"


@pytest.mark.slow
def test_a_release_converts_into_the_bucket(emulator, tmp_path):
  release, _ = fixture_release(tmp_path, "safetensors")
  folders = empty_folders(tmp_path / "convert")
  run(emulator, folders, "launch.convert", f"--release_dir={release}", "--output_dir=gs://bucket/converted")
  assert_no_files(folders)
  converted = download(emulator, "converted/flav/", tmp_path / "from_bucket")
  local = convert_release("flav", release, tmp_path / "local")
  jax.tree.map(np.testing.assert_array_equal, load_flav(converted)[1], load_flav(local)[1])
