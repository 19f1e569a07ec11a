"""One training update of FLAV with the rolling flow loss (rflav_jax.flow.loss), as a pure function.

`make_train_step(...)` returns step(state, batch) -> (state, metrics) for `jax.jit` (with the state donated and
COMPILER_OPTIONS):
  - the update's randomness comes from fold_in(state.rng, state.step): loss times, schedule choice, noise and
    label dropout, so a resumed run draws exactly what the uninterrupted one drew;
  - with accumulate_steps = k the batch is cut into k micro-batches whose gradients are averaged (each
    device keeps its own examples), so memory is that of batch / k;
  - a non-finite loss or gradient leaves params, EMA and optimizer state unchanged (metrics["finite"] = 0);
    the training loop stops or counts it (config.train.skip_nonfinite).
batch: {"video" (B, W, H, Wd, C), "mel" (B, W, F, N), "label" (B,)}. metrics: loss, loss_video, loss_audio,
grad_norm, lr, finite (float32 scalars).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from rflav_jax.flow.loss import sample_rolling_flow_loss
from rflav_jax.models.flav import FLAV
from rflav_jax.train.state import TrainState, ema_update

# XLA options for the jitted update. Region-based copy insertion lets XLA:CPU rewrite the donated state in place
# instead of first copying every leaf it updates: on the CPU benchmark shape (configs/bench_cpu_official.py) it removed 458 of the step's 479 copies
# and 5% of its memory (715 -> 682 MB static need), at the same speed. The GPU's
# option of the same name (xla_gpu_...) is left at XLA's default until measured.
COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def make_loss_fn(model: FLAV, loss_config) -> Callable:
  """(params, batch, key) -> (loss, {"loss_video", "loss_audio"}), labels dropped with model.class_dropout_prob."""

  def loss_fn(params, batch, key):
    key_loss, key_dropout = jax.random.split(key)
    labels = batch["label"] if model.num_classes else None

    def velocity(x_v, x_a, t):
      return model.apply({"params": params}, x_v, x_a, t, labels, train=True, rngs={"dropout": key_dropout})

    loss, aux = sample_rolling_flow_loss(velocity, batch["video"], batch["mel"], key_loss,
                                         p_rollout=loss_config.p_rollout, weighting=loss_config.weighting)
    return loss, {"loss_video": aux["loss_video"], "loss_audio": aux["loss_audio"]}

  return loss_fn


def _micro_batches(batch: dict, count: int) -> dict:
  """(B, ...) -> (count, B / count, ...): micro-batch i holds examples i, i + count, ... of each device's part."""
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1), batch)


def loss_and_grads(loss_fn: Callable, params, batch: dict, key: jax.Array, accumulate_steps: int):
  """((loss, aux), grads) of the batch, averaged over `accumulate_steps` micro-batches."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accumulate_steps == 1:
    return grad_fn(params, batch, key)

  def body(total, inputs):
    index, micro = inputs
    out = grad_fn(params, micro, jax.random.fold_in(key, index))
    return jax.tree.map(lambda a, b: a + b / accumulate_steps, total, out), None

  micro = _micro_batches(batch, accumulate_steps)
  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), key))
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(accumulate_steps), micro))
  return total


def make_train_step(model: FLAV, optimizer: optax.GradientTransformation, schedule: optax.Schedule, loss_config,
                    ema_decay: Callable[[jax.Array], jax.Array], accumulate_steps: int = 1) -> Callable:
  """step(state, batch) -> (state, metrics); see the module docstring."""
  loss_fn = make_loss_fn(model, loss_config)

  def step(state: TrainState, batch: dict):
    key = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = loss_and_grads(loss_fn, state.params, batch, key, accumulate_steps)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = ema_update(state.ema_params, params, ema_decay(state.step + 1))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    state = state.replace(step=state.step + 1, params=keep(params, state.params),
                          ema_params=keep(ema_params, state.ema_params), opt_state=keep(opt_state, state.opt_state))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step - 1),
               "finite": finite.astype(jnp.float32), **aux}
    return state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  return step
