"""The benchmark's FLOP accounting and its measurements run (speed itself is never asserted)."""
import jax
import jax.numpy as jnp

from rflav_jax import benchmarking
from rflav_jax.convert.flav import abstract_params
from rflav_jax.models.flav import FLAV, flav_from_preset


def test_flav_b1_window_costs_the_publishedflops():
  # RFLAV.md section 6: one forward pass of FLAV-B/1 on a 10-frame window is 2.73 TFLOP per sample.
  model = flav_from_preset("FLAV-B/1", num_classes=10, causal_attn=True)
  shapes = [jax.ShapeDtypeStruct(s, d) for s, d in (((1, 10, 32, 32, 4), jnp.float32), ((1, 10, 10, 256), jnp.float32),
                                                    ((1, 10), jnp.float32), ((1,), jnp.int32))]
  lowered = jax.jit(model.apply).lower({"params": abstract_params(model)}, *shapes)
  tflop = benchmarking.flops(lowered) / 1e12
  assert abs(tflop - 2.73) / 2.73 < 0.01


def test_measurements_run_on_a_tiny_model():
  model = FLAV(latent_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=2,
               predict_frames=4, n_mels=16)
  params = benchmarking.init_params(model)
  forward = benchmarking.forward(model, params, batch=2, iters=1, warmup=1, repeats=1)
  assert forward["samples_per_s"] > 0 and forward["tflop_per_sample"] > 0
  assert benchmarking.rolling(model, params, streams=1, steps_per_frame=1, frames=2, repeats=1)["frames_per_s"] > 0
  assert benchmarking.clip(model, params, streams=1, steps_per_frame=1, frames=2, repeats=1)["frames_per_s"] > 0
  assert benchmarking.train_step(model, params, batch=2, iters=1, warmup=1, repeats=1)["samples_per_s"] > 0
