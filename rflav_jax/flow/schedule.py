"""Per-frame flow times of rolling rectified flow, as R-FLAV defines them.

Flow time t is in [0, 1] with 1 = clean data and 0 = pure noise; x_t = t x + (1 - t) z. A window holds W
frames, frame 0 being the cleanest. Every function here is a pure jnp function of its arguments; step
indices may be traced (inside `lax.scan`), window sizes and step counts are Python ints.
"""
import math

import jax
import jax.numpy as jnp

# Training times are clamped away from 0 and 1, where the logit-normal weight is singular.
TRAIN_T_MIN, TRAIN_T_MAX = 1e-6, 1.0 - 1e-6
WEIGHTINGS = ("logit_normal", "uniform")


def _frame_index(window: int) -> jax.Array:
  """(W,) float32 frame positions 0..W-1."""
  return jnp.arange(window, dtype=jnp.float32)


def training_times(tw: jax.Array, rollout: jax.Array, window: int) -> jax.Array:
  """Per-frame training times, (B, W) float32.

  Args:
    tw: (B,) window offsets in [0, 1).
    rollout: (B,) bool; True gives the rolling schedule t_k = 1 - (k + tw) / W, False the pre-rolling
      schedule t_k = 1 - (k / W + tw).
    window: W.
  Returns:
    t clamped to [1e-6, 1 - 1e-6].
  """
  tw = jnp.asarray(tw, jnp.float32)
  rollout = jnp.asarray(rollout, bool)
  if tw.ndim != 1 or rollout.shape != tw.shape:
    raise ValueError(f"tw {tw.shape} and rollout {rollout.shape} must both be (B,); "
                     "flatten a (B, 1) tw with .reshape(-1)")
  k = _frame_index(window)[None]
  rolling = (k + tw[:, None]) / window
  pre_rolling = k / window + tw[:, None]
  t = 1.0 - jnp.where(rollout[:, None], rolling, pre_rolling)
  return jnp.clip(t, TRAIN_T_MIN, TRAIN_T_MAX)


def logit_normal_weight(t: jax.Array) -> jax.Array:
  """Logit-normal density 1 / (sqrt(2 pi) t (1 - t)) exp(-logit(t)^2 / 2), same shape as t in (0, 1).

  Evaluated as one exp of a log so that the weights near the clamp (~1e-36) stay normal float32 numbers.
  """
  log_t, log_1mt = jnp.log(t), jnp.log1p(-t)
  logit = log_t - log_1mt
  return jnp.exp(-0.5 * logit ** 2 - log_t - log_1mt - 0.5 * math.log(2 * math.pi))


def loss_weights(t: jax.Array, weighting: str) -> jax.Array:
  """Per-frame loss weights for training times t: "logit_normal" density or "uniform" (all ones)."""
  if weighting == "logit_normal":
    return logit_normal_weight(t)
  if weighting == "uniform":
    return jnp.ones_like(t)
  raise ValueError(f"weighting={weighting!r}: expected one of {WEIGHTINGS}")


def preroll_times(step: jax.Array | int, num_steps: int, window: int) -> jax.Array:
  """(W,) times at pre-roll step i = 0..num_steps: t_k(i) = clip(1 - (k / W + (N - i) / N), 0, 1).

  Step 0 is the pure-noise window (all zeros); step N leaves frame k at 1 - k / W.
  """
  tw = (num_steps - jnp.asarray(step, jnp.float32)) / num_steps
  return jnp.clip(1.0 - (_frame_index(window) / window + tw), 0.0, 1.0)


def preroll_step_sizes(step: jax.Array | int, num_steps: int, window: int) -> jax.Array:
  """(W,) Euler step per frame at pre-roll step i: |t_k(i + 1) - t_k(i)| (0 for frames still at noise)."""
  return jnp.abs(preroll_times(step + 1, num_steps, window) - preroll_times(step, num_steps, window))


def rolling_times(step: jax.Array | int, steps_per_frame: int, window: int) -> jax.Array:
  """(W,) times at rolling sub-step i = 0..S-1 of an emitted frame: t_k = 1 - (k + (S - i) / S) / W."""
  tw = (steps_per_frame - jnp.asarray(step, jnp.float32)) / steps_per_frame
  return 1.0 - (_frame_index(window) + tw) / window


def rolling_step_size(steps_per_frame: int, window: int) -> float:
  """The Euler step 1 / (S W), the same for every frame of the window in the rolling phase."""
  return 1.0 / (steps_per_frame * window)
