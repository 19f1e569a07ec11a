"""TrainState: everything a run needs to continue exactly, and the exponential moving average of the weights.

The EMA decay follows config.ema: fixed (`warmup=False`: decay), or warmed up as in the released recipe,
decay_n = min(decay, 1 - (1 + n) ** -power) after n updates (power 3/4), so early weights fade quickly.
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


def ema_decay_fn(ema_config) -> Callable[[jax.Array], jax.Array]:
  """updates done (after this one) -> decay used for it."""
  if not 0.0 <= ema_config.decay < 1.0:
    raise ValueError(f"config.ema.decay={ema_config.decay}: expected a value in [0, 1)")
  if not ema_config.warmup:
    return lambda count: jnp.float32(ema_config.decay)
  return lambda count: jnp.minimum(ema_config.decay, 1.0 - (1.0 + count.astype(jnp.float32)) ** -ema_config.power)


def ema_update(ema_params, params, decay: jax.Array):
  """ema <- decay ema + (1 - decay) params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
