"""The Generator: the shipped model's stream pinned before the generation API existed, every mode against the
flow.sampling contract functions for the same keys, compiled programs reused across runs, call and FLOP counts."""
import pathlib

import jax
import numpy as np
import pytest

from configs import synthetic_tiny
from rflav_jax.codecs.pixel import PixelCodec, to_uint8
from rflav_jax.codecs.vocoder import MelVocoder
from rflav_jax.flow import sampling
from rflav_jax.flow.guidance import model_velocity
from rflav_jax.flow.progress import CallProgress
from rflav_jax.generator import Generator, SamplingOptions
from rflav_jax.models.flav import FLAV, dummy_inputs
from rflav_jax.models.flops import forward_flops

PINNED = pathlib.Path(__file__).resolve().parent / "data" / "shipped_stream_seed0_label0.npz"
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
STEPS, STOCHASTICITY, CONDITION_GUIDANCE = 2, 0.5, 0.7


@pytest.fixture(scope="module")
def tiny():
  """(generator, its CallProgress, the velocity its programs run): a 1-block pixel FLAV (8x8 frames, window 4,
  3 classes) with N(0, 0.2) weights, chunks of 3 frames, Griffin-Lim of 4 iterations."""
  model = FLAV(latent_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, predict_frames=4,
               n_mels=256, num_classes=3)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *dummy_inputs(model))["params"]
  params = jax.tree.map(lambda x: rng.normal(0.0, 0.2, x.shape).astype(np.float32), shapes)
  progress = CallProgress()
  options = SamplingOptions(steps_per_frame=STEPS, stochasticity=STOCHASTICITY, condition_guidance=CONDITION_GUIDANCE,
                            chunk_frames=3)
  generator = Generator(model, params, PixelCodec(3), MelVocoder(256, 1.0, griffin_lim_iters=4), options,
                        progress=progress)
  # The same velocity as the generator's (counted by the same progress), so the contract functions below run the
  # generator's compiled programs.
  return generator, progress, progress.counted(model_velocity(model, params))


def _counting_compiles():
  compiles = []
  listener = lambda name, _, **kwargs: compiles.append(name) if name == BACKEND_COMPILE else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  return compiles, lambda: jax.monitoring.unregister_event_duration_listener(listener)


def test_the_shipped_model_streams_what_it_streamed_before():  # fast tier: it pins what users get
  data = np.load(PINNED)
  generator = Generator.from_config(synthetic_tiny.get_config())
  assert generator.options.chunk_frames == 20
  chunk = next(generator.stream([0], 20, seed=0))
  differences = {"video": np.abs(chunk.video.astype(int) - data["video"]).max(),
                 "mel": np.abs(chunk.mel - data["mel"]).max(), "wav": np.abs(chunk.wav - data["wav"]).max()}
  print(f"largest differences from the pinned stream: {differences}")
  assert chunk.video.dtype == np.uint8 and chunk.video.shape == data["video"].shape
  assert chunk.mel.shape == data["mel"].shape and chunk.wav.shape == data["wav"].shape
  assert differences["video"] <= 1 and differences["mel"] <= 1e-4 and differences["wav"] <= 1e-4


@pytest.mark.slow
def test_a_chunked_stream_is_the_contract_functions_one_long_call(tiny):
  generator, _, velocity = tiny
  labels = np.array([0, 2])
  chunks = list(generator.stream(labels, 7, seed=2))
  assert [c.video.shape[1] for c in chunks] == [3, 3, 1]  # chunks of 3 frames, the last cut at 7
  video, mel, wav = (np.concatenate([getattr(c, name) for c in chunks], axis=1) for name in ("video", "mel", "wav"))
  assert video.shape == (2, 7, 8, 8, 3) and video.dtype == np.uint8 and mel.shape == (2, 7, 10, 256)
  assert wav.shape == (2, 7 * 1600) and np.isfinite(wav).all()
  key_v, key_a, key = jax.random.split(jax.random.key(2), 3)
  frames_v, frames_a = sampling.generate(velocity, jax.random.normal(key_v, (2, 4, 8, 8, 3)),
                                         jax.random.normal(key_a, (2, 4, 10, 256)), 7, STEPS, key=key, labels=labels,
                                         stochasticity=STOCHASTICITY)
  assert np.abs(video.astype(int) - to_uint8(frames_v)).max() <= 1
  np.testing.assert_allclose(mel, frames_a, atol=1e-5)


@pytest.mark.slow
def test_a_second_stream_compiles_nothing(tiny):
  generator, _, _ = tiny
  list(generator.stream([1], 4, seed=0, vocode=False))
  compiles, stop = _counting_compiles()
  try:
    list(generator.stream([2], 5, seed=1, vocode=False))
    list(generator.with_params(jax.tree.map(lambda x: 0.5 * x, generator.params)).stream([0], 4, vocode=False))
  finally:
    stop()
  assert compiles == []


