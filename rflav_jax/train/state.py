"""TrainState: everything a run needs to continue exactly, and the exponential moving average of the weights.

The EMA decay of the n-th update (n = 1, 2, ...) follows config.ema.schedule, capped at config.ema.decay:
  "diffusers"  the official recipe's, diffusers' `EMAModel` without `use_ema_warmup`: 0 at n = 1 (the EMA starts
               as the weights after the first update), then (1 + s) / (10 + s) with s = n - 1;
  "power"      1 - (1 + n) ** -power (power 3/4: 0.999 after about 10k updates), an option of this code base;
  "constant"   decay from the first update on.
"""
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """step: int32 (), updates done; params / ema_params: float32 trees; opt_state: optax state;
  rng: uint32 (2,) key of the run, folded with the step for each update's randomness."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def create_train_state(params, optimizer: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """The state before the first update: EMA = params."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=rng)


EMA_SCHEDULES = ("diffusers", "power", "constant")


def ema_decay_fn(ema_config) -> Callable[[jax.Array], jax.Array]:
  """updates done n, int (after this one, so >= 1) -> float32 decay used for it (module docstring)."""
  schedule, cap = ema_config.schedule, ema_config.decay
  if schedule not in EMA_SCHEDULES:
    raise ValueError(f"config.ema.schedule={schedule!r}: expected one of {EMA_SCHEDULES}")
  if not 0.0 <= cap < 1.0:
    raise ValueError(f"config.ema.decay={cap}: expected a value in [0, 1)")
  if schedule == "constant":
    return lambda count: jnp.float32(cap)
  if schedule == "power":
    return lambda count: jnp.minimum(cap, 1.0 - (1.0 + count.astype(jnp.float32)) ** -ema_config.power)

  def diffusers(count):
    s = count.astype(jnp.float32) - 1.0
    return jnp.where(s <= 0, 0.0, jnp.minimum(cap, (1.0 + s) / (10.0 + s))).astype(jnp.float32)

  return diffusers


def ema_update(ema_params, params, decay: jax.Array):
  """ema <- decay ema + (1 - decay) params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
