"""Rolling-window generation of unbounded audio-video streams (RFLAV.md section 3, "Sampling").

A window of W frames moves along each stream; frame k of the window sits at flow time 1 - k / W
(1 = clean). Pre-roll: N Euler steps (N = W S by default) take a pure-noise window there. Then, per
emitted frame: frame 0 is emitted, the window shifts left, a fresh frame is appended, and S Euler steps
of 1 / (S W) bring every frame one slot closer to clean. Each new frame costs S network evaluations.

Stochastic steps (stochasticity s in (0, 1]; 0, the release's plain Euler, by default): after each step, the
share s of the noise left in every frame is drawn afresh (see `renoise`), so a step can undo part of an earlier
step's error instead of carrying it along the window. The last step of a frame (to t = 1) adds none.

Layouts are channels-last: video window (B, W, H, Wd, C), mel window (B, W, F, N). A velocity function
maps a window and its per-frame times t (B, W) to velocities: `velocity_fn(v, a, t) -> (vel_v, vel_a)`,
or `velocity_fn(v, a, t, labels)` when per-stream labels (B,) are given (see `rflav_jax.flow.guidance`).
Pass model weights inside a `jax.tree_util.Partial` (as `guidance` does) so they are inputs of the
compiled programs rather than constants baked into them.

Parallelism: the B streams are independent. They are split over a 1-D mesh of devices (axis "streams",
all local devices by default) with `jax.shard_map` inside `jax.jit`: each device runs the same program
on its own streams, with their own random keys, and no communication. One device is the same code path.
Every program is compiled once per shape and reused across calls (jit caches on a hashable `_Plan`).

Random draws: stream b draws the fresh frame appended after its j-th emitted frame (video and mel
values from one normal draw) from fold_in(keys[b], j), keys = jax.random.split(key, B). Stochastic steps
draw from a per-stream key carried in the window (`Window.noise_key`, from `step_noise_keys`), split at every
step. So results do not depend on how the streams are spread over devices, and a stream cut into chunks
equals one long call. Every fresh frame can be passed in instead.
"""
import dataclasses
import functools
import itertools
import math
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rflav_jax.flow import schedule

STREAMS = "streams"  # the mesh axis that the independent streams are split over
GIVEN_MODALITIES = ("audio", "video")
# A frame whose step ends at t + dt = 1 (frame 0 on its last step) gets no guidance; float tolerance.
_CLEAN_TOL = 1e-6
_STEP_NOISE_TAG = 0x5703  # folded into the sampling key to make the stochastic steps' keys


class Window(NamedTuple):
  """Per-stream sampler state, batch first: v (B, W, H, Wd, C), a (B, W, F, N).

  In conditional modes the given modality's slot holds its CLEAN frames and given_noise (same shape)
  the noise eps held for each of them while it stays in the window. noise_key (B,) holds each stream's PRNG
  key for stochastic steps (None for plain Euler). The same tree also carries single frames (no W axis) and
  sequences of frames (n, B, ...), without keys.
  """
  v: jax.Array
  a: jax.Array
  given_noise: jax.Array | None = None
  noise_key: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Conditioning:
  """Generation of one modality from a given other one, with gradient guidance.

  given: "audio" (audio -> video) or "video" (video -> audio).
  guidance_scale: weight of the guidance term; 0 only feeds the given modality at each frame's noise level.
  """
  given: str
  guidance_scale: float = 1.0

  def __post_init__(self):
    if self.given not in GIVEN_MODALITIES:
      raise ValueError(f"Conditioning.given={self.given!r}: expected one of {GIVEN_MODALITIES}")
    if self.guidance_scale < 0:
      raise ValueError(f"Conditioning.guidance_scale={self.guidance_scale} must be >= 0")


# ----------------------------------------------------------------------------------------------------
# Euler steps on one device's streams.


def _per_frame(values: jax.Array, x: jax.Array) -> jax.Array:
  """(B, W) per-frame values, broadcastable against a window x (B, W, ...)."""
  return values.reshape(values.shape + (1,) * (x.ndim - 2))


def _call(velocity_fn: Callable, v, a, t, labels):
  return velocity_fn(v, a, t) if labels is None else velocity_fn(v, a, t, labels)


