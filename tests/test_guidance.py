"""Guidance: classifier-free guidance and audio <-> video conditional generation with gradient guidance."""
import json
import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import synthetic_tiny
from helpers import (audio_layout, fixture_model, load_fixture, noise_window, point_mass_velocity, rel_l2,
                     run_on_cpu_devices, tiny_flav, video_layout)
from rflav_jax.flow import guidance, sampling, steps
from rflav_jax.generator import SamplingOptions


def test_classifier_free_guidance_matches_official():
  data = load_fixture("flav_small_cond_causal.npz")
  model, params = fixture_model(data)
  velocity_fn = guidance.classifier_free_guidance(model, params, 3.0)
  t = (data["in/t"] - 1) / 999  # official t_rf = 1 + 999 t
  vel_v, vel_a = jax.jit(velocity_fn)(video_layout(data["in/v"]), audio_layout(data["in/a"]), t, data["in/y"])
  assert rel_l2(vel_v, video_layout(data["out/cfg3_v"])) <= 1e-5
  assert rel_l2(vel_a, audio_layout(data["out/cfg3_a"])) <= 1e-5


def test_per_stream_guidance_equals_each_streams_own_scale():
  data = load_fixture("flav_small_cond_causal.npz")
  model, params = fixture_model(data)
  v, a, t, labels = video_layout(data["in/v"]), audio_layout(data["in/a"]), (data["in/t"] - 1) / 999, data["in/y"]
  scales = np.linspace(0.0, 3.0, len(labels)).astype(np.float32)
  vel_v, vel_a = jax.jit(guidance.per_stream_guidance(model, params))(v, a, t, (labels, scales))
  for b, scale in enumerate(scales):
    own_v, own_a = guidance.classifier_free_guidance(model, params, scale)(v, a, t, labels)
    assert rel_l2(vel_v[b], own_v[b]) <= 1e-5 and rel_l2(vel_a[b], own_a[b]) <= 1e-5


@pytest.mark.slow
def test_guidance_scale_one_generates_like_the_conditional_model():
  model, params = fixture_model(load_fixture("flav_small_cond_causal.npz"))
  init_v, init_a = noise_window(0, model, batch=2)
  labels = np.array([2, 0])
  common = dict(num_frames=3, steps_per_frame=2, key=jax.random.key(1), labels=labels)
  guided = sampling.generate(guidance.classifier_free_guidance(model, params, 1.0), init_v, init_a, **common)
  plain = sampling.generate(guidance.model_velocity(model, params), init_v, init_a, **common)
  null = sampling.generate(guidance.model_velocity(model, params), init_v, init_a,
                           **{**common, "labels": np.full(2, model.num_classes)})
  for x, y, z in zip(guided, plain, null):
    assert rel_l2(x, y) <= 1e-5
    assert rel_l2(z, y) > 1e-3  # the labels matter, so the comparison above is not vacuous


def reference_conditional(velocity_fn, init, given, given_noise, fresh, num_frames, steps, given_modality):
  """Conditional rolling generation with guidance scale 0, as a plain loop: the given modality's window is replaced
  at every step by t g + (1 - t) eps of the frames it covers; the other modality takes Euler steps."""
  window = init.shape[1]
  k = np.arange(window)
  x, frames = np.asarray(init), []

  def euler(x, start, t, dt):
    g, eps = given[:, start:start + window], given_noise[:, start:start + window]
    shape = lambda u: u.reshape((1, window) + (1,) * (g.ndim - 2))
    given_t = shape(t) * g + (1 - shape(t)) * eps
    t_batch = np.broadcast_to(t, (x.shape[0], window)).astype(np.float32)
    vel_v, vel_a = velocity_fn(x, given_t, t_batch) if given_modality == "audio" else velocity_fn(given_t, x, t_batch)
    velocity = vel_v if given_modality == "audio" else vel_a
    return x + dt.reshape((1, window) + (1,) * (x.ndim - 2)) * np.asarray(velocity)

  num_pre = window * steps
  pre = lambda i: np.clip(1 - (k / window + (num_pre - i) / num_pre), 0, 1)
  for i in range(num_pre):
    x = euler(x, 0, pre(i), np.abs(pre(i + 1) - pre(i)))
  for j in range(num_frames):
    frames.append(x[:, 0])
    x = np.concatenate([x[:, 1:], fresh[j][:, None]], axis=1)
    for i in range(steps if j < num_frames - 1 else 0):
      x = euler(x, j + 1, 1 - (k + (steps - i) / steps) / window, np.full(window, 1 / (steps * window)))
  return np.stack(frames, axis=1)


