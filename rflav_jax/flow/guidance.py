"""Velocity functions of a FLAV model for the sampler: plain, class-conditional and classifier-free guided.

Each returns a `jax.tree_util.Partial` holding the weights, so that the sampler passes them to its compiled
programs as inputs (compiled once, not baked in as constants). Signature: (v, a, t[, labels]) ->
(vel_v, vel_a), with v (B, W, H, Wd, C), a (B, W, F, N), t (B, W) flow times and labels (B,) ints (for
`per_stream_guidance`: the pair (labels (B,) ints, scales (B,) floats)).
"""
import jax
import jax.numpy as jnp
from flax import linen as nn


def _apply(model: nn.Module, params, v, a, t, labels=None):
  return model.apply({"params": params}, v, a, t, labels)


def _apply_guided(model: nn.Module, scale: float, params, v, a, t, labels=None):
  """v_uncond + scale (v_cond - v_uncond), both halves in one batched call; the null label is num_classes.

  scale: a float, or (B,) one per stream."""
  if labels is None:
    raise ValueError("classifier-free guidance needs per-stream labels (B,); pass labels= to the sampler")
  batch = v.shape[0]
  null = jnp.full((batch,), model.num_classes, jnp.int32)
  both = _apply(model, params, jnp.concatenate([v, v]), jnp.concatenate([a, a]), jnp.concatenate([t, t]),
                jnp.concatenate([jnp.asarray(labels, jnp.int32), null]))
  per_stream = lambda x: jnp.reshape(scale, jnp.shape(scale) + (1,) * (x.ndim - jnp.ndim(scale)))  # (B,) or scalar
  return tuple(uncond + per_stream(cond) * (cond - uncond) for cond, uncond in (jnp.split(x, 2) for x in both))


def _apply_per_stream_guided(model: nn.Module, params, v, a, t, labels_and_scales):
  labels, scales = labels_and_scales
  return _apply_guided(model, scales, params, v, a, t, labels)


def model_velocity(model: nn.Module, params) -> jax.tree_util.Partial:
  """The model's own velocity: unconditional (call without labels) or class-conditional (pass labels)."""
  return jax.tree_util.Partial(_apply, model, params)


def classifier_free_guidance(model: nn.Module, params, scale: float) -> jax.tree_util.Partial:
  """Classifier-free guided velocity v_u + scale (v_c - v_u) of a class-conditional model; needs labels."""
  _check_conditional(model)
  return jax.tree_util.Partial(_apply_guided, model, float(scale), params)


def per_stream_guidance(model: nn.Module, params) -> jax.tree_util.Partial:
  """Classifier-free guidance with one scale per stream, called with labels = (labels (B,) ints, scales (B,)
  floats): the scales are inputs of the compiled programs, so changing them compiles nothing."""
  _check_conditional(model)
  return jax.tree_util.Partial(_apply_per_stream_guided, model, params)


def _check_conditional(model: nn.Module) -> None:
  if not getattr(model, "num_classes", 0):
    raise ValueError("classifier-free guidance needs a class-conditional model (num_classes > 0); "
                     "use model_velocity for an unconditional one")

