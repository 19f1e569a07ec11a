"""Rolling sampler: official golden stream, streaming in chunks, compile counts, host memory, devices, stochastic
steps."""
import json
import os
import textwrap

import jax
import numpy as np
import pytest
from jax.tree_util import Partial

from helpers import (audio_layout, fixture_model, load_fixture, noise_window, point_mass_velocity, rel_l2,
                     run_on_cpu_devices, tiny_flav, video_layout)
from rflav_jax.flow import sampling, steps

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


def test_generate_reproduces_official_rolling_stream():
  data = load_fixture("rolling_sampler.npz")
  model, params = fixture_model(data)
  calls = []

  def recording_velocity(params, v, a, t):
    jax.debug.callback(lambda t: calls.append(np.asarray(t)), t)
    return model.apply({"params": params}, v, a, t)

  frames_v, frames_a = sampling.generate(
      Partial(recording_velocity, params), video_layout(data["init_v"]), audio_layout(data["init_a"]), 14, 2,
      noise_v=video_layout(data["injected_noise_v"]), noise_a=audio_layout(data["injected_noise_a"]))
  expected_v, expected_a = video_layout(data["frames_v"]), audio_layout(data["frames_a"])
  assert frames_v.shape == expected_v.shape and frames_a.shape == expected_a.shape
  errors = [(rel_l2(frames_v[:, j], expected_v[:, j]), rel_l2(frames_a[:, j], expected_a[:, j])) for j in range(14)]
  assert max(max(e) for e in errors) <= 1e-4, errors
  # The network saw exactly the official per-frame times: 8 pre-roll calls, then 2 per further frame.
  t_rf = 1 + 999 * np.stack(calls).astype(np.float32)
  assert t_rf.shape == data["calls_t_rf"].shape
  np.testing.assert_allclose(t_rf, data["calls_t_rf"], rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("stochasticity", [0.0, 0.7])
def test_stream_in_chunks_equals_one_call_and_compiles_once(stochasticity):
  model, params = tiny_flav()
  traces = []

  def counting_velocity(params, v, a, t):
    traces.append(1)  # runs once per trace, never per step
    return model.apply({"params": params}, v, a, t)

  velocity_fn = Partial(counting_velocity, params)
  init_v, init_a = noise_window(1, model, batch=2)
  key = jax.random.key(2)
  full_v, full_a = sampling.generate(velocity_fn, init_v, init_a, 15, 2, key=key, stochasticity=stochasticity)

  compiles = []
  listener = lambda name, _, **kwargs: compiles.append(name) if name == BACKEND_COMPILE else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    stream = sampling.RollingSampler(velocity_fn, 2, stochasticity=stochasticity).stream(init_v, init_a, key,
                                                                                         chunk_frames=5)
    chunks = [next(stream)]
    after_first = (len(traces), len(compiles))
    chunks += [next(stream), next(stream)]
    after_third = (len(traces), len(compiles))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  print(f"compiles for the first chunk: {after_first[1]} programs, {after_first[0]} traces of the network")
  assert after_first[1] > 0 and after_third == after_first  # nothing traced or compiled after the first chunk
  assert all(isinstance(c, np.ndarray) and c.shape[1] == 5 for chunk in chunks for c in chunk)
  assert rel_l2(np.concatenate([c[0] for c in chunks], axis=1), full_v) <= 1e-6
  assert rel_l2(np.concatenate([c[1] for c in chunks], axis=1), full_a) <= 1e-6


def _resident_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident memory is read from /proc (Linux)")
def test_long_stream_keeps_host_memory_flat():
  model, params = tiny_flav()
  init_v, init_a = noise_window(3, model, batch=1)
  sampler = sampling.RollingSampler(Partial(lambda p, v, a, t: model.apply({"params": p}, v, a, t), params), 2)
  resident = {}
  for i, (frames_v, frames_a) in enumerate(sampler.stream(init_v, init_a, jax.random.key(4), chunk_frames=100)):
    assert np.isfinite(frames_v).all() and np.isfinite(frames_a).all()
    emitted = (i + 1) * 100
    if emitted in (200, 2000):
      resident[emitted] = _resident_bytes()
    if emitted == 2000:
      break
  print(f"host RSS at frame 200: {resident[200] / 2**20:.1f} MiB, at frame 2000: {resident[2000] / 2**20:.1f} MiB")
  assert resident[2000] <= 1.1 * resident[200]


_DEVICES_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.tree_util import Partial
    from helpers import noise_window, tiny_flav
    from rflav_jax.flow import sampling

    assert jax.device_count() == 8, jax.devices()
    model, params = tiny_flav()
    velocity_fn = Partial(lambda p, v, a, t: model.apply({"params": p}, v, a, t), params)
    init_v, init_a = noise_window(5, model, batch=8)
    key = jax.random.key(6)
    one = sampling.generate(velocity_fn, init_v, init_a, 6, 2, key=key, devices=jax.devices()[:1])
    eight = sampling.generate(velocity_fn, init_v, init_a, 6, 2, key=key)
    one += sampling.generate(velocity_fn, init_v, init_a, 6, 2, key=key, stochasticity=0.5, devices=jax.devices()[:1])
    eight += sampling.generate(velocity_fn, init_v, init_a, 6, 2, key=key, stochasticity=0.5)
    try:
      sampling.generate(velocity_fn, init_v[:3], init_a[:3], 6, 2, key=key)
      uneven_error = ""
    except ValueError as e:
      uneven_error = str(e)
    print(json.dumps({
        "devices_used": [len(x.sharding.device_set) for x in one + eight],
        "rel_l2": [float(np.linalg.norm(np.asarray(x) - np.asarray(y)) / np.linalg.norm(np.asarray(x)))
                   for x, y in zip(one, eight)],
        "uneven_error": uneven_error}))
""")


@pytest.mark.slow
def test_eight_devices_give_the_frames_of_one():
  report = json.loads(run_on_cpu_devices(_DEVICES_SCRIPT, 8, timeout=300).strip().splitlines()[-1])
  print(report)
  assert report["devices_used"] == [1, 1, 1, 1, 8, 8, 8, 8]  # plain Euler, then stochastic steps
  assert max(report["rel_l2"]) <= 1e-5
  assert "cannot be split evenly over 8 devices" in report["uneven_error"]


def test_bad_inputs_name_the_problem():
  model, params = tiny_flav()
  velocity_fn = Partial(lambda p, v, a, t: model.apply({"params": p}, v, a, t), params)
  init_v, init_a = noise_window(0, model, batch=1)
  with pytest.raises(ValueError, match="key"):
    sampling.generate(velocity_fn, init_v, init_a, 3, 2)
  with pytest.raises(ValueError, match=r"noise_v .* expected \(num_frames, B, ...\)"):
    sampling.generate(velocity_fn, init_v, init_a, 3, 2, noise_v=init_v[:, :2], noise_a=init_a[:, :3])
  with pytest.raises(ValueError, match="init_a"):
    sampling.generate(velocity_fn, init_v, init_a[:, :2], 3, 2, key=jax.random.key(0))
  with pytest.raises(ValueError, match="steps_per_frame"):
    sampling.RollingSampler(velocity_fn, 0)
  for stochasticity in (-0.1, 1.5):
    with pytest.raises(ValueError, match=rf"stochasticity={stochasticity}: expected .* in \[0, 1\]"):
      sampling.RollingSampler(velocity_fn, 2, stochasticity=stochasticity)
  noise_v, noise_a = np.zeros((3,) + init_v[:, 0].shape, np.float32), np.zeros((3,) + init_a[:, 0].shape, np.float32)
  with pytest.raises(ValueError, match="stochasticity=0.5 draws noise at every step: pass a key"):
    sampling.generate(velocity_fn, init_v, init_a, 3, 2, noise_v=noise_v, noise_a=noise_a, stochasticity=0.5)


# ----------------------------------------------------------------------------------------------------
# Stochastic steps, checked against a data distribution whose exact velocity is known (point_mass_velocity).


def test_renoise_redraws_the_share_of_the_noise_asked_for():
  rng = np.random.default_rng(0)
  x1, eps, fresh = (rng.standard_normal((2, 4, 6)).astype(np.float32) for _ in range(3))
  t = np.array([[0.2, 0.5, 0.75, 0.9]] * 2, np.float32)
  t_next = np.array([[0.3, 0.6, 0.85, 1.0]] * 2, np.float32)
  per_frame = lambda u: u[..., None]
  x = per_frame(t) * x1 + per_frame(1 - t) * eps
  velocity = x1 - eps
  stepped = x + per_frame(t_next - t) * velocity
  np.testing.assert_allclose(stepped, per_frame(t_next) * x1 + per_frame(1 - t_next) * eps, atol=1e-6)  # Euler
  for s in (0.0, 0.6, 1.0):
    out = steps.renoise(x, stepped, velocity, t, t_next, s, fresh)
    kept = np.sqrt(1 - s ** 2) * eps + s * fresh  # unit variance for independent eps and fresh
    np.testing.assert_allclose(out, per_frame(t_next) * x1 + per_frame(1 - t_next) * kept, atol=1e-5)
  np.testing.assert_allclose(out[:, 3], x1[:, 3], atol=1e-6)  # a frame stepped to t = 1 gets no noise


@pytest.mark.parametrize("stochasticity", [0.0, 1.0])
def test_stochastic_steps_keep_the_data_and_redraw_the_noise(stochasticity):
  rng = np.random.default_rng(3)
  batch, window, steps, emitted = 2, 4, 2, 6
  x1_v, x1_a = rng.standard_normal((8, 8, 3)).astype(np.float32), rng.standard_normal((10, 16)).astype(np.float32)
  init = sampling.Window(rng.standard_normal((batch, window, 8, 8, 3)).astype(np.float32),
                         rng.standard_normal((batch, window, 10, 16)).astype(np.float32))
  incoming = sampling.Window(rng.standard_normal((emitted, batch, 8, 8, 3)).astype(np.float32),
                             rng.standard_normal((emitted, batch, 10, 16)).astype(np.float32))
  sampler = sampling.RollingSampler(point_mass_velocity(x1_v, x1_a), steps, stochasticity=stochasticity)
  start = sampler.with_noise_keys(init, jax.random.key(0))
  rolled, frames_v, frames_a = sampler.roll(sampler.start(start), incoming)
  # Every emitted frame is the data itself, whatever noise the steps drew.
  np.testing.assert_allclose(frames_v, np.broadcast_to(x1_v, frames_v.shape), atol=1e-4)
  np.testing.assert_allclose(frames_a, np.broadcast_to(x1_a, frames_a.shape), atol=1e-4)
  # The noise of the newest frame, after its first S steps (now at t = 1 / W): kept exactly by plain Euler,
  # drawn afresh (independent of it, unit variance) by fully stochastic steps.
  t = 1.0 / window
  noise = (np.asarray(rolled.v[:, -1]) - t * x1_v) / (1 - t)
  appended = incoming.v[-1]
  if stochasticity == 0.0:
    np.testing.assert_allclose(noise, appended, atol=1e-4)
  else:
    assert abs(np.corrcoef(noise.ravel(), appended.ravel())[0, 1]) < 0.2 and 0.85 < noise.std() < 1.15
  assert (rolled.noise_key is None) == (stochasticity == 0.0)
