"""Rolling rectified-flow loss: official golden value, a closed form, and the key-based draws."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import audio_layout, fixture_model, load_fixture, rel_l2, video_layout
from rflav_jax.flow import loss as flow_loss


def linear_velocity(x_v, x_a, t):
  """A stand-in network: a fixed affine map of each modality that also depends on t and the other modality."""
  mix = jnp.mean(x_a, axis=(2, 3))[:, :, None, None, None]
  return 0.5 * x_v - t[:, :, None, None, None] + mix, -0.25 * x_a + t[:, :, None, None] ** 2


def test_loss_matches_official():
  data = load_fixture("rolling_loss.npz")
  model, params = fixture_model(data)
  velocity_fn = lambda v, a, t: model.apply({"params": params}, v, a, t)
  loss, aux = jax.jit(flow_loss.rolling_flow_loss, static_argnums=0)(
      velocity_fn, video_layout(data["v"]), audio_layout(data["a"]), data["tw"].reshape(-1), data["rollout"],
      video_layout(data["z0_v"]), audio_layout(data["z0_a"]))
  assert abs(float(loss) / float(data["loss"]) - 1) <= 1e-5
  assert rel_l2(aux["t"], data["t"]) <= 1e-5
  assert rel_l2(aux["weights"], data["weights"]) <= 1e-5
  np.testing.assert_allclose(float(aux["loss_video"] + aux["loss_audio"]), float(loss), rtol=1e-6)


@pytest.mark.parametrize("weighting", ["logit_normal", "uniform"])
def test_loss_equals_its_definition(weighting):
  rng = np.random.default_rng(0)
  batch, window = 3, 4
  v, z_v = rng.normal(size=(2, batch, window, 2, 2, 3)).astype(np.float32)
  a, z_a = rng.normal(size=(2, batch, window, 10, 5)).astype(np.float32)
  tw, rollout = np.array([0.1, 0.5, 0.95], np.float32), np.array([True, False, False])
  loss, aux = flow_loss.rolling_flow_loss(linear_velocity, v, a, tw, rollout, z_v, z_a, weighting)

  k = np.arange(window)
  t = np.where(rollout[:, None], 1 - (k + tw[:, None]) / window, 1 - (k / window + tw[:, None]))
  t = np.clip(t, 1e-6, 1 - 1e-6).astype(np.float64)
  w = np.exp(-np.log(t / (1 - t)) ** 2 / 2) / (np.sqrt(2 * np.pi) * t * (1 - t))
  w = w if weighting == "logit_normal" else np.ones_like(t)
  x_v = t[:, :, None, None, None] * v + (1 - t[:, :, None, None, None]) * z_v
  x_a = t[:, :, None, None] * a + (1 - t[:, :, None, None]) * z_a
  vel_v, vel_a = (np.asarray(x, np.float64) for x in linear_velocity(x_v, x_a, t))
  expected_v = np.mean(w * np.mean((vel_v - (v - z_v)) ** 2, axis=(2, 3, 4)))
  expected_a = np.mean(w * np.mean((vel_a - (a - z_a)) ** 2, axis=(2, 3)))
  np.testing.assert_allclose(float(aux["loss_video"]), expected_v, rtol=1e-5)
  np.testing.assert_allclose(float(aux["loss_audio"]), expected_a, rtol=1e-5)
  np.testing.assert_allclose(float(loss), expected_v + expected_a, rtol=1e-5)


@pytest.mark.slow
def test_key_based_loss_draws_the_documented_distributions():
  batch, window = 4000, 4
  v, a = jnp.zeros((batch, window, 1, 1, 1)), jnp.zeros((batch, window, 10, 1))
  loss_fn = jax.jit(lambda key, p: flow_loss.sample_rolling_flow_loss(linear_velocity, v, a, key, p_rollout=p),
                    static_argnums=1)
  loss, aux = loss_fn(jax.random.key(0), 0.8)
  tw, rollout = np.asarray(aux["tw"]), np.asarray(aux["rollout"])
  assert abs(rollout.mean() - 0.8) < 0.03 and abs(tw.mean() - 0.5) < 0.03
  assert tw.min() >= 0 and tw.max() < 1
  k = np.arange(window)
  expected_t = np.where(rollout[:, None], 1 - (k + tw[:, None]) / window, 1 - (k / window + tw[:, None]))
  np.testing.assert_allclose(aux["t"], np.clip(expected_t, 1e-6, 1 - 1e-6), atol=1e-6)
  assert float(loss_fn(jax.random.key(0), 0.8)[0]) == float(loss)


def test_bad_inputs_name_the_problem():
  v, a = np.zeros((2, 4, 2, 2, 3), np.float32), np.zeros((2, 4, 10, 5), np.float32)
  tw, rollout = np.zeros(2, np.float32), np.ones(2, bool)
  with pytest.raises(ValueError, match="z0_v"):
    flow_loss.rolling_flow_loss(linear_velocity, v, a, tw, rollout, v[:, :3], a)
  with pytest.raises(ValueError, match="tw"):
    flow_loss.rolling_flow_loss(linear_velocity, v, a, tw[:1], rollout, v, a)
  with pytest.raises(ValueError, match="p_rollout"):
    flow_loss.sample_rolling_flow_loss(linear_velocity, v, a, jax.random.key(0), p_rollout=1.5)
