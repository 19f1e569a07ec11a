"""`train_and_evaluate(config, workdir)`: train FLAV on config.data, resuming from DIR's newest checkpoint.

Everything goes to `workdir`, a local folder or a URL such as gs://bucket/run (`rflav_jax.storage`): checkpoints/
(Orbax), config.json (the resolved config), metrics.jsonl, tensorboard/, samples/step_<n>/ (mp4 + PNG previews from
the EMA weights) and export/ (the EMA weights as a model folder: `launch.sample --config.checkpoint=DIR/export`;
`launch.export` writes one of any kept step).
Running it again on the same workdir continues the run; a run killed at any moment and restarted ends with the
same weights as one never stopped.

Resume order: (1) the newest complete checkpoint's step; (2) its stored model arguments against config.model
(a contradiction is refused, naming each field); (3) the state restored with its shardings, or created; (4) the
input from that step on (the data order is fixed by (seed, step), see data.pipeline); (5) the update's
randomness fold_in(rng, step) comes from the restored state.
"""
import itertools
import os
import signal
import time

import jax
import ml_collections
from absl import logging
from etils import epath

from rflav_jax import sample, storage
from rflav_jax.build import build_flav, build_video_codec
from rflav_jax.flow.progress import CallProgress
from rflav_jax.generator import Generator
from rflav_jax.models import flops
from rflav_jax.models.flav import FLAV, dummy_inputs, flav_args, flav_from_config
from rflav_jax.train import checkpointing, input as train_input, optimizer as optim, parallel
from rflav_jax.train.progress import Progress, quiet_library_logs
from rflav_jax.train.state import TrainState, create_train_state, ema_decay_fn
from rflav_jax.train.step import COMPILER_OPTIONS, make_train_step


class NonFiniteError(FloatingPointError):
  """The loss or the gradient of an update was NaN or Inf."""


