"""The rolling rectified-flow training loss of R-FLAV.

Layouts are channels-last: video (B, W, H, Wd, C), mel (B, W, F, N); W is the window. A velocity
function maps a noisy window and its per-frame times to velocities:
`velocity_fn(x_v, x_a, t (B, W)) -> (vel_v, vel_a)`.
"""
from typing import Callable

import jax
import jax.numpy as jnp

from rflav_jax.flow import schedule

VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _per_frame(t: jax.Array, x: jax.Array) -> jax.Array:
  """Broadcasts per-frame values (B, W) against a window x (B, W, ...)."""
  return t.reshape(t.shape + (1,) * (x.ndim - 2))


def _check_window(name: str, x: jax.Array, like: jax.Array, batch: int, window: int) -> None:
  if x.ndim < 3 or x.shape[:2] != (batch, window):
    raise ValueError(f"{name} has shape {x.shape}; expected (B, W, ...) = ({batch}, {window}, ...) "
                     "like the video window")
  if x.shape != like.shape:
    raise ValueError(f"{name} has shape {x.shape}; expected the shape of its data, {like.shape}")


def rolling_flow_loss(velocity_fn: VelocityFn, v: jax.Array, a: jax.Array, tw: jax.Array, rollout: jax.Array,
                      z0_v: jax.Array, z0_a: jax.Array, weighting: str = "logit_normal") -> tuple[jax.Array, dict]:
  """Weighted rectified-flow loss of one batch of windows with explicit randomness.

  Args:
    velocity_fn: (x_v, x_a, t) -> (vel_v, vel_a).
    v, a: clean video (B, W, H, Wd, C) and mel (B, W, F, N) windows.
    tw: (B,) offsets in [0, 1); rollout: (B,) bool, rolling (True) or pre-rolling (False) schedule.
    z0_v, z0_a: the noise, shaped like v and a.
    weighting: "logit_normal" or "uniform".
  Returns:
    (loss, aux): loss = loss_video + loss_audio, each the mean over (b, k) of w_bk times the mean squared
    velocity error of frame k; aux holds "loss_video", "loss_audio", "t" (B, W) and "weights" (B, W).
  """
  batch, window = v.shape[:2]
  _check_window("z0_v", z0_v, v, batch, window)
  _check_window("a", a, a, batch, window)
  _check_window("z0_a", z0_a, a, batch, window)
  if jnp.shape(tw) != (batch,):
    raise ValueError(f"tw has shape {jnp.shape(tw)}; expected (B,) = ({batch},)")

  t = schedule.training_times(tw, rollout, window)
  weights = schedule.loss_weights(t, weighting)
  x_v = _per_frame(t, v) * v + (1.0 - _per_frame(t, v)) * z0_v
  x_a = _per_frame(t, a) * a + (1.0 - _per_frame(t, a)) * z0_a
  vel_v, vel_a = velocity_fn(x_v, x_a, t)

  def weighted_error(velocity, data, noise):
    frame_error = jnp.mean(jnp.square(velocity - (data - noise)), axis=tuple(range(2, data.ndim)))
    return jnp.mean(weights * frame_error)

  loss_video = weighted_error(vel_v, v, z0_v)
  loss_audio = weighted_error(vel_a, a, z0_a)
  aux = {"loss_video": loss_video, "loss_audio": loss_audio, "t": t, "weights": weights}
  return loss_video + loss_audio, aux


def sample_rolling_flow_loss(velocity_fn: VelocityFn, v: jax.Array, a: jax.Array, key: jax.Array,
                             p_rollout: float = 0.8, weighting: str = "logit_normal") -> tuple[jax.Array, dict]:
  """`rolling_flow_loss` with tw ~ U(0, 1), rollout ~ Bernoulli(p_rollout) and z0 ~ N(0, 1) drawn from key.

  The aux dict also holds the drawn "tw" (B,) and "rollout" (B,).
  """
  if not 0.0 <= p_rollout <= 1.0:
    raise ValueError(f"p_rollout={p_rollout} must be a probability in [0, 1]")
  key_tw, key_rollout, key_v, key_a = jax.random.split(key, 4)
  batch = v.shape[0]
  tw = jax.random.uniform(key_tw, (batch,))
  rollout = jax.random.bernoulli(key_rollout, p_rollout, (batch,))
  z0_v = jax.random.normal(key_v, v.shape, v.dtype)
  z0_a = jax.random.normal(key_a, a.shape, a.dtype)
  loss, aux = rolling_flow_loss(velocity_fn, v, a, tw, rollout, z0_v, z0_a, weighting)
  return loss, {**aux, "tw": tw, "rollout": rollout}
