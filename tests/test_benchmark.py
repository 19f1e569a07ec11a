"""The benchmark's FLOP accounting and its measurements run (speed itself is never asserted)."""
import jax
import jax.numpy as jnp
import pytest

from rflav_jax import benchmarking
from rflav_jax.convert.flav import abstract_params
from rflav_jax.models import flops
from rflav_jax.models.flav import FLAV, flav_from_preset


def test_flav_b1_window_costs_the_published_flops():
  # RFLAV.md section 6: one forward pass of FLAV-B/1 on a 10-frame window is 2.73 TFLOP per sample.
  model = flav_from_preset("FLAV-B/1", num_classes=10, causal_attn=True)
  assert abs(flops.forward_flops(model) / 1e12 - 2.73) / 2.73 < 0.01
  assert flops.train_step_flops(model, 8) == 8 * 3 * flops.forward_flops(model)
  assert flops.train_step_flops(model.clone(remat=True), 8) == 8 * 4 * flops.forward_flops(model)


@pytest.mark.parametrize("block_type, num_classes", [("c", 0), ("a", 0), ("b", 3)])
def test_analytic_flops_agree_with_xla_cost_analysis(block_type, num_classes):
  # XLA's CPU cost analysis counts every operation; the analytic count leaves out the elementwise work.
  model = FLAV(latent_size=16, patch_size=2, in_channels=4, hidden_size=128, depth=2, num_heads=2,
               num_classes=num_classes, predict_frames=10, n_mels=256, causal_attn=True, block_type=block_type)
  inputs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((1, 10, 16, 16, 4), (1, 10, 10, 256), (1, 10))]
  inputs.append(jax.ShapeDtypeStruct((1,), jnp.int32) if num_classes else None)
  compiled = jax.jit(model.apply).lower({"params": abstract_params(model)}, *inputs).compile()
  xla_flops = benchmarking.flops(compiled)
  assert 0.97 * xla_flops < flops.forward_flops(model) <= xla_flops


def test_measurements_run_on_a_tiny_model():
  model = FLAV(latent_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=2,
               predict_frames=4, n_mels=16)
  params = benchmarking.init_params(model)
  forward = benchmarking.forward(model, params, batch=2, iters=1, warmup=1, repeats=1)
  assert forward["samples_per_s"] > 0 and forward["tflop_per_sample"] > 0
  assert benchmarking.rolling(model, params, streams=1, steps_per_frame=1, frames=2, repeats=1)["frames_per_s"] > 0
  assert benchmarking.clip(model, params, streams=1, steps_per_frame=1, frames=2, repeats=1)["frames_per_s"] > 0
  assert benchmarking.train_step(model, params, batch=2, iters=1, warmup=1, repeats=1)["samples_per_s"] > 0
