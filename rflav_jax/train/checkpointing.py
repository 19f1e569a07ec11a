"""Training checkpoints: an Orbax CheckpointManager under DIR/checkpoints with three named items per step:

  state   the TrainState (Orbax StandardSave: step, params, EMA, optimizer state, RNG), restored sharded;
  model   the FLAV constructor arguments (JSON), so a checkpoint says which network it holds;
  config  the whole run config (JSON), for the record.

Saves are asynchronous (training goes on while a save is written) and atomic: a step appears only once it
is complete, so a run killed mid-save restarts from the previous one. Retention: the newest `keep`
checkpoints, plus every `keep_every`-th step if set.

`export_step` writes any kept step's weights as a model folder (what training writes to DIR/export at its end), so
a step can be sampled or evaluated while the run goes on.

Paths may be local or URLs such as gs://bucket/run/checkpoints (`rflav_jax.storage`).
"""
import json
import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from rflav_jax import model_folder, storage
from rflav_jax.build import check_config_matches

WEIGHTS = ("ema", "params")  # which weights of a TrainState an export takes: the EMA (as training does) or the raw


class Checkpoints:
  """The checkpoints of one training workdir."""

  def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int, keep_every: int = 0,
               asynchronous: bool = True, read_only: bool = False):
    if not read_only and (save_every < 1 or keep < 1):
      raise ValueError(f"config.train.checkpoint_every={save_every} and keep_checkpoints={keep} must be >= 1")
    self.directory = storage.as_path(directory)
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0, max_to_keep=None)
    else:
      options = ocp.CheckpointManagerOptions(
          save_interval_steps=save_every, max_to_keep=keep, keep_period=keep_every or None, create=True,
          enable_async_checkpointing=asynchronous, cleanup_tmp_directories=True)
    handlers = dict(state=ocp.StandardCheckpointHandler(), model=ocp.JsonCheckpointHandler(),
                    config=ocp.JsonCheckpointHandler())
    self._manager = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  @classmethod
  def of_run(cls, workdir: str | os.PathLike) -> "Checkpoints":
    """The checkpoints of the training run in `workdir`, opened for reading (nothing is saved or deleted)."""
    directory = storage.as_path(workdir) / "checkpoints"
    if not directory.is_dir():
      raise FileNotFoundError(f"{directory} does not exist: pass the --workdir of a launch.train run")
    return cls(directory, save_every=0, keep=0, read_only=True)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def steps(self) -> list[int]:
    """The complete checkpoints' steps, oldest first."""
    return sorted(self._manager.all_steps())

  def stored_model(self, step: int) -> dict:
    """The FLAV constructor arguments saved with `step`."""
    return self._manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]

  def stored_config(self, step: int) -> dict:
    """The run config saved with `step`, as a dict."""
    return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def check_model(self, model_config, step: int) -> None:
    """ValueError naming each config.model field that contradicts the model stored at `step`."""
    check_config_matches(model_config, self.stored_model(step), f"the checkpoint at step {step} in {self.directory}")

  def restore_on_host(self, step: int):
    """The TrainState saved at `step` as a dict of arrays on this process's first device, whatever devices saved
    it (for reading weights outside a run)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    metadata = self._manager.item_metadata(step)["state"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
    return self.restore(step, target)

  def restore(self, step: int, abstract_state):
    """The TrainState saved at `step`, placed with the shardings of `abstract_state` (jax.ShapeDtypeStructs)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"]

  def save(self, step: int, state, model_args: dict, config_json: str, force: bool = False) -> bool:
    """Starts saving `state` at `step` if due (or `force`); returns whether a save started."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), model=ocp.args.JsonSave(model_args),
                              config=ocp.args.JsonSave(json.loads(config_json)))
    return self._manager.save(step, args=args, force=force)

  def reached_preemption(self, step: int) -> bool:
    """True on every process once the cluster announced a preemption (JAX's preemption sync point)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until the saves in flight are complete."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs carrying the shardings to restore into."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)


def save_export(out_dir: str | os.PathLike, params, model_args: dict, workdir: str | os.PathLike, step: int,
                weights: str = "ema", storage_dtype: str = "float32") -> epath.Path:
  """Writes `params` (`weights`, see WEIGHTS) of step `step` of the run in `workdir` as a model folder."""
  provenance = {"source": os.fspath(storage.as_path(workdir)), "sha256": None, "step": step, "weights": weights}
  return model_folder.write(out_dir, "flav", params, model_args, provenance, storage_dtype)


def export_step(workdir: str | os.PathLike, step: int | None = None, out_dir: str | os.PathLike | None = None,
                weights: str = "ema", storage_dtype: str | None = None) -> tuple[epath.Path, int]:
  """Exports step `step` (default: the newest) of the run in `workdir` as a model folder; returns (folder, step).

  out_dir defaults to workdir/export_step_<step>; storage_dtype to the run's config.train.export_dtype.
  """
  if weights not in WEIGHTS:
    raise ValueError(f"weights={weights!r}: expected one of {WEIGHTS}")
  workdir = storage.as_path(workdir)
  checkpoints = Checkpoints.of_run(workdir)
  try:
    steps = checkpoints.steps()
    if not steps:
      raise FileNotFoundError(f"{checkpoints.directory} holds no complete checkpoint yet: wait for the run's first "
                              "save (config.train.checkpoint_every)")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise ValueError(f"{checkpoints.directory} holds no checkpoint of step {step}; kept steps: "
                       f"{', '.join(map(str, steps))}")
    if storage_dtype is None:
      storage_dtype = checkpoints.stored_config(step).get("train", {}).get("export_dtype", "float32")
    params = checkpoints.restore_on_host(step)["ema_params" if weights == "ema" else "params"]
    out_dir = workdir / f"export_step_{step}" if out_dir is None else out_dir
    folder = save_export(out_dir, params, checkpoints.stored_model(step), workdir, step, weights, storage_dtype)
  finally:
    checkpoints.close()
  return folder, step
