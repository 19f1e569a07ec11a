"""Training checkpoints: an Orbax CheckpointManager under DIR/checkpoints with three named items per step:

  state   the TrainState (Orbax StandardSave: step, params, EMA, optimizer state, RNG), restored sharded;
  model   the FLAV constructor arguments (JSON), so a checkpoint says which network it holds;
  config  the whole run config (JSON), for the record.

Saves are asynchronous (training goes on while a save is written) and atomic: a step appears only once it
is complete, so a run killed mid-save restarts from the previous one. Retention: the newest `keep`
checkpoints, plus every `keep_every`-th step if set.
"""
import json
import pathlib

import jax
import orbax.checkpoint as ocp

from rflav_jax.convert.from_config import check_config_matches


class Checkpoints:
  """The checkpoints of one training workdir."""

  def __init__(self, directory: str | pathlib.Path, *, save_every: int, keep: int, keep_every: int = 0,
               asynchronous: bool = True):
    if save_every < 1 or keep < 1:
      raise ValueError(f"config.train.checkpoint_every={save_every} and keep_checkpoints={keep} must be >= 1")
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, keep_period=keep_every or None, create=True,
        enable_async_checkpointing=asynchronous, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "model", "config"), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def check_model(self, model_config, step: int) -> None:
    """ValueError naming each config.model field that contradicts the model stored at `step`."""
    stored = self._manager.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]
    check_config_matches(model_config, stored, f"the checkpoint at step {step} in {self.directory}")

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
