"""Streams of a pixel-space FLAV as arrays (no codecs, no files), for measuring what a model does.

Frames come back as uint8 video (streams, T, R, R, 3) and mel (streams, T, 10, N) divided by audio_scale,
the layouts `synthetic_av` reads. Labels / guidance: label None for unconditional models; guidance_scale != 1
applies classifier-free guidance. stochasticity: as in `RollingSampler` (0: plain Euler steps).
"""
import time

import jax
import jax.numpy as jnp
import numpy as np

from rflav_jax.codecs.pixel import to_signed_unit, to_uint8
from rflav_jax.flow import schedule
from rflav_jax.flow.guidance import velocity_for_label
from rflav_jax.flow.progress import log_frames
from rflav_jax.flow.sampling import RollingSampler, Window, generate_audio_from_video, generate_video_from_audio
from rflav_jax.models.flav import FLAV


def joint(model: FLAV, params, num_frames: int, *, streams: int = 1, label: int | None = None,
          guidance_scale: float = 1.0, steps_per_frame: int = 2, stochasticity: float = 0.0, seed: int = 0,
          audio_scale: float = 1.0, chunk_frames: int = 100) -> tuple[np.ndarray, np.ndarray]:
  """num_frames jointly generated frames per stream, rolled chunk by chunk (constant device memory)."""
  velocity, labels = velocity_for_label(model, params, label, guidance_scale, streams)
  sampler = RollingSampler(velocity, steps_per_frame, stochasticity=stochasticity, devices=jax.local_devices()[:1])
  key_v, key_a, key = jax.random.split(jax.random.key(seed), 3)
  size, window = model.latent_size, model.predict_frames
  init_v = jax.random.normal(key_v, (streams, window, size, size, model.in_channels))
  init_a = jax.random.normal(key_a, (streams, window, model.audio_columns, model.n_mels))
  video, mel = [], []
  start = time.perf_counter()
  for frames_v, frames_a in sampler.stream(init_v, init_a, key, chunk_frames, labels):
    video.append(to_uint8(frames_v))
    mel.append(np.asarray(frames_a) / audio_scale)
    done = min(sum(v.shape[1] for v in video), num_frames)
    log_frames(done, num_frames, streams, time.perf_counter() - start)
    if done >= num_frames:
      break
  return np.concatenate(video, axis=1)[:, :num_frames], np.concatenate(mel, axis=1)[:, :num_frames]


def continuation(model: FLAV, params, video: np.ndarray, mel: np.ndarray, num_frames: int, *,
                 label: int | None = None, guidance_scale: float = 1.0, steps_per_frame: int = 2,
                 stochasticity: float = 0.0, seed: int = 0, audio_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """num_frames frames rolled on from a real window instead of the pre-roll: (video (T, R, R, 3), mel (T, 10, N)).

  video uint8 (W, R, R, 3) and mel (W, 10, N) in [-1, 1] are the first W frames of a clip. They are noised to the
  state the pre-roll leaves (frame k at flow time 1 - k / W, with noise drawn from seed), then rolled as in `joint`;
  so the first W frames returned still hold the real clip, frame k to the share 1 - k / W.
  """
  window = model.predict_frames
  if len(video) != window or len(mel) != window:
    raise ValueError(f"continuation needs the first {window} frames of video and mel (the model's window); "
                     f"got {len(video)} and {len(mel)}")
  velocity, labels = velocity_for_label(model, params, label, guidance_scale, 1)
  sampler = RollingSampler(velocity, steps_per_frame, stochasticity=stochasticity, devices=jax.local_devices()[:1])
  key_v, key_a, key = jax.random.split(jax.random.key(seed), 3)
  clean_v = jnp.asarray(to_signed_unit(video))[None]
  clean_a = jnp.asarray(mel, jnp.float32)[None] * audio_scale
  t = schedule.preroll_times(1, 1, window)  # where the pre-roll ends: frame k at 1 - k / W

  def noised(x, key):  # x (1, W, ...) -> t_k x + (1 - t_k) z
    t_k = t.reshape(1, window, *(1,) * (x.ndim - 2))
    return t_k * x + (1.0 - t_k) * jax.random.normal(key, x.shape)

  start = sampler.with_noise_keys(Window(noised(clean_v, key_v), noised(clean_a, key_a)), key)
  fresh = sampler.fresh_frames(jax.random.split(key, 1), 0, num_frames, clean_v.shape[2:], clean_a.shape[2:])
  _, frames_v, frames_a = sampler.roll(start, Window(*fresh), labels)
  return to_uint8(frames_v)[0], np.asarray(frames_a)[0] / audio_scale


def video_for_audio(model: FLAV, params, mel: np.ndarray, *, label: int | None = None, guidance_scale: float = 1.0,
                    condition_guidance: float = 1.0, steps_per_frame: int = 2, stochasticity: float = 0.0,
                    seed: int = 0, audio_scale: float = 1.0) -> np.ndarray:
  """uint8 video (T - W, R, R, 3) generated for the given mel frames (T, 10, N) in [-1, 1]."""
  velocity, labels = velocity_for_label(model, params, label, guidance_scale, 1)
  key_init, key = jax.random.split(jax.random.key(seed))
  size, window = model.latent_size, model.predict_frames
  init_v = jax.random.normal(key_init, (1, window, size, size, model.in_channels))
  frames = generate_video_from_audio(velocity, init_v, np.asarray(mel)[None] * audio_scale, len(mel) - window,
                                     steps_per_frame, guidance_scale=condition_guidance, key=key, labels=labels,
                                     stochasticity=stochasticity, devices=jax.local_devices()[:1])
  return to_uint8(frames)[0]


def audio_for_video(model: FLAV, params, video: np.ndarray, *, label: int | None = None, guidance_scale: float = 1.0,
                    condition_guidance: float = 1.0, steps_per_frame: int = 2, stochasticity: float = 0.0,
                    seed: int = 0, audio_scale: float = 1.0) -> np.ndarray:
  """mel (T - W, 10, N) in [-1, 1] generated for the given uint8 video frames (T, R, R, 3)."""
  velocity, labels = velocity_for_label(model, params, label, guidance_scale, 1)
  key_init, key = jax.random.split(jax.random.key(seed))
  window = model.predict_frames
  init_a = jax.random.normal(key_init, (1, window, model.audio_columns, model.n_mels))
  given = np.asarray(video, np.float32)[None] / 127.5 - 1.0
  frames = generate_audio_from_video(velocity, init_a, given, len(video) - window, steps_per_frame,
                                     guidance_scale=condition_guidance, key=key, labels=labels,
                                     stochasticity=stochasticity, devices=jax.local_devices()[:1])
  return np.asarray(frames)[0] / audio_scale