def step_noise_keys(key: jax.Array, batch: int) -> jax.Array:
  """(B,) per-stream keys for `Window.noise_key`, independent of the fresh frames drawn from the same key."""
  return jax.random.split(jax.random.fold_in(key, _STEP_NOISE_TAG), batch)


def renoise(x: jax.Array, stepped: jax.Array, velocity: jax.Array, t: jax.Array, t_next: jax.Array,
            stochasticity: float, fresh: jax.Array) -> jax.Array:
  """An Euler step's result with the share `stochasticity` of its noise drawn afresh.

  x (B, W, ...) at per-frame times t (B, W) is t x1 + (1 - t) eps; velocity estimates x1 - eps, so the noise
  estimate is eps_hat = x - t velocity, and the Euler result `stepped` at t_next holds (1 - t_next) eps_hat.
  That part becomes (1 - t_next) (sqrt(1 - s^2) eps_hat + s fresh), fresh ~ N(0, 1) like x: the same variance,
  and no change where t_next = 1. s = 0 returns `stepped`.
  """
  eps_hat = x - _per_frame(t, x) * velocity
  change = (math.sqrt(1.0 - stochasticity ** 2) - 1.0) * eps_hat + stochasticity * fresh
  return stepped + _per_frame(1.0 - t_next, x) * change


def _fresh_noise(window: Window, shapes: Sequence[tuple]) -> tuple[Window, list[jax.Array]]:
  """Per stream, one N(0, 1) draw of each per-stream shape from its noise key; the keys move on."""
  if window.noise_key is None:
    raise ValueError("stochastic steps need Window.noise_key: one PRNG key per stream (step_noise_keys)")
  keys = jax.vmap(jax.random.split)(window.noise_key)  # (B, 2)
  sizes = [math.prod(shape) for shape in shapes]
  flat = jax.vmap(lambda key: jax.random.normal(key, (sum(sizes),)))(keys[:, 1])
  parts = jnp.split(flat, np.cumsum(sizes)[:-1].tolist(), axis=1)
  return window._replace(noise_key=keys[:, 0]), [p.reshape((-1,) + tuple(s)) for p, s in zip(parts, shapes)]


def euler_step(velocity_fn: Callable, window: Window, t: jax.Array, dt: jax.Array, labels=None,
               stochasticity: float = 0.0) -> Window:
  """Joint generation: x += dt_k v_hat(x, t) for both modalities; t, dt (W,) per frame; optionally `renoise`d."""
  batch, frames = window.v.shape[:2]
  t, dt = jnp.broadcast_to(t, (batch, frames)), jnp.broadcast_to(dt, (batch, frames))
  vel_v, vel_a = _call(velocity_fn, window.v, window.a, t, labels)
  v = window.v + _per_frame(dt, window.v) * vel_v
  a = window.a + _per_frame(dt, window.a) * vel_a
  if stochasticity:
    window, (fresh_v, fresh_a) = _fresh_noise(window, (window.v.shape[1:], window.a.shape[1:]))
    v = renoise(window.v, v, vel_v, t, t + dt, stochasticity, fresh_v)
    a = renoise(window.a, a, vel_a, t, t + dt, stochasticity, fresh_a)
  return window._replace(v=v, a=a)


