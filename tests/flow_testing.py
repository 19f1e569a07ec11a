"""Helpers of the flow tests: official -> channels-last layouts, fixture models, a tiny random FLAV."""
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from rflav_jax.convert.flav import OFFICIAL_ARGS, flav_from_official
from rflav_jax.models.flav import FLAV


def video_layout(x) -> np.ndarray:
  """Official (B, T, C, H, W) -> ours (B, T, H, W, C); also (n, B, C, H, W) -> (n, B, H, W, C)."""
  x = np.asarray(x)
  return np.moveaxis(x, -3, -1)


def audio_layout(x) -> np.ndarray:
  """Official mel (B, T, 1, N, F) -> ours (B, T, F, N); also (n, B, 1, N, F) -> (n, B, F, N)."""
  return np.swapaxes(np.asarray(x)[:, :, 0], -1, -2)


def fixture_model(data: dict):
  """(model, params) of a fixture's official weights; the flow settings in its config are dropped."""
  config = json.loads(str(data["config_json"]))
  state_dict = {k[len("param/"):]: v for k, v in data.items() if k.startswith("param/")}
  return flav_from_official(state_dict, **{k: v for k, v in config.items() if k in OFFICIAL_ARGS})


def tiny_flav(num_classes: int = 0, seed: int = 0):
  """A 1-block FLAV (4x4x4 video, 8 mels, window 4) with random non-zero weights (zero-init layers too)."""
  model = FLAV(latent_size=4, patch_size=2, in_channels=4, hidden_size=16, depth=1, num_heads=2, n_mels=8,
               predict_frames=4, num_classes=num_classes)
  labels = jnp.zeros((1,), jnp.int32) if num_classes else None
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 4, 4, 4)), jnp.zeros((1, 4, 10, 8)),
                          jnp.zeros((1, 4)), labels)["params"]
  rng = np.random.default_rng(seed)  # numpy draws: no compilation per parameter shape
  return model, jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), jnp.float32), shapes)


def noise_window(seed: int, model: FLAV, batch: int):
  """Standard-normal video (B, W, H, W, C) and mel (B, W, F, N) windows of the model's shape."""
  rng = np.random.default_rng(seed)
  size, frames = model.latent_size, model.predict_frames
  return (rng.standard_normal((batch, frames, size, size, model.in_channels), np.float32),
          rng.standard_normal((batch, frames, model.audio_columns, model.n_mels), np.float32))


def point_mass_velocity(x1_v, x1_a) -> Partial:
  """The exact velocity field of data that is always (x1_v, x1_a), frames (H, Wd, C) and (F, N).

  There x = t x1 + (1 - t) eps, so x1 - eps = (x1 - x) / (1 - t): Euler steps (plain or stochastic) reach x1
  exactly at t = 1.
  """
  def velocity(x1_v, x1_a, v, a, t):
    per_frame = lambda x: (1.0 - t).reshape(t.shape + (1,) * (x.ndim - 2))
    return (x1_v - v) / per_frame(v), (x1_a - a) / per_frame(a)

  return Partial(velocity, jnp.asarray(x1_v), jnp.asarray(x1_a))