def _conditional_case(given_modality, num_frames=4, seed=0, model_and_params=None):
  """A model (default: the fixture's), the generated modality's noise window, a given sequence of
  num_frames + W frames, its noise eps and the fresh frames."""
  model, params = model_and_params or fixture_model(load_fixture("rolling_sampler.npz"))
  rng = np.random.default_rng(seed)
  video, audio = noise_window(seed, model, batch=1)
  init, frame_shape = (video, video.shape[2:]) if given_modality == "audio" else (audio, audio.shape[2:])
  given_frame = audio.shape[2:] if given_modality == "audio" else video.shape[2:]
  length = num_frames + model.predict_frames
  given = rng.uniform(-1, 1, (1, length) + given_frame).astype(np.float32)
  given_noise = rng.standard_normal(given.shape, np.float32)
  fresh = rng.standard_normal((num_frames, 1) + frame_shape, np.float32)
  return model, params, init, given, given_noise, fresh


@pytest.mark.slow
@pytest.mark.parametrize("given_modality", ["audio", "video"])
def test_conditional_generation_without_guidance_replaces_the_given_window(given_modality):
  model, params, init, given, given_noise, fresh = _conditional_case(given_modality)
  velocity_fn = guidance.model_velocity(model, params)
  generate = (sampling.generate_video_from_audio if given_modality == "audio"
              else sampling.generate_audio_from_video)
  noise = {"noise_v": fresh} if given_modality == "audio" else {"noise_a": fresh}
  frames = generate(velocity_fn, init, given, 4, 2, guidance_scale=0.0, mode="independent", given_noise=given_noise,
                    **noise)
  expected = reference_conditional(jax.jit(velocity_fn), init, given, given_noise, fresh, 4, 2, given_modality)
  assert rel_l2(frames, expected) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("given_modality", ["audio", "video"])
def test_guidance_gradient_agrees_with_finite_differences(given_modality):
  # The tiny model couples the modalities strongly enough for float32 finite differences.
  model, params, init, given, given_noise, _ = _conditional_case(given_modality, num_frames=0,
                                                                model_and_params=tiny_flav())
  velocity_fn = guidance.model_velocity(model, params)
  audio_given = given_modality == "audio"
  window = (sampling.Window(init, given, given_noise) if audio_given
            else sampling.Window(given, init, given_noise))
  t = np.array([0.875, 0.625, 0.375, 0.125], np.float32)  # last rolling sub-step: frame 0 reaches t + dt = 1
  dt = np.full(4, 0.125, np.float32)
  scale = 0.7

  def step(scale):
    conditioning = sampling.Conditioning(given_modality, scale)
    out = jax.jit(lambda w: steps.guided_euler_step(velocity_fn, w, t, dt, conditioning))(window)
    return np.asarray(out.v if audio_given else out.a)

  guidance_term = step(0.0) - step(scale)  # = [t + dt != 1] dt scale grad J
  assert np.all(guidance_term[:, 0] == 0)  # no guidance on the frame that becomes clean
  grad = guidance_term[:, 1:] / (scale * dt[1:].reshape((1, 3) + (1,) * (init.ndim - 2)))

  @jax.jit
  def objective(x):  # J = mean over the window of ((g - eps) - v_hat_g)^2, written out
    shape = t.reshape((1, 4) + (1,) * (given.ndim - 2))
    given_t = shape * given + (1 - shape) * given_noise
    t_batch = t[None]
    vel_v, vel_a = velocity_fn(x, given_t, t_batch) if audio_given else velocity_fn(given_t, x, t_batch)
    return jnp.mean(jnp.square((given - given_noise) - (vel_a if audio_given else vel_v)))

  rng = np.random.default_rng(1)
  directions = [grad / np.linalg.norm(grad)] + [rng.standard_normal(grad.shape).astype(np.float32) for _ in range(2)]
  h, errors = 1e-2, []
  for direction in directions:
    direction = np.concatenate([np.zeros_like(init[:, :1]), direction / np.linalg.norm(direction)], axis=1)
    finite_difference = float(objective(init + h * direction) - objective(init - h * direction)) / (2 * h)
    errors.append(abs(finite_difference - float(np.sum(grad * direction[:, 1:]))) / np.linalg.norm(grad))
  print(f"{given_modality} given: |finite difference - gradient| / |gradient| = {max(errors):.2e}")
  assert max(errors) <= 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("given_modality", ["audio", "video"])