def guided_euler_step(velocity_fn: Callable, window: Window, t: jax.Array, dt: jax.Array,
                      conditioning: Conditioning, labels=None, stochasticity: float = 0.0) -> Window:
  """Conditional generation: one Euler step of the generated modality x with gradient guidance.

  The given modality g enters the network at each frame's noise level, g_t = t g + (1 - t) eps, and
  x += dt v_hat_x - [t + dt != 1] dt scale grad_x J, J = sum over streams of the mean over the window
  of ((g - eps) - v_hat_g)^2, the given modality's flow-matching error. (The official code averages J
  over the batch too, which divides the guidance by B; a per-stream mean keeps streams independent and
  equals it for B = 1.) The given modality's slot keeps its clean frames.

  Args:
    velocity_fn, labels: as in the module docstring.
    window: the generated modality's noisy window, the given one's clean window and given_noise.
    t, dt: (W,) per-frame times and Euler steps.
    conditioning: which modality is given and the guidance scale.
    stochasticity: share of the generated modality's noise drawn afresh after the step (`renoise`).
  """
  audio_given = conditioning.given == "audio"
  x, given = (window.v, window.a) if audio_given else (window.a, window.v)
  batch, frames = x.shape[:2]
  t_b, dt_b = jnp.broadcast_to(t, (batch, frames)), jnp.broadcast_to(dt, (batch, frames))
  given_t = _per_frame(t_b, given) * given + (1.0 - _per_frame(t_b, given)) * window.given_noise
  target = given - window.given_noise

  def guidance_objective(x):
    """(J, the generated modality's velocity)."""
    if audio_given:
      vel_x, vel_given = _call(velocity_fn, x, given_t, t_b, labels)
    else:
      vel_given, vel_x = _call(velocity_fn, given_t, x, t_b, labels)
    error = jnp.mean(jnp.square(target - vel_given), axis=tuple(range(1, given.ndim)))
    return jnp.sum(error), vel_x

  if conditioning.guidance_scale:
    grad, vel_x = jax.grad(guidance_objective, has_aux=True)(x)
    guided = (t_b + dt_b < 1.0 - _CLEAN_TOL).astype(x.dtype)
    stepped = x + _per_frame(dt_b, x) * vel_x - _per_frame(guided * dt_b, x) * conditioning.guidance_scale * grad
  else:
    vel_x = guidance_objective(x)[1]
    stepped = x + _per_frame(dt_b, x) * vel_x
  if stochasticity:
    window, (fresh,) = _fresh_noise(window, (x.shape[1:],))
    stepped = renoise(x, stepped, vel_x, t_b, t_b + dt_b, stochasticity, fresh)
  return window._replace(v=stepped) if audio_given else window._replace(a=stepped)


def _step(velocity_fn, plan: "_Plan", labels, window, t, dt) -> Window:
  if plan.conditioning is None:
    return euler_step(velocity_fn, window, t, dt, labels, plan.stochasticity)
  return guided_euler_step(velocity_fn, window, t, dt, plan.conditioning, labels, plan.stochasticity)


def _preroll(velocity_fn, plan: "_Plan", labels, window: Window) -> Window:
  """N pre-roll steps: pure-noise window -> frame k at time 1 - k / W."""
  frames = window.v.shape[1]
  num_steps = plan.num_preroll_steps(frames)

  def body(window, i):
    t = schedule.preroll_times(i, num_steps, frames)
    dt = schedule.preroll_step_sizes(i, num_steps, frames)
    return _step(velocity_fn, plan, labels, window, t, dt), None

  return lax.scan(body, window, jnp.arange(num_steps))[0]


def _roll(velocity_fn, plan: "_Plan", labels, window: Window) -> Window:
  """S rolling steps of 1 / (S W): frame k goes from 1 - (k + 1) / W to 1 - k / W."""
  frames, steps_per_frame = window.v.shape[1], plan.steps_per_frame
  dt = jnp.full((frames,), schedule.rolling_step_size(steps_per_frame, frames), jnp.float32)

  def body(window, i):
    t = schedule.rolling_times(i, steps_per_frame, frames)
    return _step(velocity_fn, plan, labels, window, t, dt), None

  return lax.scan(body, window, jnp.arange(steps_per_frame))[0]


def _emit_and_append(window: Window, incoming: Window) -> tuple[Window, tuple[jax.Array, jax.Array]]:
  """Takes out frame 0 (clean) of both modalities, shifts the window left and appends `incoming`."""
  frame = (window.v[:, 0], window.a[:, 0])
  frames = jax.tree.map(lambda w, f: jnp.concatenate([w[:, 1:], f[:, None]], axis=1),
                        window._replace(noise_key=None), incoming._replace(noise_key=None))
  return frames._replace(noise_key=window.noise_key), frame


def _roll_frames(velocity_fn, plan: "_Plan", labels, window: Window, incoming: Window):
  """Per incoming frame (n, B, ...): emit frame 0, append, roll. Returns (window, frames (n, B, ...))."""

  def body(window, incoming):
    window, frame = _emit_and_append(window, incoming)
    return _roll(velocity_fn, plan, labels, window), frame

  return lax.scan(body, window, incoming)


