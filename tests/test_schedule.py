"""Time schedules of rolling rectified flow against the official golden files and closed forms."""
import math

import numpy as np
import pytest

from helpers import load_fixture, rel_l2
from rflav_jax.flow import schedule


def test_training_times_and_weights_match_official():
  data = load_fixture("rolling_loss.npz")
  t = np.asarray(schedule.training_times(data["tw"].reshape(-1), data["rollout"], 4))
  np.testing.assert_allclose(t, data["t"], rtol=1e-5, atol=0)
  weights = np.asarray(schedule.loss_weights(t, "logit_normal"))
  assert rel_l2(weights, data["weights"]) <= 1e-5
  # Element by element against the float64 density (the official float32 one loses digits near 1e-36).
  t64 = data["t"].astype(np.float64)
  exact = np.exp(-np.log(t64 / (1 - t64)) ** 2 / 2) / (math.sqrt(2 * math.pi) * t64 * (1 - t64))
  np.testing.assert_allclose(weights, exact, rtol=1e-5, atol=0)


def test_training_schedules_and_clamp():
  t = np.asarray(schedule.training_times(np.array([0.25, 0.25, 0.9]), np.array([True, False, True]), 4))
  np.testing.assert_allclose(t[0], 1 - (np.arange(4) + 0.25) / 4, rtol=1e-6)  # rolling: spacing 1 / W
  np.testing.assert_allclose(t[1], [0.75, 0.5, 0.25, 1e-6], rtol=1e-6)      # pre-rolling, clamped at 1e-6
  assert t.min() >= schedule.TRAIN_T_MIN and t.max() <= schedule.TRAIN_T_MAX
  np.testing.assert_array_equal(schedule.loss_weights(t, "uniform"), np.ones_like(t))


@pytest.mark.parametrize("window,steps", [(4, 2), (10, 2), (5, 3)])
def test_sampling_schedule_identities(window, steps):
  k = np.arange(window)
  num_pre = window * steps
  np.testing.assert_array_equal(schedule.preroll_times(0, num_pre, window), np.zeros(window))
  np.testing.assert_allclose(schedule.preroll_times(num_pre, num_pre, window), 1 - k / window, atol=1e-6)
  travelled = sum(np.asarray(schedule.preroll_step_sizes(i, num_pre, window)) for i in range(num_pre))
  np.testing.assert_allclose(travelled, 1 - k / window, atol=1e-6)  # pre-roll ends at 1 - k / W
  dt = schedule.rolling_step_size(steps, window)
  np.testing.assert_allclose(schedule.rolling_times(0, steps, window), 1 - (k + 1) / window, atol=1e-6)
  for i in range(steps - 1):  # consecutive sub-steps differ by dt; the last one ends at 1 - k / W
    np.testing.assert_allclose(schedule.rolling_times(i + 1, steps, window),
                               np.asarray(schedule.rolling_times(i, steps, window)) + dt, atol=1e-6)
  np.testing.assert_allclose(np.asarray(schedule.rolling_times(steps - 1, steps, window)) + dt, 1 - k / window,
                             atol=1e-6)


def test_official_network_times_follow_the_schedule():
  """calls_t_rf of the official sampler (window 4, 2 steps per frame) = 1 + 999 t of our schedule."""
  data = load_fixture("rolling_sampler.npz")
  window, steps = 4, 2
  times = [schedule.preroll_times(i, window * steps, window) for i in range(window * steps)]
  while len(times) < len(data["calls_t_rf"]):
    times += [schedule.rolling_times(i, steps, window) for i in range(steps)]
  expected = 1 + 999 * np.stack(times).astype(np.float32)
  np.testing.assert_allclose(expected, data["calls_t_rf"][:, 0], rtol=1e-6, atol=0)


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match="weighting"):
    schedule.loss_weights(np.full((1, 4), 0.5), "cosine")
  with pytest.raises(ValueError, match=r"tw .* must both be \(B,\)"):
    schedule.training_times(np.zeros((3, 1)), np.ones(3, bool), 4)
