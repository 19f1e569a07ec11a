"""The official recipe's EMA schedule (diffusers' EMAModel without use_ema_warmup), checked against diffusers'
formula; bad schedules refused."""
import ml_collections
import numpy as np
import pytest

from rflav_jax.train.state import ema_decay_fn, ema_update


def diffusers_decay(optimization_step: int, decay: float = 0.9999, min_decay: float = 0.0,
                    update_after_step: int = 0) -> float:
  """diffusers.training_utils.EMAModel.get_decay with use_ema_warmup=False, transcribed. EMAModel.step counts
  optimization_step from 1 (it increments it before asking for the decay)."""
  step = max(0, optimization_step - update_after_step - 1)
  if step <= 0:
    return 0.0
  value = min((1 + step) / (10 + step), decay)
  return max(value, min_decay)


def schedule(name: str, decay: float = 0.9999, power: float = 0.75):
  return ema_decay_fn(ml_collections.ConfigDict(dict(schedule=name, decay=decay, power=power)))


@pytest.mark.parametrize("diffusers_step, expected", [(0, 0.0), (1, 2 / 11), (10, 11 / 20), (1000, 1001 / 1010),
                                                      (400_000, 0.9999)])
def test_diffusers_schedule_is_diffusers_formula(diffusers_step, expected):
  """At diffusers' internal step s (= updates done - 1): 0, then (1 + s) / (10 + s), capped at 0.9999."""
  updates = diffusers_step + 1  # what the train step passes: updates done, this one included
  assert diffusers_decay(updates) == pytest.approx(expected, rel=1e-12)
  assert float(schedule("diffusers")(np.int32(updates))) == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_diffusers_schedule_over_a_run_and_its_average():
  decay = schedule("diffusers", decay=0.999)
  counts = np.arange(1, 20_001)
  np.testing.assert_allclose(np.asarray(decay(counts)), [diffusers_decay(int(n), decay=0.999) for n in counts],
                             rtol=1e-6, atol=1e-7)
  # The average itself, as EMAModel.step updates it: shadow -= (1 - decay) (shadow - param), from the initial weights.
  params = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
  ours, theirs = params[0], params[0].astype(np.float64)
  for n, param in enumerate(params[1:], start=1):
    ours = np.asarray(ema_update(ours, param, decay(np.int32(n))))
    theirs = theirs - (1 - diffusers_decay(n, decay=0.999)) * (theirs - param)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_unknown_schedule_and_bad_cap_are_named():
  """(The "power" and "constant" options: tests/test_train.py.)"""
  with pytest.raises(ValueError, match="config.ema.schedule='warmup'"):
    schedule("warmup")
  with pytest.raises(ValueError, match="config.ema.decay=1.0"):
    schedule("diffusers", decay=1.0)