@pytest.mark.slow
def test_video_for_and_audio_for_are_the_contract_functions(tiny):
  generator, _, velocity = tiny
  rng = np.random.default_rng(1)
  labels = np.array([1, 3])  # a class and the null label
  common = dict(guidance_scale=CONDITION_GUIDANCE, labels=labels, stochasticity=STOCHASTICITY)
  mel = rng.uniform(-1, 1, (2, 6, 10, 256)).astype(np.float32)
  video = generator.video_for(mel, labels, 5, seed=3)
  key_init, key = jax.random.split(jax.random.key(3))
  expected = sampling.generate_video_from_audio(velocity, jax.random.normal(key_init, (2, 4, 8, 8, 3)), mel, 5, STEPS,
                                                key=key, **common)
  assert video.shape == (2, 5, 8, 8, 3) and np.abs(video.astype(int) - to_uint8(expected)).max() <= 1

  given = rng.integers(0, 256, (2, 9, 8, 8, 3), dtype=np.uint8)
  mel, wav = generator.audio_for(given, labels, 5, seed=4)
  key_init, key = jax.random.split(jax.random.key(4))
  expected = sampling.generate_audio_from_video(velocity, jax.random.normal(key_init, (2, 4, 10, 256)),
                                                given / 127.5 - 1.0, 5, STEPS, key=key, **common)
  assert mel.shape == (2, 5, 10, 256) and wav.shape == (2, 5 * 1600)
  np.testing.assert_allclose(mel, expected, atol=1e-5)


@pytest.mark.slow
def test_continue_from_starts_with_the_clip(tiny):
  generator, _, _ = tiny
  rng = np.random.default_rng(2)
  video = rng.integers(0, 256, (1, 4, 8, 8, 3), dtype=np.uint8)
  mel = rng.uniform(-1, 1, (1, 4, 10, 256)).astype(np.float32)
  chunks = list(generator.continue_from(video, mel, [0], 7, seed=5, vocode=False))
  assert [c.video.shape[1] for c in chunks] == [3, 3, 1] and all(c.wav is None for c in chunks)
  # Frame 0 of the window sits at flow time 1: emitted as it is, without noise or a step.
  np.testing.assert_array_equal(chunks[0].video[:, 0], video[:, 0])
  np.testing.assert_allclose(chunks[0].mel[:, 0], mel[:, 0], atol=1e-6)
  with pytest.raises(ValueError, match="first 4 frames of video and mel"):
    generator.continue_from(video[:, :3], mel[:, :3], [0])


@pytest.mark.slow
def test_num_calls_counts_the_calls_made(tiny):
  generator, progress, _ = tiny
  W = 4
  assert generator.num_calls(7) == (W + 9) * STEPS  # pre-roll, then whole chunks of 3
  assert generator.num_calls(7, "continue_from") == 9 * STEPS
  assert generator.num_calls(5, "video_for") == generator.num_calls(5, "audio_for") == (W + 4) * STEPS
  runs = {"stream": lambda: list(generator.stream([0], 7, vocode=False)),
          "continue_from": lambda: list(generator.continue_from(np.zeros((1, W, 8, 8, 3), np.uint8),
                                                                np.zeros((1, W, 10, 256), np.float32), [0], 7,
                                                                vocode=False)),
          "video_for": lambda: generator.video_for(np.zeros((1, 9, 10, 256), np.float32), [0], 5),
          "audio_for": lambda: generator.audio_for(np.zeros((1, 9, 8, 8, 3), np.uint8), [0], 5, vocode=False)}
  for mode, run in runs.items():
    run()
    jax.effects_barrier()
    frames = 7 if mode in ("stream", "continue_from") else 5
    assert progress.calls == generator.num_calls(frames, mode), mode


def test_flops_options_and_labels_are_checked(tiny):
  generator, _, _ = tiny
  model = generator.model
  assert generator.flops_per_frame == STEPS * forward_flops(model) == STEPS * generator.flops_per_call()
  guided = Generator(model, generator.params, generator.codec, generator.vocoder, SamplingOptions(guidance_scale=2.0))
  assert guided.flops_per_call(3) == 6 * forward_flops(model)  # classifier-free: two windows per stream
  config = synthetic_tiny.get_config()
  config.sample.chunk_frames = 0
  with pytest.raises(ValueError, match="config.sample.chunk_frames=0 must be a positive int"):
    SamplingOptions.from_config(config.sample)
  with pytest.raises(ValueError, match=r"stochasticity=1.5: expected .* in \[0, 1\]"):
    SamplingOptions(stochasticity=1.5)
  with pytest.raises(ValueError, match=r"labels\[1\]=4: the model has classes 0..2 \(and 3, the null label\)"):
    generator.stream([0, 4], 3)
  with pytest.raises(ValueError, match="one int class label per stream"):
    generator.stream([[0]], 3)
  with pytest.raises(ValueError, match="mode='joint'"):
    generator.num_calls(3, "joint")