def test_guided_generation_from_a_key(given_modality):
  """End to end with guidance and every draw from a key: a short given clip is padded past its end."""
  model, params, init, given, _, _ = _conditional_case(given_modality, model_and_params=tiny_flav())
  generate = (sampling.generate_video_from_audio if given_modality == "audio"
              else sampling.generate_audio_from_video)
  run = lambda scale, stochasticity=0.0: np.asarray(generate(
      guidance.model_velocity(model, params), init, given[:, :4], 4, 2, guidance_scale=scale, key=jax.random.key(3),
      stochasticity=stochasticity))
  guided, unguided = run(2.0), run(0.0)
  assert guided.shape == (1, 4) + init.shape[2:] and np.isfinite(guided).all()
  assert rel_l2(guided, unguided) > 1e-4  # the guidance term acts
  np.testing.assert_array_equal(run(2.0), guided)  # and the key fixes every draw
  stochastic = run(2.0, 0.5)
  assert rel_l2(stochastic, guided) > 1e-4  # stochastic steps draw noise
  np.testing.assert_array_equal(run(2.0, 0.5), stochastic)  # from the key too


@pytest.mark.slow
@pytest.mark.parametrize("given_modality", ["audio", "video"])
def test_stochastic_conditional_steps_reach_the_data(given_modality):
  """For a point mass (exact velocity, no guidance gradient) the generated frames are the data itself."""
  rng = np.random.default_rng(4)
  x1_v, x1_a = rng.standard_normal((8, 8, 3)).astype(np.float32), rng.standard_normal((10, 16)).astype(np.float32)
  audio_given = given_modality == "audio"
  init = rng.standard_normal((2, 4) + (x1_v.shape if audio_given else x1_a.shape)).astype(np.float32)
  given = rng.standard_normal((2, 9) + (x1_a.shape if audio_given else x1_v.shape)).astype(np.float32)
  generate = sampling.generate_video_from_audio if audio_given else sampling.generate_audio_from_video
  frames = generate(point_mass_velocity(x1_v, x1_a), init, given, 5, 2, guidance_scale=1.0, key=jax.random.key(5),
                    stochasticity=1.0)
  np.testing.assert_allclose(frames, np.broadcast_to(x1_v if audio_given else x1_a, frames.shape), atol=1e-4)


def test_conditional_inputs_are_checked():
  model, params, init, given, given_noise, fresh = _conditional_case("audio")
  velocity_fn = guidance.model_velocity(model, params)
  with pytest.raises(ValueError, match="num_frames"):
    sampling.generate_video_from_audio(velocity_fn, init, given[:, :3], 4, 2, key=jax.random.key(0))
  with pytest.raises(ValueError, match="pass a key"):
    sampling.generate_video_from_audio(velocity_fn, init, given[:, :5], 4, 2, noise_v=fresh,
                                       given_noise=given_noise)
  with pytest.raises(ValueError, match="given_noise"):
    sampling.generate_video_from_audio(velocity_fn, init, given, 4, 2, noise_v=fresh, given_noise=given_noise[:, :5])
  with pytest.raises(ValueError, match="Conditioning.given"):
    sampling.Conditioning("text")
  with pytest.raises(ValueError, match="class-conditional"):
    guidance.classifier_free_guidance(model, params, 2.0)
  conditional_model, conditional_params = tiny_flav(num_classes=3)
  guided = guidance.classifier_free_guidance(conditional_model, conditional_params, 2.0)
  with pytest.raises(ValueError, match="labels"):
    guided(*noise_window(0, conditional_model, 1), np.ones((1, 4), np.float32))


