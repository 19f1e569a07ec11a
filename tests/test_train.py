"""Training: one step, device and process counts, exact resume after kill -9, SIGTERM, export, refusals.

Runs use configs/train_synthetic_tiny.py:micro (a FLAV of a few thousand weights on 16x16 bouncing balls).
Command-line runs go through `python -m launch.train` in subprocesses, as a user would start them.
"""
import json
import logging
import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from configs import train_synthetic_tiny
from helpers import ROOT, rel_l2, run_on_cpu_devices, saved_state
from rflav_jax.convert import load_flav
from rflav_jax.train import checkpointing, trainer
from rflav_jax.train.progress import Progress, tensorboard_writer
from rflav_jax.train.state import ema_decay_fn



def micro_config(**train):
  config = train_synthetic_tiny.get_config("micro")
  config.train.update(**train)
  return config


def launch(workdir, *overrides, devices: int = 1, wait: bool = True, extra_args=()):
  """`python -m launch.train --config=...:micro --workdir=workdir <overrides>`; the CompletedProcess or Popen."""
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "launch.train", "--config=configs/train_synthetic_tiny.py:micro",
             f"--workdir={workdir}", *[f"--config.{o}" for o in overrides], *extra_args]
  if not wait:
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  return result


def check_ok(result):
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_states_close(a, b, tolerance):
  """Relative L2 distance of all params (and of all EMA params) taken together."""
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  for name in ("params", "ema_params"):
    assert rel_l2(flat(a[name]), flat(b[name])) <= tolerance, name


def tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of the scalar summaries in `folder`, read with TensorBoard's own reader."""
  events = EventAccumulator(str(folder), size_guidance={"tensors": 0})  # 0: keep every event
  events.Reload()
  return {tag: [(event.step, float(tensor_util.make_ndarray(event.tensor_proto))) for event in events.Tensors(tag)]
          for tag in events.PluginTagToContent("scalars")}


@pytest.mark.slow
def test_one_step_updates_params_and_writes_metrics(tmp_path):
  config = micro_config(num_steps=1, log_every=1)
  state = trainer.train_and_evaluate(config, tmp_path)
  assert int(state.step) == 1
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  for name in ("step", "loss", "loss_video", "loss_audio", "grad_norm", "lr", "samples_per_s"):
    assert name in record
  assert record["step"] == 1 and np.isfinite(record["loss"]) and record["grad_norm"] > 0
  initial = saved_state(tmp_path)
  model, exported = load_flav(tmp_path / "export")
  assert model.hidden_size == 32 and config.train.export_dtype == "float16"  # stored in half, loaded as float32
  as_stored = jax.tree.map(lambda x: x.astype(np.float16).astype(np.float32), initial["ema_params"])
  chex.assert_trees_all_equal(jax.tree.map(np.asarray, exported), as_stored)
  scalars = tensorboard_scalars(tmp_path / "tensorboard")
  assert {"loss", "grad_norm", "lr", "samples_per_s"} <= set(scalars)
  assert scalars["loss"] == [(1, np.float32(record["loss"]))]


def log_two_steps(workdir: pathlib.Path) -> list[dict]:
  """The records of a Progress that logs steps 2 and 4 of a run into `workdir`."""
  workdir.mkdir()
  progress = Progress(workdir, first_step=0, num_steps=4, batch_size=2, flops_per_step=1e9, peak_flops=0, write=True)
  metrics = [{"loss": 1.5, "loss_video": 1.0, "loss_audio": 0.5, "grad_norm": 2.0, "lr": 1e-4, "finite": True},
             {"loss": 0.5, "loss_video": 0.25, "loss_audio": 0.25, "grad_norm": 1.0, "lr": 2e-4, "finite": False}]
  records = [progress.log(2, metrics, 1), progress.log(4, metrics[1:], 2)]
  progress.close()
  return records