# ----------------------------------------------------------------------------------------------------
# Compiled, device-parallel programs.


def _split_arrays(tree) -> tuple[tuple, list]:
  """Splits a pytree (e.g. a Partial holding weights) into a hashable static part and its array leaves."""
  leaves, treedef = jax.tree.flatten(tree)
  is_array = tuple(isinstance(x, (jax.Array, np.ndarray)) for x in leaves)
  static = tuple(None if array else x for x, array in zip(leaves, is_array))
  return (treedef, static, is_array), [x for x, array in zip(leaves, is_array) if array]


def _join_arrays(static: tuple, arrays: list):
  treedef, leaves, is_array = static
  arrays = iter(arrays)
  return jax.tree.unflatten(treedef, [next(arrays) if array else x for x, array in zip(leaves, is_array)])


@dataclasses.dataclass(frozen=True)
class _Plan:
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


_BATCH, _SEQUENCE = P(STREAMS), P(None, STREAMS)  # specs of (B, ...) and (n, B, ...) arrays


def _swap_frames_batch(frames):
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), frames)


@functools.partial(jax.jit, static_argnums=0)
def _compiled_preroll(plan: _Plan, velocity_arrays, labels, window):
  def local(velocity_arrays, labels, window):
    velocity_fn = _join_arrays(plan.velocity_static, velocity_arrays)
    return _preroll(velocity_fn, plan, labels, window)

  return plan.sharded(local, (P(), _BATCH, _BATCH), _BATCH)(velocity_arrays, labels, window)


@functools.partial(jax.jit, static_argnums=0)
def _compiled_roll(plan: _Plan, velocity_arrays, labels, window, incoming):
  def local(velocity_arrays, labels, window, incoming):
    velocity_fn = _join_arrays(plan.velocity_static, velocity_arrays)
    window, frames = _roll_frames(velocity_fn, plan, labels, window, incoming)
    return window, _swap_frames_batch(frames)

  return plan.sharded(local, (P(), _BATCH, _BATCH, _SEQUENCE), _BATCH)(velocity_arrays, labels, window, incoming)


@functools.partial(jax.jit, static_argnums=0)
def _compiled_generate(plan: _Plan, velocity_arrays, labels, window, incoming):
  """Pre-roll, then n emitted frames; the last fresh frame is appended without rolling (n > 0)."""

  def local(velocity_arrays, labels, window, incoming):
    velocity_fn = _join_arrays(plan.velocity_static, velocity_arrays)
    window = _preroll(velocity_fn, plan, labels, window)
    head, last = jax.tree.map(lambda x: x[:-1], incoming), jax.tree.map(lambda x: x[-1], incoming)
    window, frames = _roll_frames(velocity_fn, plan, labels, window, head)
    window, final = _emit_and_append(window, last)
    frames = jax.tree.map(lambda f, x: jnp.concatenate([f, x[None]]), frames, final)
    return window, _swap_frames_batch(frames)

  return plan.sharded(local, (P(), _BATCH, _BATCH, _SEQUENCE), _BATCH)(velocity_arrays, labels, window, incoming)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _compiled_fresh_frames(mesh: Mesh, stream_keys, first, num_frames: int, frame_v: tuple, frame_a: tuple):
  """Fresh noise frames first..first+n-1 of every stream: (n, B, *frame_v), (n, B, *frame_a)."""
  size_v = math.prod(frame_v)

  def local(stream_keys, first):
    def draw(key, j):  # one draw per frame (cheaper to compile than one per modality), video first
      x = jax.random.normal(jax.random.fold_in(key, j), (size_v + math.prod(frame_a),))
      return x[:size_v].reshape(frame_v), x[size_v:].reshape(frame_a)

    per_frame = lambda j: jax.vmap(draw, in_axes=(0, None))(stream_keys, j)
    return jax.vmap(per_frame)(first + jnp.arange(num_frames))

  return jax.shard_map(local, mesh=mesh, in_specs=(_BATCH, P()), out_specs=_SEQUENCE)(stream_keys, first)


# ----------------------------------------------------------------------------------------------------
# Public interface.


