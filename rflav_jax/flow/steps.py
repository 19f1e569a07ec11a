"""The step math of rolling generation: Euler steps (joint and guided), stochastic re-noising, the window type.

Layouts are channels-last: video window (B, W, H, Wd, C), mel window (B, W, F, N); t and dt hold each frame's
flow time and step (1 = clean). A velocity function maps a window and its per-frame times t (B, W) to velocities:
`velocity_fn(v, a, t) -> (vel_v, vel_a)`, or `velocity_fn(v, a, t, labels)` when per-stream labels (B,) are given
(see `rflav_jax.flow.guidance`).

Stochastic steps (stochasticity s in (0, 1]; 0, the release's plain Euler, by default): after each step, the
share s of the noise left in every frame is drawn afresh (see `renoise`), so a step can undo part of an earlier
step's error instead of carrying it along the window. The last step of a frame (to t = 1) adds none. Their noise,
and the given audio's input noise of official audio -> video steps (`Conditioning`), comes from a per-stream key
carried in the window (`Window.noise_key`, from `step_noise_keys`), split at every step that draws.
"""
import dataclasses
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

GIVEN_MODALITIES = ("audio", "video")
CONDITION_MODES = ("official", "independent")  # see Conditioning
OFFICIAL_GUIDANCE_SCALE = 100.0  # the official a2v / v2a samplers' default --scale
# A frame whose step ends at t + dt = 1 (frame 0 on its last step) gets no guidance; float tolerance.
_CLEAN_TOL = 1e-6
_STEP_NOISE_TAG = 0x5703  # folded into the sampling key to make the stochastic steps' keys


class Window(NamedTuple):
  """Per-stream sampler state, batch first: v (B, W, H, Wd, C), a (B, W, F, N).

  In conditional modes the given modality's slot holds its CLEAN frames and given_noise (same shape)
  the noise eps held for each of them while it stays in the window. noise_key (B,) holds each stream's PRNG
  key for the noise that steps draw (stochastic steps, official audio -> video; None when none do). The same
  tree also carries single frames (no W axis) and sequences of frames (n, B, ...), without keys.
  """
  v: jax.Array
  a: jax.Array
  given_noise: jax.Array | None = None
  noise_key: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class Conditioning:
  """Generation of one modality from a given other one, with gradient guidance (see `guided_euler_step`).

  given: "audio" (audio -> video) or "video" (video -> audio).
  guidance_scale: weight of the guidance term; 0 only feeds the given modality at each frame's noise level.
    100 is the official sampler's (`--scale`).
  mode: how the guidance is formed, one of CONDITION_MODES:
    "official": as the official sampler. The guidance objective is averaged over the B streams generated together,
      so each stream's guidance is divided by B (though it does not depend on the other streams' content); the
      rolling steps of audio -> video feed the network freshly drawn noise for the given audio at every step (its
      pre-roll, and video -> audio throughout, hold each given frame's noise).
    "independent": each given frame holds its noise eps while it is in the window (network input and guidance
      target agree) and the objective is summed over streams: a stream's result does not depend on B.
    For B = 1 the two objectives are equal, so video -> audio then differs only in the scale.
  """
  given: str
  guidance_scale: float = OFFICIAL_GUIDANCE_SCALE
  mode: str = "official"

  def __post_init__(self):
    if self.given not in GIVEN_MODALITIES:
      raise ValueError(f"Conditioning.given={self.given!r}: expected one of {GIVEN_MODALITIES}")
    if self.guidance_scale < 0:
      raise ValueError(f"Conditioning.guidance_scale={self.guidance_scale} must be >= 0")
    check_condition_mode(self.mode, "Conditioning.mode")

  @property
  def fresh_given_noise(self) -> bool:
    """Whether rolling steps feed the network fresh noise for the given modality (official audio -> video)."""
    return self.mode == "official" and self.given == "audio"


