"""The compiled rolling programs: pre-roll and rolling loops as `lax.scan`s, jitted and split over devices.

A window of W frames moves along each stream; frame k of the window sits at flow time 1 - k / W (1 = clean).
Pre-roll: N Euler steps (N = W S by default) take a pure-noise window there. Then, per emitted frame: frame 0 is
emitted, the window shifts left, a fresh frame is appended, and S Euler steps of 1 / (S W) bring every frame one
slot closer to clean. Each new frame costs S network evaluations.

Parallelism: the B streams are independent. They are split over a 1-D mesh of devices (axis STREAMS) with
`jax.shard_map` inside `jax.jit`: each device runs the same program on its own streams, with their own random
keys, and no communication. One device is the same code path. Every program is compiled once per shape and
reused across calls: jit caches on a hashable `Plan`, which holds the velocity function's static part (its
arrays, e.g. the weights, are program inputs; see `split_arrays`).
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from rflav_jax.flow import schedule
from rflav_jax.flow.steps import Conditioning, Window, euler_step, guided_euler_step

STREAMS = "streams"  # the mesh axis that the independent streams are split over
BATCH, SEQUENCE = P(STREAMS), P(None, STREAMS)  # specs of (B, ...) and (n, B, ...) arrays


def split_arrays(tree) -> tuple[tuple, list]:
  """Splits a pytree (e.g. a Partial holding weights) into a hashable static part and its array leaves."""
  leaves, treedef = jax.tree.flatten(tree)
  is_array = tuple(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
  static = tuple(None if array else x for x, array in zip(leaves, is_array))
  return (treedef, static, is_array), [x for x, array in zip(leaves, is_array) if array]


def join_arrays(static: tuple, arrays: list):
  """The inverse of `split_arrays`: the pytree of its static part and arrays."""
  treedef, leaves, is_array = static
  arrays = iter(arrays)
  return jax.tree.unflatten(treedef, [next(arrays) if array else x for x, array in zip(leaves, is_array)])


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything static about a sampler; the jit cache key of its programs."""
  velocity_static: tuple
  conditioning: Conditioning | None
  steps_per_frame: int
  preroll_steps: int | None  # None: W * steps_per_frame
  stochasticity: float
  mesh: Mesh

  def sharded(self, local_fn, in_specs, out_specs):
    return jax.shard_map(local_fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs)

  def num_preroll_steps(self, window_size: int) -> int:
    return self.preroll_steps or window_size * self.steps_per_frame


def _step(velocity_fn, plan: Plan, labels, window, t, dt, rolling: bool) -> Window:
  """One step of this device's streams; a guided step averages over all of them (B = local streams x devices)."""
  if plan.conditioning is None:
    return euler_step(velocity_fn, window, t, dt, labels, plan.stochasticity)
  return guided_euler_step(velocity_fn, window, t, dt, plan.conditioning, labels, plan.stochasticity,
                           rolling=rolling, num_streams=window.v.shape[0] * plan.mesh.size)


def _preroll(velocity_fn, plan: Plan, labels, window: Window) -> Window:
  """N pre-roll steps: pure-noise window -> frame k at time 1 - k / W."""
  frames = window.v.shape[1]
  num_steps = plan.num_preroll_steps(frames)

  def body(window, i):
    t = schedule.preroll_times(i, num_steps, frames)
    dt = schedule.preroll_step_sizes(i, num_steps, frames)
    return _step(velocity_fn, plan, labels, window, t, dt, rolling=False), None

  return lax.scan(body, window, jnp.arange(num_steps))[0]


def _roll(velocity_fn, plan: Plan, labels, window: Window) -> Window:
  """S rolling steps of 1 / (S W): frame k goes from 1 - (k + 1) / W to 1 - k / W."""
  frames, steps_per_frame = window.v.shape[1], plan.steps_per_frame
  dt = jnp.full((frames,), schedule.rolling_step_size(steps_per_frame, frames), jnp.float32)

  def body(window, i):
    t = schedule.rolling_times(i, steps_per_frame, frames)
    return _step(velocity_fn, plan, labels, window, t, dt, rolling=True), None

  return lax.scan(body, window, jnp.arange(steps_per_frame))[0]


