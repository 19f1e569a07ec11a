"""Rolling-window generation of unbounded audio-video streams: the `RollingSampler` and the key-based generators.

The step math lives in `rflav_jax.flow.steps` (Euler, guided Euler, re-noising; the `Window` and `Conditioning`
types), the compiled programs in `rflav_jax.flow.programs` (pre-roll and rolling scans, split over devices).
A velocity function maps a window and its per-frame times to velocities (see `steps`); pass model weights inside a
`jax.tree_util.Partial` (as `rflav_jax.flow.guidance` does) so they are inputs of the compiled programs rather
than constants baked into them.

Random draws: stream b draws the fresh frame appended after its j-th emitted frame (video and mel values from one
normal draw) from fold_in(keys[b], j), keys = jax.random.split(key, B); stochastic steps and the official audio ->
video guidance draw from per-stream keys carried in the window (`steps.step_noise_keys(key, B)`). So results do not
depend on how the streams are spread over devices, and a stream cut into chunks equals one long call. Every fresh
frame can be passed in instead. (The official guidance, averaged over the B streams, does depend on B.)
"""
import functools
import itertools
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rflav_jax.flow import programs
from rflav_jax.flow.programs import BATCH, SEQUENCE, STREAMS
from rflav_jax.flow.steps import (CONDITION_MODES, OFFICIAL_GUIDANCE_SCALE, Conditioning, Window, check_stochasticity,
                                  step_noise_keys)

__all__ = ["CONDITION_MODES", "Conditioning", "OFFICIAL_GUIDANCE_SCALE", "RollingSampler", "Window",
           "check_stochasticity", "generate", "generate_audio_from_video", "generate_video_from_audio"]