def _check_workdir(workdir: epath.Path) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test_{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as error:
    raise ValueError(f"workdir {os.fspath(workdir)!r} cannot be written ({error.strerror or error}); pass a folder "
                     "you can write to with --workdir") from error


def _check_config(config) -> None:
  for section in ("model", "data", "optim", "loss", "ema", "train", "sample", "codec", "vocoder"):
    if section not in config:
      raise ValueError(f"the config has no `{section}` section; start from configs/train_synthetic_tiny.py")
  train = config.train
  if train.num_steps < 1 or train.log_every < 1:
    raise ValueError(f"config.train.num_steps={train.num_steps} and log_every={train.log_every} must be >= 1")
  devices = jax.device_count()
  if train.batch_size < 1 or train.batch_size % devices:
    raise ValueError(f"config.train.batch_size={train.batch_size} does not divide over the {devices} devices; "
                     f"use a multiple of {devices}")
  if train.accumulate_steps < 1 or (train.batch_size // devices) % train.accumulate_steps:
    raise ValueError(f"config.train.accumulate_steps={train.accumulate_steps} must divide the "
                     f"{train.batch_size // devices} examples each device gets per step")
  if train.sample_every:  # the previews' settings, checked now rather than after hours of training
    sample.check_options(config.sample)


class _StopSignal:
  """Remembers a SIGTERM (the usual notice of preemption) so the loop can save and stop cleanly."""

  def __init__(self):
    self.received = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.received = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _stop_if_nonfinite(steps: list[int], metrics: list[dict], checkpoints: checkpointing.Checkpoints) -> None:
  """NonFiniteError naming the first step whose loss or gradient was NaN / Inf, and the last good checkpoint."""
  bad = [step for step, m in zip(steps, metrics) if not m["finite"]]
  if not bad:
    return
  last = checkpoints.latest_step()
  where = f"step {last} in {checkpoints.directory}" if last is not None else "none yet (the run starts anew)"
  raise NonFiniteError(
      f"the loss or gradient was not finite at step {bad[0]}; that update was not applied. The last good checkpoint: "
      f"{where}. Lower config.optim.lr, raise warmup_steps, or set config.train.skip_nonfinite=True to skip such "
      "updates (a run whose weights have diverged keeps failing: go back to an earlier checkpoint)")


def _write_samples(config, generator: Generator, step: int, workdir: epath.Path) -> None:
  """A short stream of the generator (holding the EMA weights) into workdir/samples/step_<step>/ (process 0)."""
  preview = ml_collections.ConfigDict(config.to_dict())
  preview.sample.num_frames = config.train.sample_frames
  preview.sample.num_streams = 1
  start = time.perf_counter()
  paths = sample.sample_with(generator, preview, workdir / "samples" / f"step_{step:07d}")
  logging.info("wrote %s (%.1f s)", paths[0], time.perf_counter() - start)


def _previews(config, model: FLAV, ema_params, previous: Generator | None) -> Generator:
  """The previews' Generator with the EMA weights: the previous one's compiled programs, once there is one."""
  if previous is not None:
    return previous.with_params(ema_params)
  return Generator.from_config(config, model, ema_params, progress=CallProgress())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> TrainState:
  """Trains until config.train.num_steps (or a SIGTERM / preemption); returns the final TrainState."""
  workdir = storage.as_path(workdir)
  _check_config(config)
  _check_workdir(workdir)
  quiet_library_logs()
  is_main = jax.process_index() == 0
  train = config.train

  # Devices and model.
  mesh = parallel.make_mesh(train.fsdp)
  # config.checkpoint: a model folder to start from (fine-tuning); empty: fresh weights from config.seed.
  model, start_params = build_flav(config.model, config.checkpoint) if config.checkpoint else (
      flav_from_config(config.model), None)
  optimizer = optim.make_optimizer(config.optim, train.num_steps)
  schedule = optim.learning_rate_schedule(config.optim, train.num_steps)
  logging.info("FLAV %s, %d devices (mesh %s), global batch %d", flav_args(model),
               jax.device_count(), dict(mesh.shape), train.batch_size)

  # Checkpoints: resume from the newest complete one, after checking it holds this model.
  checkpoints = checkpointing.Checkpoints(workdir / "checkpoints", save_every=train.checkpoint_every,
                                          keep=train.keep_checkpoints, keep_every=train.keep_every,
                                          asynchronous=train.async_checkpoints)
  latest = checkpoints.latest_step()
  if latest is not None:
    checkpoints.check_model(config.model, latest)

  def init(rng, params):
    if params is None:
      params = model.init(jax.random.split(rng)[1], *dummy_inputs(model))["params"]
    return create_train_state(params, optimizer, rng)

  rng = jax.random.PRNGKey(config.seed)
  abstract_state = jax.eval_shape(init, rng, start_params)
  shardings = parallel.state_sharding(abstract_state, mesh)
  if latest is None:
    state = jax.jit(init, out_shardings=shardings)(rng, start_params)
    logging.info("starting a new run in %s", workdir)
  else:
    state = checkpoints.restore(latest, checkpointing.abstract_with_shardings(abstract_state, shardings))
    logging.info("resumed from the checkpoint at step %d in %s", latest, checkpoints.directory)
  first_step = int(state.step)
  config_json = config.to_json_best_effort(indent=1)
  if is_main:
    (workdir / "config.json").write_text(config_json)

  # Input from the state's step on; the first batch is checked against the model before anything compiles. Later
  # batches are read and placed on the devices while the step before runs.
  codec = build_video_codec(config.codec, model)
  host_batches = train_input.host_batches(config, model, train_input.data_source(config.data), codec, first_step)
  first_batch = next(host_batches)
  train_input.check_batch(first_batch, model, config)
  batches = train_input.prefetch_to_devices(itertools.chain([first_batch], host_batches), mesh)

  # The update, compiled once: state donated, batch split over all devices.
  step_fn = jax.jit(
      make_train_step(model, optimizer, schedule, config.loss, ema_decay_fn(config.ema), train.accumulate_steps),
      in_shardings=(shardings, parallel.batch_sharding(mesh)),
      out_shardings=(shardings, parallel.replicated(mesh)), donate_argnums=0, compiler_options=COMPILER_OPTIONS)

  progress = Progress(workdir, first_step, train.num_steps, train.batch_size,
                      flops.train_step_flops(model, train.batch_size), train.peak_tflops_per_device * 1e12 *
                      jax.device_count(), write=is_main)
  stop = _StopSignal()
  pending_steps, pending_metrics, skipped = [], [], 0
  previews = None
  step = first_step
  started = time.perf_counter()
  try:
    while step < train.num_steps:
      batch = next(batches)
      with jax.set_mesh(mesh):  # kernels XLA cannot split itself (splash attention) run on each device's share
        state, metrics = step_fn(state, batch)
      step += 1
      pending_steps.append(step)
      pending_metrics.append(metrics)
      if step == first_step + 1:
        jax.block_until_ready(state)
        logging.info("compiled and ran the first step in %.1f s", time.perf_counter() - started)
      stopping = stop.received or checkpoints.reached_preemption(step)
      saving = stopping or step == train.num_steps or step % train.checkpoint_every == 0
      if pending_metrics and (step % train.log_every == 0 or saving):
        host_metrics = jax.device_get(pending_metrics)
        if not train.skip_nonfinite:
          _stop_if_nonfinite(pending_steps, host_metrics, checkpoints)
        skipped += sum(not m["finite"] for m in host_metrics)
        progress.log(step, host_metrics, skipped)
        pending_steps, pending_metrics = [], []
      if step == first_step + 1:
        progress.start(step)  # rates and ETA from here on leave out the compilation
      if saving:
        checkpoints.save(step, state, flav_args(model), config_json, force=stopping or step == train.num_steps)
      if train.sample_every and step % train.sample_every == 0 and step < train.num_steps:
        ema = parallel.to_host(state.ema_params, mesh)
        if is_main:
          previews = _previews(config, model, ema, previews)
          _write_samples(config, previews, step, workdir)
      if stopping:
        logging.warning("stopped at step %d; run the same command again to continue", step)
        break
  finally:
    batches.close()
    stop.restore()
    checkpoints.wait()
    checkpoints.close()
    progress.close()

  ema = parallel.to_host(state.ema_params, mesh)
  folder = checkpointing.save_export(workdir / "export", ema, flav_args(model), workdir, step,
                                     storage_dtype=train.export_dtype)
  if is_main:
    logging.info("exported the EMA weights of step %d to %s", step, folder)
    if train.sample_every and step == train.num_steps:
      _write_samples(config, _previews(config, model, ema, previews), step, workdir)
  return state