def _check_window(init: Window) -> tuple[int, int]:
  if init.v.ndim != 5:
    raise ValueError(f"init_v has shape {init.v.shape}; expected a video window (B, W, H, Wd, C), channels-last")
  if init.a.ndim != 4 or init.a.shape[:2] != init.v.shape[:2]:
    raise ValueError(f"init_a has shape {init.a.shape}; expected a mel window (B, W, F, N) with (B, W) = "
                     f"{init.v.shape[:2]} as in init_v")
  return init.v.shape[:2]


def check_stochasticity(stochasticity: float, name: str = "stochasticity") -> None:
  """Raises ValueError, naming the setting `name`, unless 0 <= stochasticity <= 1."""
  if not 0.0 <= stochasticity <= 1.0:
    raise ValueError(f"{name}={stochasticity}: expected the share of noise redrawn per step, in [0, 1] "
                     "(0: plain Euler as released)")


def _check_frames(name: str, frames: jax.Array, num_frames: int, window: jax.Array) -> None:
  expected = (num_frames, window.shape[0]) + tuple(window.shape[2:])
  if tuple(frames.shape) != expected:
    raise ValueError(f"{name} has shape {frames.shape}; expected (num_frames, B, ...) = {expected}: one fresh "
                     "frame per emitted frame, appended after it")


