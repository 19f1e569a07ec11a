"""Speed measurements of FLAV on the available devices (RFLAV.md section 6 measures the official code likewise).

Each measurement compiles first, runs `warmup` untimed iterations, then times `iters` iterations ending in
`block_until_ready`, and reports the median of `repeats` such timings. FLOP counts come from XLA's cost
analysis of the compiled program.
"""
import functools
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from rflav_jax.flow.guidance import model_velocity
from rflav_jax.flow.loss import sample_rolling_flow_loss
from rflav_jax.flow.sampling import RollingSampler, Window
from rflav_jax.models.flav import FLAV


def _median_seconds(run: Callable[[], object], iters: int, warmup: int, repeats: int) -> float:
  """Median over `repeats` of the wall time of `iters` calls of run(), per call."""
  for _ in range(warmup):
    jax.block_until_ready(run())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(iters):
      out = run()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / iters)
  return statistics.median(times)


def _inputs(model: FLAV, batch: int, key):
  k1, k2, k3 = jax.random.split(key, 3)
  frames, size = model.predict_frames, model.latent_size
  v = jax.random.normal(k1, (batch, frames, size, size, model.in_channels))
  a = jax.random.normal(k2, (batch, frames, model.audio_columns, model.n_mels))
  t = jax.random.uniform(k3, (batch, frames))
  y = jnp.zeros((batch,), jnp.int32) if model.num_classes else None
  return v, a, t, y


def init_params(model: FLAV, seed: int = 0):
  return jax.jit(model.init)(jax.random.key(seed), *_inputs(model, 1, jax.random.key(seed)))["params"]


def forward(model: FLAV, params, batch: int, iters: int, warmup: int = 2, repeats: int = 3) -> dict:
  """One forward pass on a full window: seconds, samples/s and achieved TFLOP/s."""
  inputs = _inputs(model, batch, jax.random.key(1))
  compiled = jax.jit(model.apply).lower({"params": params}, *inputs).compile()
  total_flops = flops(compiled)
  seconds = _median_seconds(lambda: compiled({"params": params}, *inputs), iters, warmup, repeats)
  return {"batch": batch, "seconds": seconds, "samples_per_s": batch / seconds, "tflop_per_sample": total_flops / batch / 1e12,
          "tflop_per_s": total_flops / seconds / 1e12}


def rolling(model: FLAV, params, streams: int, steps_per_frame: int, frames: int, repeats: int = 3) -> dict:
  """Steady-state rolling generation (after pre-roll): frames/s summed over streams."""
  sampler = RollingSampler(model_velocity(model, params), steps_per_frame)
  v, a, _, y = _inputs(model, streams, jax.random.key(2))
  window = sampler.start(Window(v, a), y)
  noise = Window(jnp.zeros((frames, *v.shape[:1], *v.shape[2:])), jnp.zeros((frames, *a.shape[:1], *a.shape[2:])))
  seconds = _median_seconds(lambda: sampler.roll(window, noise, y), 1, 1, repeats)
  return {"streams": streams, "frames": frames, "frames_per_s": streams * frames / seconds}


def clip(model: FLAV, params, streams: int, steps_per_frame: int, frames: int, repeats: int = 3) -> dict:
  """A clip of `frames` frames from pure noise, pre-roll included: frames/s summed over streams."""
  sampler = RollingSampler(model_velocity(model, params), steps_per_frame)
  v, a, _, y = _inputs(model, streams, jax.random.key(3))
  noise = Window(jnp.zeros((frames, *v.shape[:1], *v.shape[2:])), jnp.zeros((frames, *a.shape[:1], *a.shape[2:])))
  seconds = _median_seconds(lambda: sampler.generate(Window(v, a), noise, y), 1, 1, repeats)
  return {"streams": streams, "frames": frames, "frames_per_s": streams * frames / seconds}


def train_step(model: FLAV, params, batch: int, iters: int, warmup: int = 2, repeats: int = 3) -> dict:
  """One AdamW step of the rolling flow loss (the released recipe's optimiser): samples/s and peak memory."""
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4, weight_decay=0.02))
  v, a, _, y = _inputs(model, batch, jax.random.key(4))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, key):
    def loss_fn(p):
      apply = lambda v_, a_, t_: model.apply({"params": p}, v_, a_, t_, y, train=True, rngs={"dropout": key})
      return sample_rolling_flow_loss(apply, v, a, key)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = jax.tree.map(jnp.copy, params)  # the step donates its inputs
  state = [params, optimizer.init(params)]

  def run():
    state[0], state[1], loss = step(state[0], state[1], jax.random.key(5))
    return loss

  seconds = _median_seconds(run, iters, warmup, repeats)
  stats = jax.local_devices()[0].memory_stats() or {}
  return {"batch": batch, "samples_per_s": batch / seconds, "peak_gb": stats.get("peak_bytes_in_use", 0) / 1e9}


def flops(compiled) -> float:
  """FLOPs of a lowered or compiled jax program, from XLA's cost analysis."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", 0.0))