def _check_window(init: Window) -> tuple[int, int]:
  if init.v.ndim != 5:
    raise ValueError(f"init_v has shape {init.v.shape}; expected a video window (B, W, H, Wd, C), channels-last")
  if init.a.ndim != 4 or init.a.shape[:2] != init.v.shape[:2]:
    raise ValueError(f"init_a has shape {init.a.shape}; expected a mel window (B, W, F, N) with (B, W) = "
                     f"{init.v.shape[:2]} as in init_v")
  return init.v.shape[:2]


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
    velocity_fn: see `rflav_jax.flow.steps`.
    steps_per_frame: S, Euler steps per emitted frame (2 in the release).
    preroll_steps: N pre-roll steps; default W * S as in the release.
    conditioning: None for joint generation, or a `Conditioning` (audio -> video, video -> audio; its mode).
    stochasticity: s in [0, 1], the share of each frame's noise drawn afresh after every step (`steps.renoise`);
      0 is the release's plain Euler. With s > 0 windows carry per-stream keys (`Window.noise_key`), as they do
      for the official audio -> video guidance (`draws_noise`).
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
    velocity_static, self._velocity_leaves = programs.split_arrays(velocity_fn)
    self.plan = programs.Plan(velocity_static, conditioning, int(steps_per_frame), preroll_steps,
                              float(stochasticity), mesh)

  @functools.cached_property
  def _velocity_arrays(self) -> list:
    """The velocity function's arrays (e.g. the weights) on every device, put there by the first program run."""
    return jax.device_put(self._velocity_leaves, NamedSharding(self.plan.mesh, P()))

  @property
  def num_devices(self) -> int:
    return self.plan.mesh.size

  def _place(self, tree, spec: P, batch: int):
    if batch % self.num_devices:
      raise ValueError(f"{batch} streams cannot be split evenly over {self.num_devices} devices; use a batch that is "
                       f"a multiple of {self.num_devices} or pass devices=jax.local_devices()[:k] with k dividing it")
    return jax.device_put(tree, NamedSharding(self.plan.mesh, spec))

  def _labels(self, labels, batch: int):
    """Per-stream labels on the devices: (B,) class labels, or a tuple of (B,) arrays (e.g. labels and guidance
    scales, for `guidance.per_stream_guidance`); the velocity function gets them as given."""
    if labels is None:
      return None
    parts = tuple(jnp.asarray(x, jnp.int32 if np.issubdtype(np.asarray(x).dtype, np.integer) else jnp.float32)
                  for x in (labels if isinstance(labels, tuple) else (labels,)))
    for x in parts:
      if x.shape != (batch,):
        raise ValueError(f"labels have shape {x.shape}; expected one class label per stream, (B,) = ({batch},)")
    placed = self._place(parts, BATCH, batch)
    return placed if isinstance(labels, tuple) else placed[0]

  @property
  def draws_noise(self) -> bool:
    """Whether steps draw noise (stochasticity > 0, or `Conditioning.fresh_given_noise`): windows then carry one
    PRNG key per stream (`Window.noise_key`)."""
    conditioning = self.plan.conditioning
    return self.plan.stochasticity > 0 or (conditioning is not None and conditioning.fresh_given_noise)

  def _noise_drawer(self) -> str:
    if self.plan.stochasticity > 0:
      return f"stochasticity={self.plan.stochasticity}"
    return "the official audio -> video guidance (Conditioning mode 'official')"

  def _check_mode(self, window: Window):
    if (self.plan.conditioning is None) != (window.given_noise is None):
      raise ValueError("given_noise must be set exactly when the sampler has a Conditioning; use "
                       "generate_video_from_audio / generate_audio_from_video for conditional generation")
    if self.draws_noise != (window.noise_key is not None):
      raise ValueError(f"the sampler has stochasticity={self.plan.stochasticity} and conditioning "
                       f"{self.plan.conditioning}: a window carries noise_key (one key per stream, from "
                       "step_noise_keys) exactly when its steps draw noise (stochasticity > 0 or official audio -> "
                       "video)")

  def start(self, init: Window, labels=None) -> Window:
    """Pre-rolls a pure-noise window (frame k then at time 1 - k / W; frame 0 is the next to be emitted)."""
    batch, _ = _check_window(init)
    self._check_mode(init)
    return programs.compiled_preroll(self.plan, self._velocity_arrays, self._labels(labels, batch),
                                     self._place(init, BATCH, batch))

  def roll(self, window: Window, incoming: Window, labels=None) -> tuple[Window, jax.Array, jax.Array]:
    """Emits n frames from a started window; incoming (n, B, ...) holds the frame appended after each.

    Returns the window (rolled, ready for the next call) and frames_v (B, n, H, Wd, C), frames_a (B, n, F, N).
    """
    batch, _ = _check_window(window)
    self._check_mode(window)
    num_frames = incoming.v.shape[0]
    for name, frames, like in zip(("incoming.v", "incoming.a"), incoming[:2], window[:2]):
      _check_frames(name, frames, num_frames, like)
    window, (frames_v, frames_a) = programs.compiled_roll(self.plan, self._velocity_arrays,
                                                          self._labels(labels, batch),
                                                          self._place(window, BATCH, batch),
                                                          self._place(incoming, SEQUENCE, batch))
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
    window, (frames_v, frames_a) = programs.compiled_generate(self.plan, self._velocity_arrays,
                                                              self._labels(labels, batch),
                                                              self._place(init, BATCH, batch),
                                                              self._place(incoming, SEQUENCE, batch))
    return window, frames_v, frames_a

  def generate_given(self, init_generated: jax.Array, given: jax.Array, num_frames: int, *,
                     noise: jax.Array | None = None, given_noise: jax.Array | None = None, key: jax.Array | None = None,
                     labels=None) -> jax.Array:
    """Conditional generation (the sampler has a Conditioning): the generated modality's num_frames frames.

    init_generated: the generated modality's pure-noise window (B, W, ...); given: the given modality's frames
    (B, L, ...); noise, given_noise, key, labels: as in `generate_video_from_audio` / `generate_audio_from_video`.
    """
    conditioning = self.plan.conditioning
    if conditioning is None:
      raise ValueError("generate_given needs a sampler made with a Conditioning (which modality is given)")
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
    if noise is None:
      if keys is None:
        raise ValueError("pass the fresh frames of the generated modality or a key to draw them")
      stream_keys = jax.random.split(keys[2], batch)
      frame_v = init_generated.shape[2:] if audio_given else given.shape[2:]
      frame_a = given.shape[2:] if audio_given else init_generated.shape[2:]
      drawn_v, drawn_a = self.fresh_frames(stream_keys, 0, num_frames, frame_v, frame_a)
      noise = drawn_v if audio_given else drawn_a

    sequence = lambda x: jnp.swapaxes(x[:, frames:], 0, 1)  # (B, W + n, ...) -> (n, B, ...) of appended frames
    if audio_given:
      init = Window(init_generated, given[:, :frames], given_noise[:, :frames])
      incoming = Window(jnp.asarray(noise), sequence(given), sequence(given_noise))
    else:
      init = Window(given[:, :frames], init_generated, given_noise[:, :frames])
      incoming = Window(sequence(given), jnp.asarray(noise), sequence(given_noise))
    _, frames_v, frames_a = self.generate(self.with_noise_keys(init, key), incoming, labels)
    return frames_v if audio_given else frames_a

  def with_noise_keys(self, init: Window, key: jax.Array | None) -> Window:
    """init with the keys of the noise its steps draw, from key (`step_noise_keys`), when the sampler needs them."""
    if not self.draws_noise:
      return init
    if key is None:
      raise ValueError(f"{self._noise_drawer()} draws noise at every step: pass a key")
    return init._replace(noise_key=step_noise_keys(key, init.v.shape[0]))

  def fresh_frames(self, stream_keys: jax.Array, first: int, num_frames: int, frame_v: tuple, frame_a: tuple):
    """Noise frames first..first+n-1 of every stream from its key: (n, B, *frame_v), (n, B, *frame_a)."""
    stream_keys = self._place(stream_keys, BATCH, stream_keys.shape[0])
    return programs.compiled_fresh_frames(self.plan.mesh, stream_keys, jnp.int32(first), int(num_frames),
                                          tuple(frame_v), tuple(frame_a))

  def stream(self, init_v: jax.Array, init_a: jax.Array, key: jax.Array, chunk_frames: int,
             labels=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless joint generation from pure-noise windows: pre-roll, then host chunks as `roll_on` yields them.

    Fresh frames are drawn from key as in `generate`, so the concatenated chunks equal `generate(..., key=key)`
    of the same total length.
    """
    init = self.with_noise_keys(Window(jnp.asarray(init_v), jnp.asarray(init_a)), key)
    yield from self.roll_on(self.start(init, labels), key, chunk_frames, labels)

  def roll_on(self, window: Window, key: jax.Array, chunk_frames: int,
              labels=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless generation from a started window: yields host chunks (B, chunk_frames, ...) of video and mel frames.

    The window stays on the devices; stream b's fresh frames are drawn there from jax.random.split(key, B)[b]
    (see the module docstring). Host memory and the number of compilations do not grow with the length of the
    stream.
    """
    if chunk_frames < 1:
      raise ValueError(f"chunk_frames={chunk_frames} must be a positive int")
    batch, _ = _check_window(window)
    stream_keys = jax.random.split(key, batch)
    for first in itertools.count(0, chunk_frames):
      noise_v, noise_a = self.fresh_frames(stream_keys, first, chunk_frames, window.v.shape[2:], window.a.shape[2:])
      window, frames_v, frames_a = self.roll(window, Window(noise_v, noise_a), labels)
      yield jax.device_get((frames_v, frames_a))

  def num_calls(self, num_frames: int, window_size: int, *, chunk_frames: int | None = None,
                preroll: bool = True) -> int:
    """Network calls per stream to emit num_frames frames with a window of window_size frames.

    The pre-roll's N steps (unless preroll=False: `roll_on` from a window started otherwise), then S per rolled
    frame: num_frames rounded up to whole chunks of chunk_frames (`stream`, `roll_on`), or num_frames - 1 when
    chunk_frames is None (`generate`, which appends the last fresh frame without rolling).
    """
    if chunk_frames is None:
      rolled = num_frames - 1
    else:
      rolled = math.ceil(num_frames / chunk_frames) * chunk_frames
    return (self.plan.num_preroll_steps(window_size) if preroll else 0) + rolled * self.plan.steps_per_frame


def generate(velocity_fn: Callable, init_v: jax.Array, init_a: jax.Array, num_frames: int, steps_per_frame: int, *,
             noise_v: jax.Array | None = None, noise_a: jax.Array | None = None, key: jax.Array | None = None,
             labels=None, preroll_steps: int | None = None, stochasticity: float = 0.0,
             devices: Sequence[Any] | None = None) -> tuple[jax.Array, jax.Array]:
  """Joint audio-video generation of num_frames frames per stream (a stable contract).

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


def generate_video_from_audio(velocity_fn: Callable, init_v: jax.Array, audio: jax.Array, num_frames: int,
                              steps_per_frame: int, *, guidance_scale: float = OFFICIAL_GUIDANCE_SCALE,
                              mode: str = "official", noise_v: jax.Array | None = None,
                              given_noise: jax.Array | None = None, key: jax.Array | None = None, labels=None,
                              preroll_steps: int | None = None, stochasticity: float = 0.0,
                              devices: Sequence[Any] | None = None) -> jax.Array:
  """Audio -> video: video frames (B, num_frames, H, Wd, C) for the given mel frames, with gradient guidance.

  Args:
    init_v: pure-noise video window (B, W, H, Wd, C).
    audio: given mel frames (B, L, F, N), L >= num_frames; video frame j is generated for audio frame j.
      The window sees num_frames + W audio frames; missing ones are N(0, 1) frames drawn from key
      (as in the official code).
    guidance_scale: weight of the gradient guidance (see `steps.guided_euler_step`); 0 disables it. 100 is the
      official sampler's.
    mode: "official" (the official sampler's guidance: the objective averaged over the B streams, fresh input
      noise for the audio at every rolling step, drawn from key) or "independent" (each audio frame's noise held,
      streams guided independently); see `steps.Conditioning`.
    noise_v: (num_frames, B, H, Wd, C) fresh video frames, as in `generate`; drawn from key when not given.
    given_noise: (B, num_frames + W, F, N) noise eps of each audio frame, held while the frame is in the
      window: the guidance target's noise in both modes, and the network input's except at the official mode's
      rolling steps. Drawn from key when not given.
    Other arguments as in `generate`; stochasticity redraws noise of the generated modality only.
  """
  sampler = RollingSampler(velocity_fn, steps_per_frame, preroll_steps=preroll_steps,
                           conditioning=Conditioning("audio", guidance_scale, mode), stochasticity=stochasticity,
                           devices=devices)
  return sampler.generate_given(init_v, audio, num_frames, noise=noise_v, given_noise=given_noise, key=key,
                                labels=labels)


def generate_audio_from_video(velocity_fn: Callable, init_a: jax.Array, video: jax.Array, num_frames: int,
                              steps_per_frame: int, *, guidance_scale: float = OFFICIAL_GUIDANCE_SCALE,
                              mode: str = "official", noise_a: jax.Array | None = None,
                              given_noise: jax.Array | None = None, key: jax.Array | None = None, labels=None,
                              preroll_steps: int | None = None, stochasticity: float = 0.0,
                              devices: Sequence[Any] | None = None) -> jax.Array:
  """Video -> audio: mel frames (B, num_frames, F, N) for the given video frames (B, L, H, Wd, C).

  The mirror of `generate_video_from_audio`; given_noise is (B, num_frames + W, H, Wd, C). Here the official
  sampler holds each video frame's noise in both phases, so for B = 1 the modes differ only in their scale. (Past
  the end of the given video the official code's window noise becomes the video frames themselves, a slip that
  neither mode copies: both pad with N(0, 1) frames and noise as audio -> video does.)
  """
  sampler = RollingSampler(velocity_fn, steps_per_frame, preroll_steps=preroll_steps,
                           conditioning=Conditioning("video", guidance_scale, mode), stochasticity=stochasticity,
                           devices=devices)
  return sampler.generate_given(init_a, video, num_frames, noise=noise_a, given_noise=given_noise, key=key,
                                labels=labels)