class RollingSampler:
  """A compiled rolling sampler for one velocity function, step count, conditioning mode and device set.

  Programs are compiled once per shape and shared by all samplers with the same settings. Windows and
  frames returned by `start` / `roll` stay on the devices, split over the streams axis.

  Args:
    velocity_fn: see the module docstring.
    steps_per_frame: S, Euler steps per emitted frame (2 in the release).
    preroll_steps: N pre-roll steps; default W * S as in the release.
    conditioning: None for joint generation, or a `Conditioning` (audio -> video, video -> audio).
    stochasticity: s in [0, 1], the share of each frame's noise drawn afresh after every step (`renoise`); 0 is
      the release's plain Euler. With s > 0 windows carry per-stream keys (`Window.noise_key`).
    devices: devices to split the streams over; default all local devices. B must be a multiple of their number.
  """

  def __init__(self, velocity_fn: Callable, steps_per_frame: int, *, preroll_steps: int | None = None,
               conditioning: Conditioning | None = None, stochasticity: float = 0.0,
               devices: Sequence[Any] | None = None):
    if steps_per_frame < 1:
      raise ValueError(f"steps_per_frame={steps_per_frame} must be a positive int")
    if preroll_steps is not None and preroll_steps < 1:
      raise ValueError(f"preroll_steps={preroll_steps} must be a positive int (or None for W * steps_per_frame)")
    check_stochasticity(stochasticity)
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), (STREAMS,))
    velocity_static, velocity_arrays = _split_arrays(velocity_fn)
    self.plan = _Plan(velocity_static, conditioning, int(steps_per_frame), preroll_steps, float(stochasticity), mesh)
    self._velocity_arrays = jax.device_put(velocity_arrays, NamedSharding(mesh, P()))

  @property
  def num_devices(self) -> int:
    return self.plan.mesh.size

  def _place(self, tree, spec: P, batch: int):
    if batch % self.num_devices:
      raise ValueError(f"{batch} streams cannot be split evenly over {self.num_devices} devices; use a batch that is "
                       f"a multiple of {self.num_devices} or pass devices=jax.local_devices()[:k] with k dividing it")
    return jax.device_put(tree, NamedSharding(self.plan.mesh, spec))

  def _labels(self, labels, batch: int):
    if labels is None:
      return None
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != (batch,):
      raise ValueError(f"labels have shape {labels.shape}; expected one class label per stream, (B,) = ({batch},)")
    return self._place(labels, _BATCH, batch)

  def _check_mode(self, window: Window):
    if (self.plan.conditioning is None) != (window.given_noise is None):
      raise ValueError("given_noise must be set exactly when the sampler has a Conditioning; use "
                       "generate_video_from_audio / generate_audio_from_video for conditional generation")
    if (self.plan.stochasticity > 0) != (window.noise_key is not None):
      raise ValueError(f"the sampler has stochasticity={self.plan.stochasticity}: a window carries noise_key (one "
                       "key per stream, from step_noise_keys) exactly when it is above 0")

  def start(self, init: Window, labels=None) -> Window:
    """Pre-rolls a pure-noise window (frame k then at time 1 - k / W; frame 0 is the next to be emitted)."""
    batch, _ = _check_window(init)
    self._check_mode(init)
    return _compiled_preroll(self.plan, self._velocity_arrays, self._labels(labels, batch),
                             self._place(init, _BATCH, batch))

  def roll(self, window: Window, incoming: Window, labels=None) -> tuple[Window, jax.Array, jax.Array]:
    """Emits n frames from a started window; incoming (n, B, ...) holds the frame appended after each.

    Returns the window (rolled, ready for the next call) and frames_v (B, n, H, Wd, C), frames_a (B, n, F, N).
    """
    batch, _ = _check_window(window)
    self._check_mode(window)
    num_frames = incoming.v.shape[0]
    for name, frames, like in zip(("incoming.v", "incoming.a"), incoming[:2], window[:2]):
      _check_frames(name, frames, num_frames, like)
    window, (frames_v, frames_a) = _compiled_roll(self.plan, self._velocity_arrays, self._labels(labels, batch),
                                                  window, self._place(incoming, _SEQUENCE, batch))
    return window, frames_v, frames_a

  def generate(self, init: Window, incoming: Window, labels=None) -> tuple[Window, jax.Array, jax.Array]:
    """Pre-roll and n = len(incoming) frames in one program; returns (window, frames_v, frames_a) like `roll`."""
    batch, _ = _check_window(init)
    self._check_mode(init)
    num_frames = incoming.v.shape[0]
    if num_frames < 1:
      raise ValueError("num_frames must be at least 1")
    for name, frames, like in zip(("noise_v", "noise_a"), incoming[:2], init[:2]):
      _check_frames(name, frames, num_frames, like)
    window, (frames_v, frames_a) = _compiled_generate(self.plan, self._velocity_arrays, self._labels(labels, batch),
                                                      self._place(init, _BATCH, batch),
                                                      self._place(incoming, _SEQUENCE, batch))
    return window, frames_v, frames_a

  def with_noise_keys(self, init: Window, key: jax.Array | None) -> Window:
    """init with the stochastic steps' keys drawn from key (`step_noise_keys`) when the sampler needs them."""
    if not self.plan.stochasticity:
      return init
    if key is None:
      raise ValueError(f"stochasticity={self.plan.stochasticity} draws noise at every step: pass a key")
    return init._replace(noise_key=step_noise_keys(key, init.v.shape[0]))

  def fresh_frames(self, stream_keys: jax.Array, first: int, num_frames: int, frame_v: tuple, frame_a: tuple):
    """Noise frames first..first+n-1 of every stream from its key: (n, B, *frame_v), (n, B, *frame_a)."""
    stream_keys = self._place(stream_keys, _BATCH, stream_keys.shape[0])
    return _compiled_fresh_frames(self.plan.mesh, stream_keys, jnp.int32(first), int(num_frames),
                                  tuple(frame_v), tuple(frame_a))

  def stream(self, init_v: jax.Array, init_a: jax.Array, key: jax.Array, chunk_frames: int,
             labels=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless joint generation: yields host chunks (B, chunk_frames, ...) of video and mel frames.

    The window stays on the devices; fresh frames are drawn there from key as in `generate`, so the
    concatenated chunks equal `generate(..., key=key)` of the same total length. Host memory and the
    number of compilations do not grow with the length of the stream.
    """
    if chunk_frames < 1:
      raise ValueError(f"chunk_frames={chunk_frames} must be a positive int")
    init = self.with_noise_keys(Window(jnp.asarray(init_v), jnp.asarray(init_a)), key)
    batch, _ = _check_window(init)
    stream_keys = jax.random.split(key, batch)
    window = self.start(init, labels)
    for first in itertools.count(0, chunk_frames):
      noise_v, noise_a = self.fresh_frames(stream_keys, first, chunk_frames, init.v.shape[2:], init.a.shape[2:])
      window, frames_v, frames_a = self.roll(window, Window(noise_v, noise_a), labels)
      yield jax.device_get((frames_v, frames_a))


def generate(velocity_fn: Callable, init_v: jax.Array, init_a: jax.Array, num_frames: int, steps_per_frame: int, *,
             noise_v: jax.Array | None = None, noise_a: jax.Array | None = None, key: jax.Array | None = None,
             labels=None, preroll_steps: int | None = None, stochasticity: float = 0.0,
             devices: Sequence[Any] | None = None) -> tuple[jax.Array, jax.Array]:
  """Joint audio-video generation of num_frames frames per stream (DESIGN.md contract).

  Args:
    velocity_fn: (v, a, t) -> (vel_v, vel_a), or (v, a, t, labels) when labels are given.
    init_v, init_a: the pure-noise starting windows (B, W, H, Wd, C) and (B, W, F, N).
    num_frames: frames to emit per stream.
    steps_per_frame: S.
    noise_v, noise_a: (num_frames, B, ...) fresh frames; noise_*[j] is appended after the j-th emitted
      frame (the last one leaves the window ready to continue). Drawn from key when not given.
    key: PRNG key for the fresh frames (see the module docstring); needed when noise is not given or
      stochasticity > 0.
    labels: optional (B,) class labels passed to velocity_fn.
    preroll_steps, stochasticity, devices: see `RollingSampler`.
  Returns:
    frames_v (B, num_frames, H, Wd, C) and frames_a (B, num_frames, F, N).
  """
  sampler = RollingSampler(velocity_fn, steps_per_frame, preroll_steps=preroll_steps, stochasticity=stochasticity,
                           devices=devices)
  init = Window(jnp.asarray(init_v), jnp.asarray(init_a))
  batch, _ = _check_window(init)
  init = sampler.with_noise_keys(init, key)
  if noise_v is None or noise_a is None:
    if key is None:
      raise ValueError("pass both noise_v and noise_a, or a key to draw the fresh frames from")
    drawn_v, drawn_a = sampler.fresh_frames(jax.random.split(key, batch), 0, num_frames, init.v.shape[2:],
                                            init.a.shape[2:])
    noise_v = drawn_v if noise_v is None else noise_v
    noise_a = drawn_a if noise_a is None else noise_a
  _, frames_v, frames_a = sampler.generate(init, Window(jnp.asarray(noise_v), jnp.asarray(noise_a)), labels)
  return frames_v, frames_a


def _generate_given(velocity_fn, init_generated, given, num_frames, steps_per_frame, conditioning, *, noise,
                    given_noise, key, labels, preroll_steps, stochasticity, devices):
  """Shared body of the two conditional generators; returns the generated modality's frames."""
  audio_given = conditioning.given == "audio"
  init_generated, given = jnp.asarray(init_generated), jnp.asarray(given)
  batch, frames = init_generated.shape[:2]
  generated_name, given_name = ("init_v", "audio") if audio_given else ("init_a", "video")
  if given.ndim != (4 if audio_given else 5) or given.shape[0] != batch:
    raise ValueError(f"{given_name} has shape {given.shape}; expected its frames (B, L, ...) with B = {batch} as in "
                     f"{generated_name}, channels-last")
  if not 1 <= num_frames <= given.shape[1]:
    raise ValueError(f"num_frames={num_frames} must be in [1, {given.shape[1]}], the number of given "
                     f"{given_name} frames")
  needed = num_frames + frames  # the first window, then one appended frame per emitted frame
  keys = jax.random.split(key, 3) if key is not None else None
  if given.shape[1] < needed:  # past its end the window is filled with N(0, 1) frames, as the official code does
    if keys is None:
      raise ValueError(f"{given_name} has {given.shape[1]} frames; pass a key to pad it to num_frames + W = {needed} "
                       "frames with noise, or pass that many frames")
    pad_shape = (batch, needed - given.shape[1]) + given.shape[2:]
    given = jnp.concatenate([given, jax.random.normal(keys[0], pad_shape, given.dtype)], axis=1)
  given = given[:, :needed]
  if given_noise is None:
    if keys is None:
      raise ValueError("pass given_noise (B, num_frames + W, ...) or a key to draw the noise of the given "
                       f"{given_name}")
    given_noise = jax.random.normal(keys[1], given.shape, given.dtype)
  given_noise = jnp.asarray(given_noise)
  if given_noise.shape != given.shape:
    raise ValueError(f"given_noise has shape {given_noise.shape}; expected {given.shape}: one noise frame per given "
                     "frame the window sees (num_frames + W)")
  sampler = RollingSampler(velocity_fn, steps_per_frame, preroll_steps=preroll_steps, conditioning=conditioning,
                           stochasticity=stochasticity, devices=devices)
  if noise is None:
    if keys is None:
      raise ValueError("pass the fresh frames of the generated modality or a key to draw them")
    stream_keys = jax.random.split(keys[2], batch)
    frame_v = init_generated.shape[2:] if audio_given else given.shape[2:]
    frame_a = given.shape[2:] if audio_given else init_generated.shape[2:]
    drawn_v, drawn_a = sampler.fresh_frames(stream_keys, 0, num_frames, frame_v, frame_a)
    noise = drawn_v if audio_given else drawn_a

  sequence = lambda x: jnp.swapaxes(x[:, frames:], 0, 1)  # (B, W + n, ...) -> (n, B, ...) of appended frames
  if audio_given:
    init = Window(init_generated, given[:, :frames], given_noise[:, :frames])
    incoming = Window(jnp.asarray(noise), sequence(given), sequence(given_noise))
  else:
    init = Window(given[:, :frames], init_generated, given_noise[:, :frames])
    incoming = Window(sequence(given), jnp.asarray(noise), sequence(given_noise))
  _, frames_v, frames_a = sampler.generate(sampler.with_noise_keys(init, key), incoming, labels)
  return frames_v if audio_given else frames_a


def generate_video_from_audio(velocity_fn: Callable, init_v: jax.Array, audio: jax.Array, num_frames: int,
                              steps_per_frame: int, *, guidance_scale: float = 1.0, noise_v: jax.Array | None = None,
                              given_noise: jax.Array | None = None, key: jax.Array | None = None, labels=None,
                              preroll_steps: int | None = None, stochasticity: float = 0.0,
                              devices: Sequence[Any] | None = None) -> jax.Array:
  """Audio -> video: video frames (B, num_frames, H, Wd, C) for the given mel frames, with gradient guidance.

  Args:
    init_v: pure-noise video window (B, W, H, Wd, C).
    audio: given mel frames (B, L, F, N), L >= num_frames; video frame j is generated for audio frame j.
      The window sees num_frames + W audio frames; missing ones are N(0, 1) frames drawn from key
      (as in the official code).
    guidance_scale: weight of the gradient guidance (see `guided_euler_step`); 0 disables it.
    noise_v: (num_frames, B, H, Wd, C) fresh video frames, as in `generate`; drawn from key when not given.
    given_noise: (B, num_frames + W, F, N) noise eps of each audio frame, held while the frame is in the
      window (the official rolling phase re-draws the input noise at every step but keeps eps in the
      guidance target; holding it keeps both consistent, as the official pre-roll does). Drawn from key.
    Other arguments as in `generate`; stochasticity redraws noise of the generated modality only.
  """
  return _generate_given(velocity_fn, init_v, audio, num_frames, steps_per_frame, Conditioning("audio", guidance_scale),
                         noise=noise_v, given_noise=given_noise, key=key, labels=labels, preroll_steps=preroll_steps,
                         stochasticity=stochasticity, devices=devices)


def generate_audio_from_video(velocity_fn: Callable, init_a: jax.Array, video: jax.Array, num_frames: int,
                              steps_per_frame: int, *, guidance_scale: float = 1.0, noise_a: jax.Array | None = None,
                              given_noise: jax.Array | None = None, key: jax.Array | None = None, labels=None,
                              preroll_steps: int | None = None, stochasticity: float = 0.0,
                              devices: Sequence[Any] | None = None) -> jax.Array:
  """Video -> audio: mel frames (B, num_frames, F, N) for the given video frames (B, L, H, Wd, C).

  The mirror of `generate_video_from_audio`; given_noise is (B, num_frames + W, H, Wd, C).
  """
  return _generate_given(velocity_fn, init_a, video, num_frames, steps_per_frame, Conditioning("video", guidance_scale),
                         noise=noise_a, given_noise=given_noise, key=key, labels=labels, preroll_steps=preroll_steps,
                         stochasticity=stochasticity, devices=devices)