def check_condition_mode(mode: str, name: str = "mode") -> None:
  """Raises ValueError, naming the setting `name`, unless mode is one of CONDITION_MODES."""
  if mode not in CONDITION_MODES:
    raise ValueError(f"{name}={mode!r}: expected one of {CONDITION_MODES} (\"official\": the official sampler's "
                     "guidance; \"independent\": noise held per given frame, streams guided independently)")


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
    raise ValueError("steps that draw noise (stochastic steps, official audio -> video) need Window.noise_key: one "
                     "PRNG key per stream (step_noise_keys)")
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
                      conditioning: Conditioning, labels=None, stochasticity: float = 0.0, *, rolling: bool = False,
                      num_streams: int | None = None) -> Window:
  """Conditional generation: one Euler step of the generated modality x with gradient guidance.

  The given modality g enters the network at each frame's noise level, g_t = t g + (1 - t) n, and
  x += dt v_hat_x - [t + dt != 1] dt scale grad_x J, with J built from each stream's mean over the window of
  ((g - eps) - v_hat_g)^2, the given modality's flow-matching error against its held noise eps (given_noise).
  conditioning.mode "official": J is the mean of that error over the B streams, and n is drawn afresh at the
  rolling steps of audio -> video (eps elsewhere); "independent": J is its sum over the streams, and n = eps.
  The given modality's slot keeps its clean frames.

  Args:
    velocity_fn, labels: as in the module docstring.
    window: the generated modality's noisy window, the given one's clean window and given_noise; noise_key when
      the step draws noise (stochasticity > 0, or a rolling step of `Conditioning.fresh_given_noise`).
    t, dt: (W,) per-frame times and Euler steps.
    conditioning: which modality is given, the guidance scale and mode.
    stochasticity: share of the generated modality's noise drawn afresh after the step (`renoise`).
    rolling: whether this is a rolling step (after the pre-roll).
    num_streams: B, the streams generated together, which the official objective averages over; default the
      window's batch (pass the whole batch when the window holds one device's share of it).
  """
  audio_given = conditioning.given == "audio"
  x, given = (window.v, window.a) if audio_given else (window.a, window.v)
  batch, frames = x.shape[:2]
  t_b, dt_b = jnp.broadcast_to(t, (batch, frames)), jnp.broadcast_to(dt, (batch, frames))
  fresh_given = rolling and conditioning.fresh_given_noise
  shapes = ([given.shape[1:]] if fresh_given else []) + ([x.shape[1:]] if stochasticity else [])
  fresh = []  # per stream, one draw for the given modality's input noise, then one for `renoise`
  if shapes:
    window, fresh = _fresh_noise(window, shapes)
  input_noise = fresh.pop(0) if fresh_given else window.given_noise
  given_t = _per_frame(t_b, given) * given + (1.0 - _per_frame(t_b, given)) * input_noise
  target = given - window.given_noise
  streams = batch if num_streams is None else num_streams
  weight = 1.0 / streams if conditioning.mode == "official" else 1.0  # of each stream's error in J

  def guidance_objective(x):
    """(J, the generated modality's velocity)."""
    if audio_given:
      vel_x, vel_given = _call(velocity_fn, x, given_t, t_b, labels)
    else:
      vel_given, vel_x = _call(velocity_fn, given_t, x, t_b, labels)
    error = jnp.mean(jnp.square(target - vel_given), axis=tuple(range(1, given.ndim)))
    return weight * jnp.sum(error), vel_x

  if conditioning.guidance_scale:
    grad, vel_x = jax.grad(guidance_objective, has_aux=True)(x)
    guided = (t_b + dt_b < 1.0 - _CLEAN_TOL).astype(x.dtype)
    stepped = x + _per_frame(dt_b, x) * vel_x - _per_frame(guided * dt_b, x) * conditioning.guidance_scale * grad
  else:
    vel_x = guidance_objective(x)[1]
    stepped = x + _per_frame(dt_b, x) * vel_x
  if stochasticity:
    stepped = renoise(x, stepped, vel_x, t_b, t_b + dt_b, stochasticity, fresh.pop(0))
  return window._replace(v=stepped) if audio_given else window._replace(a=stepped)


def check_stochasticity(stochasticity: float, name: str = "stochasticity") -> None:
  """Raises ValueError, naming the setting `name`, unless 0 <= stochasticity <= 1."""
  if not 0.0 <= stochasticity <= 1.0:
    raise ValueError(f"{name}={stochasticity}: expected the share of noise redrawn per step, in [0, 1] "
                     "(0: plain Euler as released)")