def _emit_and_append(window: Window, incoming: Window) -> tuple[Window, tuple[jax.Array, jax.Array]]:
  """Takes out frame 0 (clean) of both modalities, shifts the window left and appends `incoming`."""
  frame = (window.v[:, 0], window.a[:, 0])
  frames = jax.tree.map(lambda w, f: jnp.concatenate([w[:, 1:], f[:, None]], axis=1),
                        window._replace(noise_key=None), incoming._replace(noise_key=None))
  return frames._replace(noise_key=window.noise_key), frame


def _roll_frames(velocity_fn, plan: Plan, labels, window: Window, incoming: Window):
  """Per incoming frame (n, B, ...): emit frame 0, append, roll. Returns (window, frames (n, B, ...))."""

  def body(window, incoming):
    window, frame = _emit_and_append(window, incoming)
    return _roll(velocity_fn, plan, labels, window), frame

  return lax.scan(body, window, incoming)


def _swap_frames_batch(frames):
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), frames)


@functools.partial(jax.jit, static_argnums=0)
def compiled_preroll(plan: Plan, velocity_arrays, labels, window):
  def local(velocity_arrays, labels, window):
    velocity_fn = join_arrays(plan.velocity_static, velocity_arrays)
    return _preroll(velocity_fn, plan, labels, window)

  return plan.sharded(local, (P(), BATCH, BATCH), BATCH)(velocity_arrays, labels, window)


@functools.partial(jax.jit, static_argnums=0)
def compiled_roll(plan: Plan, velocity_arrays, labels, window, incoming):
  def local(velocity_arrays, labels, window, incoming):
    velocity_fn = join_arrays(plan.velocity_static, velocity_arrays)
    window, frames = _roll_frames(velocity_fn, plan, labels, window, incoming)
    return window, _swap_frames_batch(frames)

  return plan.sharded(local, (P(), BATCH, BATCH, SEQUENCE), BATCH)(velocity_arrays, labels, window, incoming)


@functools.partial(jax.jit, static_argnums=0)
def compiled_generate(plan: Plan, velocity_arrays, labels, window, incoming):
  """Pre-roll, then n emitted frames; the last fresh frame is appended without rolling (n > 0)."""

  def local(velocity_arrays, labels, window, incoming):
    velocity_fn = join_arrays(plan.velocity_static, velocity_arrays)
    window = _preroll(velocity_fn, plan, labels, window)
    head, last = jax.tree.map(lambda x: x[:-1], incoming), jax.tree.map(lambda x: x[-1], incoming)
    window, frames = _roll_frames(velocity_fn, plan, labels, window, head)
    window, final = _emit_and_append(window, last)
    frames = jax.tree.map(lambda f, x: jnp.concatenate([f, x[None]]), frames, final)
    return window, _swap_frames_batch(frames)

  return plan.sharded(local, (P(), BATCH, BATCH, SEQUENCE), BATCH)(velocity_arrays, labels, window, incoming)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def compiled_fresh_frames(mesh: Mesh, stream_keys, first, num_frames: int, frame_v: tuple, frame_a: tuple):
  """Fresh noise frames first..first+n-1 of every stream: (n, B, *frame_v), (n, B, *frame_a)."""
  size_v = math.prod(frame_v)

  def local(stream_keys, first):
    def draw(key, j):  # one draw per frame (cheaper to compile than one per modality), video first
      x = jax.random.normal(jax.random.fold_in(key, j), (size_v + math.prod(frame_a),))
      return x[:size_v].reshape(frame_v), x[size_v:].reshape(frame_a)

    per_frame = lambda j: jax.vmap(draw, in_axes=(0, None))(stream_keys, j)
    return jax.vmap(per_frame)(first + jnp.arange(num_frames))

  return jax.shard_map(local, mesh=mesh, in_specs=(BATCH, P()), out_specs=SEQUENCE)(stream_keys, first)