def reference_official(velocity_fn, init, given, given_noise, fresh, num_frames, steps_per_frame, given_modality,
                       scale, key):
  """The official sampler's sample_a2v / sample_v2a (diffusion/rectified_flow.py) as a plain loop over B streams at
  once: J = the mean over the whole batch of ((g - eps) - v_hat_g)^2 (its `loss.mean()`), x += dt v_hat_x -
  [t + dt != 1] dt scale grad_x J. The given modality enters as t g + (1 - t) eps, except in the rolling steps of
  audio -> video, which draw its noise afresh at every step (`torch.randn_like`): here from each stream's key as the
  sampler draws it, step_noise_keys(key, B)[b] split at every rolling step."""
  batch, window = init.shape[:2]
  audio_given = given_modality == "audio"
  stream_keys = list(steps.step_noise_keys(key, batch))
  frame = lambda x: (lambda u: np.reshape(u, (1, window) + (1,) * (x.ndim - 2)))

  def fresh_given_noise():
    draws = []
    for b in range(batch):
      stream_keys[b], draw = jax.random.split(stream_keys[b])
      draws.append(jax.random.normal(draw, (math.prod(given.shape[2:]) * window,)).reshape((window,) + given.shape[2:]))
    return np.stack(draws)

  @jax.jit
  def gradient(x, given_t, target, t):
    def objective(x):
      vel_v, vel_a = velocity_fn(x, given_t, t) if audio_given else velocity_fn(given_t, x, t)
      vel_x, vel_given = (vel_v, vel_a) if audio_given else (vel_a, vel_v)
      return jnp.mean(jnp.square(target - vel_given)), vel_x
    return jax.grad(objective, has_aux=True)(x)

  def step(x, start, t, dt, rolling):
    g, eps = given[:, start:start + window], given_noise[:, start:start + window]
    noise = fresh_given_noise() if rolling and audio_given else eps
    given_t = frame(g)(t) * g + (1 - frame(g)(t)) * noise
    grad, vel_x = gradient(x, given_t, g - eps, np.broadcast_to(t, (batch, window)).astype(np.float32))
    return x + frame(x)(dt) * np.asarray(vel_x) - frame(x)((t + dt != 1) * dt) * scale * np.asarray(grad)

  k, num_pre = np.arange(window), window * steps_per_frame
  pre = lambda i: np.clip(1 - (k / window + (num_pre - i) / num_pre), 0, 1)
  x, frames = np.asarray(init), []
  for i in range(num_pre):
    x = step(x, 0, pre(i), np.abs(pre(i + 1) - pre(i)), rolling=False)
  for j in range(num_frames):
    frames.append(x[:, 0])
    x = np.concatenate([x[:, 1:], fresh[j][:, None]], axis=1)
    for i in range(steps_per_frame if j < num_frames - 1 else 0):
      t = 1 - (k + (steps_per_frame - i) / steps_per_frame) / window
      x = step(x, j + 1, t, np.full(window, 1 / (steps_per_frame * window)), rolling=True)
  return np.stack(frames, axis=1)