def test_progress_writes_metrics_loss_curve_and_tensorboard_scalars(tmp_path):
  records = log_two_steps(tmp_path / "run")
  assert [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == records
  assert records[0]["loss"] == 1.0 and records[1]["skipped"] == 2
  assert (tmp_path / "run" / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
  scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
  assert set(scalars) == set(records[0]) - {"step"}
  for name, logged in scalars.items():
    assert logged == [(record["step"], np.float32(record[name])) for record in records], name


def test_without_tensorflow_training_says_so_once_and_still_writes_metrics(tmp_path, monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError
  with caplog.at_level(logging.WARNING):
    records = log_two_steps(tmp_path / "run")
  (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert warning.startswith("TensorBoard summaries are off") and "install tensorflow and clu" in warning
  assert [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == records
  assert (tmp_path / "run" / "loss_curve.png").exists() and not (tmp_path / "run" / "tensorboard").exists()


def test_tensorboard_goes_through_tensorflows_filesystems_which_include_gcs():
  tf = pytest.importorskip("tensorflow")
  assert "gs" in tf.io.gfile.get_registered_schemes()  # gs://bucket/run folders are written through it
  writer = tensorboard_writer("ram://tensorboard")  # an in-memory filesystem of the same registry
  writer.write_scalars(3, {"loss": 0.25})
  writer.close()
  (path,) = tf.io.gfile.glob("ram://tensorboard/events.out.tfevents.*")
  logged = [(event.step, value.tag, float(tensor_util.make_ndarray(value.tensor)))
            for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value]
  assert logged == [(3, "loss", 0.25)]


def test_ema_decay_warms_up_and_is_capped():
  config = micro_config()
  config.ema.update(decay=0.99, schedule="power", power=0.75)
  decay = ema_decay_fn(config.ema)
  np.testing.assert_allclose(decay(np.int32(1)), 1 - 2 ** -0.75, rtol=1e-6)
  assert float(decay(np.int32(10 ** 6))) == pytest.approx(0.99)
  config.ema.schedule = "constant"
  assert float(ema_decay_fn(config.ema)(np.int32(1))) == pytest.approx(0.99)


@pytest.mark.slow
def test_loss_falls_clearly_within_a_few_hundred_steps(tmp_path):
  config = micro_config(num_steps=500, log_every=50, checkpoint_every=500)
  trainer.train_and_evaluate(config, tmp_path)
  losses = [json.loads(line)["loss_video"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # Fresh weights predict zero velocity (loss about E[x^2] + 1 = 2); predicting the mean frame plateaus near 1
  # (steps 50-150); only a model that reads its noisy input goes clearly below that plateau.
  plateau = min(losses[1:3])
  assert 0.8 < plateau < 1.1 and losses[-1] < 0.8 * plateau, losses


@pytest.mark.slow
def test_eight_devices_and_fsdp_match_one_device(tmp_path):
  common = ("train.num_steps=3", "train.checkpoint_every=3")
  check_ok(launch(tmp_path / "one", *common))
  check_ok(launch(tmp_path / "eight", *common, devices=8))
  check_ok(launch(tmp_path / "fsdp", *common, "train.fsdp=2", devices=8))
  one = saved_state(tmp_path / "one")
  assert_states_close(saved_state(tmp_path / "eight"), one, 1e-5)
  assert_states_close(saved_state(tmp_path / "fsdp"), one, 1e-5)


@pytest.mark.slow
def test_two_processes_train_together_like_one(tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  common = ("train.num_steps=2", "train.checkpoint_every=2")
  runs = [launch(tmp_path / "two", *common, wait=False, extra_args=(
      f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}")) for i in range(2)]
  outputs = [run.communicate(timeout=600)[0] for run in runs]
  for run, output in zip(runs, outputs):
    assert run.returncode == 0, output[-3000:]
  check_ok(launch(tmp_path / "one", *common))
  assert_states_close(saved_state(tmp_path / "two"), saved_state(tmp_path / "one"), 1e-5)


def wait_for_step(workdir: pathlib.Path, step: int, run: subprocess.Popen) -> None:
  metrics = workdir / "metrics.jsonl"
  while not (metrics.exists() and len(metrics.read_text().splitlines()) >= step):
    assert run.poll() is None, run.stdout.read()[-3000:]
    time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume_gives_the_same_weights(tmp_path):
  common = ("train.num_steps=30",)
  check_ok(launch(tmp_path / "straight", *common))
  rng = random.Random(os.getpid())
  kill_after = rng.randint(1, 27)
  run = launch(tmp_path / "killed", *common, wait=False)
  wait_for_step(tmp_path / "killed", kill_after, run)
  time.sleep(rng.uniform(0, 0.3))
  run.send_signal(signal.SIGKILL)
  run.wait()
  check_ok(launch(tmp_path / "killed", *common))
  chex.assert_trees_all_equal(saved_state(tmp_path / "killed"), saved_state(tmp_path / "straight"))
  straight, resumed = (load_flav(tmp_path / name / "export")[1] for name in ("straight", "killed"))
  chex.assert_trees_all_equal(straight, resumed)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
  run = launch(tmp_path, "train.num_steps=100000", "train.checkpoint_every=1000", wait=False)
  wait_for_step(tmp_path, 3, run)
  run.send_signal(signal.SIGTERM)
  output = run.communicate(timeout=120)[0]
  assert run.returncode == 0, output[-3000:]
  state = saved_state(tmp_path)
  assert int(state["step"]) >= 3
  assert "run the same command again" in output


@pytest.mark.slow
def test_contradicting_config_is_refused_and_export_samples(tmp_path):
  check_ok(launch(tmp_path, "train.num_steps=2"))
  result = launch(tmp_path, "train.num_steps=4", "model.hidden_size=48", "model.depth=2")
  assert result.returncode == 1
  assert "config.model.depth=2 but the checkpoint at step 2" in result.stderr
  assert "config.model.hidden_size=48" in result.stderr and "Traceback" not in result.stderr
  sampled = subprocess.run(
      [sys.executable, "-m", "launch.sample", "--config=configs/train_synthetic_tiny.py:micro",
       f"--config.checkpoint={tmp_path / 'export'}", f"--output_dir={tmp_path / 'out'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  check_ok(sampled)
  assert (tmp_path / "out" / "stream_0.mp4").stat().st_size > 0


@pytest.mark.slow
def test_export_of_any_kept_step_holds_that_steps_weights(tmp_path):
  check_ok(launch(tmp_path, "train.num_steps=10"))  # micro saves every 5 steps: steps 5 and 10 are kept
  exported = subprocess.run([sys.executable, "-m", "launch.export", f"--workdir={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
  check_ok(exported)
  assert "wrote step 10" in exported.stdout
  # The newest step, stored as the run's export_dtype: the folder training wrote itself, bit for bit.
  newest, trained = (load_flav(tmp_path / name)[1] for name in ("export_step_10", "export"))
  chex.assert_trees_all_equal(newest, trained)

  # An earlier step in float32: exactly the EMA (or raw) weights its checkpoint holds, not the newest ones.
  stored = saved_state(tmp_path, 5)
  for weights, name in (("ema", "ema_params"), ("params", "params")):
    folder, step = checkpointing.export_step(tmp_path, 5, tmp_path / weights, weights, storage_dtype="float32")
    assert step == 5
    chex.assert_trees_all_equal(load_flav(folder)[1], stored[name])
  later = saved_state(tmp_path, 10)["ema_params"]
  assert not np.array_equal(stored["ema_params"]["v_embedder"]["kernel"], later["v_embedder"]["kernel"])

  with pytest.raises(ValueError, match="holds no checkpoint of step 7; kept steps: 5, 10"):
    checkpointing.export_step(tmp_path, 7)
  with pytest.raises(FileNotFoundError, match="pass the --workdir of a launch.train run"):
    checkpointing.export_step(tmp_path / "export")


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_or_is_skipped(tmp_path):
  config = micro_config(num_steps=4, checkpoint_every=2, skip_nonfinite=False)
  config.optim.update(lr=1e30, warmup_steps=0, grad_clip=0.0)
  with pytest.raises(trainer.NonFiniteError, match=r"not finite at step \d; .*last good checkpoint"):
    trainer.train_and_evaluate(config, tmp_path / "stop")
  config.train.skip_nonfinite = True
  state = trainer.train_and_evaluate(config, tmp_path / "skip")
  assert int(state.step) == 4
  records = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["skipped"] >= 1
  chex.assert_tree_all_finite(state.params)


@pytest.mark.slow
def test_bad_setups_are_refused_before_compiling(tmp_path):
  config = micro_config(batch_size=6)
  config.train.accumulate_steps = 4
  with pytest.raises(ValueError, match="accumulate_steps=4 must divide"):
    trainer.train_and_evaluate(config, tmp_path / "a")
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="cannot be written"):
    trainer.train_and_evaluate(micro_config(), blocker / "workdir")
  config = micro_config()
  config.data.update(source="tfds", dataset_dir=str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="launch.prepare_data"):
    trainer.train_and_evaluate(config, tmp_path / "b")
  config = micro_config()
  config.train.sample_every = 5
  config.sample.stochasticity = 2.0  # the previews' sampler: refused before training, not after it
  with pytest.raises(ValueError, match="config.sample.stochasticity=2.0"):
    trainer.train_and_evaluate(config, tmp_path / "previews")
  assert not list((tmp_path / "previews").rglob("checkpoints/*"))
  config = micro_config()
  config.model.num_classes = 2  # the bouncing balls have 3 classes
  with pytest.raises(ValueError, match="num_classes=2"):
    trainer.train_and_evaluate(config, tmp_path / "c")
  result = launch(tmp_path / "d", "train.batch_size=6", devices=4)
  assert result.returncode == 1 and "does not divide over the 4 devices" in result.stderr
  result = launch(tmp_path / "e", "train.nmu_steps=3")
  assert result.returncode != 0 and "nmu_steps" in result.stderr


def test_accumulated_gradients_equal_the_full_batch_gradient():
  from rflav_jax.train.step import loss_and_grads
  batch = {"x": np.arange(24, dtype=np.float32).reshape(8, 3)}
  loss_fn = lambda w, b, key: (np.float32(0.5) * ((b["x"] @ w) ** 2).mean(), {})
  w = np.array([0.3, -0.2, 0.1], np.float32)
  (full, _), grads = loss_and_grads(loss_fn, w, batch, jax.random.PRNGKey(0), 1)
  (accumulated, _), accumulated_grads = loss_and_grads(loss_fn, w, batch, jax.random.PRNGKey(0), 4)
  np.testing.assert_allclose(accumulated, full, rtol=1e-6)
  np.testing.assert_allclose(accumulated_grads, grads, rtol=1e-6)


@pytest.mark.slow
def test_the_donated_update_rewrites_its_state_in_place():
  # With COMPILER_OPTIONS (region-based copy insertion) XLA stops copying each leaf of the donated state it updates.
  import ml_collections
  import optax
  from rflav_jax.models.flav import FLAV, init_params
  from rflav_jax.train.state import create_train_state
  from rflav_jax.train.step import COMPILER_OPTIONS, make_train_step
  model = FLAV(latent_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2, predict_frames=4, n_mels=16)
  optimizer = optax.adamw(1e-4)
  step = make_train_step(model, optimizer, optax.constant_schedule(1e-4),
                         ml_collections.ConfigDict(dict(p_rollout=0.8, weighting="logit_normal")), lambda n: 0.99)
  state = create_train_state(init_params(model), optimizer, jax.random.PRNGKey(0))
  batch = {"video": np.zeros((2, 4, 8, 8, 4), np.float32), "mel": np.zeros((2, 4, 10, 16), np.float32),
           "label": np.zeros((2,), np.int32)}
  leaves = len(jax.tree.leaves(state.params))

  def copies(**options):
    text = jax.jit(step, donate_argnums=0, **options).lower(state, batch).compile().as_text()
    return text[text.index("ENTRY"):].count(" copy(")

  assert copies() >= 2 * leaves  # XLA's default copies the parameters and Adam's moments
  assert copies(compiler_options=COMPILER_OPTIONS) < leaves // 2


@pytest.mark.slow
def test_paper_configs_build_and_xl_state_is_sharded_over_fsdp():
  from configs import train_flav_b1
  assert train_flav_b1.get_config("aist").model.num_classes == 10
  assert train_flav_b1.get_config("landscape").model.num_classes == 0
  script = """
import jax, numpy as np
from configs import train_flav_xl_pod
from rflav_jax.models.flav import dummy_inputs, flav_from_config
from rflav_jax.train import optimizer, parallel, state
config = train_flav_xl_pod.get_config()
model = flav_from_config(config.model)
key = jax.random.PRNGKey(0)
opt = optimizer.make_optimizer(config.optim, config.train.num_steps)
abstract = jax.eval_shape(lambda: state.create_train_state(model.init(key, *dummy_inputs(model))["params"], opt, key))
shardings = parallel.state_sharding(abstract, parallel.make_mesh(config.train.fsdp))
total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
per_device = sum(x.size * x.dtype.itemsize / (1 if s.is_fully_replicated else config.train.fsdp)
                 for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))
print(total / 1e9, per_device / 1e9)
"""
  total_gb, per_device_gb = map(float, run_on_cpu_devices(script, 8).split()[-2:])
  assert total_gb > 8  # XL: params, EMA and two Adam moments in float32
  assert per_device_gb < total_gb / 7  # nearly all of it split 8 ways


@pytest.mark.slow
def test_sdvae_codec_trains_on_its_latents(tmp_path):
  from rflav_jax import standins
  folder = standins.write_sdvae(tmp_path / "vae", {"block_out_channels": [8, 8], "norm_num_groups": 4,
                                                    "latent_channels": 4})
  config = micro_config(num_steps=2, checkpoint_every=2)
  config.model.update(latent_size=8, in_channels=4)  # 16x16 frames -> 8x8x4 latents
  config.codec.update(kind="sdvae", checkpoint=str(folder))
  state = trainer.train_and_evaluate(config, tmp_path / "a")
  assert int(state.step) == 2
  record = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
  assert np.isfinite(record["loss"]) and record["grad_norm"] > 0
  config.model.update(latent_size=16, in_channels=4)
  with pytest.raises(ValueError, match=r"video frames \(8, 8, 4\)"):
    trainer.train_and_evaluate(config, tmp_path / "c")
