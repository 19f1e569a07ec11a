"""Velocity functions of a FLAV model for the sampler: plain, class-conditional and classifier-free guided.

Each returns a `jax.tree_util.Partial` holding the weights, so that the sampler passes them to its compiled
programs as inputs (compiled once, not baked in as constants). Signature: (v, a, t[, labels]) ->
(vel_v, vel_a), with v (B, W, H, Wd, C), a (B, W, F, N), t (B, W) flow times and labels (B,) ints.
"""
import jax
import jax.numpy as jnp
from flax import linen as nn


def _apply(model: nn.Module, params, v, a, t, labels=None):
  return model.apply({"params": params}, v, a, t, labels)


def _apply_guided(model: nn.Module, scale: float, params, v, a, t, labels=None):
  """v_uncond + scale (v_cond - v_uncond), both halves in one batched call; the null label is num_classes."""
  if labels is None:
    raise ValueError("classifier-free guidance needs per-stream labels (B,); pass labels= to the sampler")
  batch = v.shape[0]
  null = jnp.full((batch,), model.num_classes, jnp.int32)
  both = _apply(model, params, jnp.concatenate([v, v]), jnp.concatenate([a, a]), jnp.concatenate([t, t]),
                jnp.concatenate([jnp.asarray(labels, jnp.int32), null]))
  return tuple(uncond + scale * (cond - uncond) for cond, uncond in (jnp.split(x, 2) for x in both))


def model_velocity(model: nn.Module, params) -> jax.tree_util.Partial:
  """The model's own velocity: unconditional (call without labels) or class-conditional (pass labels)."""
  return jax.tree_util.Partial(_apply, model, params)


def classifier_free_guidance(model: nn.Module, params, scale: float) -> jax.tree_util.Partial:
  """Classifier-free guided velocity v_u + scale (v_c - v_u) of a class-conditional model; needs labels."""
  if not getattr(model, "num_classes", 0):
    raise ValueError("classifier-free guidance needs a class-conditional model (num_classes > 0); "
                     "use model_velocity for an unconditional one")
  return jax.tree_util.Partial(_apply_guided, model, float(scale), params)