def _official_case(given_modality, batch=2, num_frames=3, seed=6):
  """The tiny model's velocity, its noise windows for `batch` streams, given frames, their noise, fresh frames."""
  model, params = tiny_flav()
  rng = np.random.default_rng(seed)
  video, audio = noise_window(seed, model, batch)
  init = video if given_modality == "audio" else audio
  given_frame = (audio if given_modality == "audio" else video).shape[2:]
  given = rng.uniform(-1, 1, (batch, num_frames + model.predict_frames) + given_frame).astype(np.float32)
  given_noise = rng.standard_normal(given.shape, np.float32)
  fresh = rng.standard_normal((num_frames, batch) + init.shape[2:], np.float32)
  return guidance.model_velocity(model, params), init, given, given_noise, fresh


@pytest.mark.slow
@pytest.mark.parametrize("given_modality", ["audio", "video"])
def test_official_mode_is_the_official_sampler(given_modality):
  velocity_fn, init, given, given_noise, fresh = _official_case(given_modality)
  generate = (sampling.generate_video_from_audio if given_modality == "audio"
              else sampling.generate_audio_from_video)
  noise = {"noise_v": fresh} if given_modality == "audio" else {"noise_a": fresh}
  key, scale = jax.random.key(7), 3.0
  common = dict(guidance_scale=scale, given_noise=given_noise, key=key, **noise)
  official = np.asarray(generate(velocity_fn, init, given, 3, 2, mode="official", **common))
  expected = reference_official(velocity_fn, init, given, given_noise, fresh, 3, 2, given_modality, scale, key)
  error = rel_l2(official, expected)
  independent = np.asarray(generate(velocity_fn, init, given, 3, 2, mode="independent", **common))
  print(f"{given_modality} given: official mode vs the official loop {error:.2e}, vs independent mode "
        f"{rel_l2(independent, expected):.2e}")
  assert error <= 1e-5
  assert rel_l2(independent, expected) > 1e-3  # the modes differ here, so the comparison above is not vacuous


def test_the_official_guidance_is_the_default():
  assert sampling.Conditioning("audio") == sampling.Conditioning("audio", 100.0, "official")
  assert sampling.Conditioning("audio").fresh_given_noise and not sampling.Conditioning("video").fresh_given_noise
  assert not sampling.Conditioning("audio", mode="independent").fresh_given_noise
  options = SamplingOptions()
  assert (options.condition_mode, options.condition_guidance) == ("official", 100.0)
  assert SamplingOptions.from_config(synthetic_tiny.get_config().sample) == SamplingOptions(
      steps_per_frame=2, stochasticity=1.0, guidance_scale=1.0, chunk_frames=20)
  with pytest.raises(ValueError, match="Conditioning.mode='held': expected one of"):
    sampling.Conditioning("audio", mode="held")
  config = synthetic_tiny.get_config()
  config.sample.condition_mode = "per_stream"
  with pytest.raises(ValueError, match="config.sample.condition_mode='per_stream': expected one of"):
    SamplingOptions.from_config(config.sample)


_DEVICES_SCRIPT = textwrap.dedent("""
    import json
    import jax, numpy as np
    from test_guidance import _official_case
    from rflav_jax.flow import sampling

    assert jax.device_count() == 2, jax.devices()
    runs = []
    for given_modality in ("audio", "video"):
      velocity_fn, init, given, _, _ = _official_case(given_modality)
      generate = (sampling.generate_video_from_audio if given_modality == "audio"
                  else sampling.generate_audio_from_video)
      runs.append([np.asarray(generate(velocity_fn, init, given, 3, 2, guidance_scale=3.0, key=jax.random.key(8),
                                       devices=devices)) for devices in (jax.devices()[:1], jax.devices())])
    print(json.dumps([float(np.linalg.norm(one - two) / np.linalg.norm(one)) for one, two in runs]))
""")


@pytest.mark.slow
def test_official_mode_gives_the_same_streams_on_two_devices():
  """The official objective averages over all B streams, also when they are split over devices. (Scale 3: at 100 this
  random model amplifies the float32 rounding differences of the two splits to about 1e-2.)"""
  errors = json.loads(run_on_cpu_devices(_DEVICES_SCRIPT, 2).strip().splitlines()[-1])
  print(f"official mode, 1 vs 2 devices: {errors}")
  assert max(errors) <= 1e-5
