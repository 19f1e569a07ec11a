"""Live streaming parts: request checking, fMP4 fragments, viewers' bounded buffers, batched live sampling."""
import asyncio
import io

import av
import jax
import numpy as np
import pytest

from rflav_jax.codecs.pixel import PixelCodec
from rflav_jax.codecs.vocoder import MelVocoder
from rflav_jax.generator import Generator, SamplingOptions
from rflav_jax.models.flav import FLAV, dummy_inputs
from rflav_jax.serve.batch import BatchSampler
from rflav_jax.serve.fragments import FragmentEncoder
from rflav_jax.serve.hub import Viewer
from rflav_jax.serve.requests import BadRequest, StreamRequest, parse_request


def test_requests_take_label_seed_and_guidance_as_strings():
  assert parse_request({}, 3) == StreamRequest(0, 0, 1.0)
  assert parse_request({"label": "3", "seed": "7", "guidance": "2.5"}, 3) == StreamRequest(3, 7, 2.5)  # 3: null label
  current = StreamRequest(1, 9, 2.0)
  assert parse_request({"label": "2"}, 3, current, allowed=("label", "guidance")) == StreamRequest(2, 9, 2.0)


@pytest.mark.parametrize("query, num_classes, message", [
    ({"label": "4"}, 3, r"label=4: the model has classes 0..2 \(and 3, the null label\)"),
    ({"label": "red"}, 3, "label='red' must be an int"),
    ({"seed": "-1"}, 3, r"seed=-1 must be an int in \[0, 2147483647\]"),
    ({"seed": "1.5"}, 3, "seed='1.5' must be an int"),
    ({"guidance": "nan"}, 3, r"guidance=nan must be a number in \[0, 20\]"),
    ({"guidance": "21"}, 3, r"guidance=21 must be a number in \[0, 20\]"),
    ({"guidance": "2"}, 0, "the model is unconditional"),
    ({"colour": "red"}, 3, "unknown parameter\\(s\\) colour; expected some of label, seed, guidance"),
])
def test_bad_requests_say_what_was_wrong(query, num_classes, message):
  with pytest.raises(BadRequest, match=message):
    parse_request(query, num_classes)


def test_a_running_stream_keeps_its_seed():
  with pytest.raises(BadRequest, match="unknown parameter\\(s\\) seed; expected some of label, guidance"):
    parse_request({"seed": "1"}, 3, allowed=("label", "guidance"))


def _chunk(level: int, frames: int = 5) -> tuple[np.ndarray, np.ndarray]:
  t = np.arange(frames * 1600) / 16000
  return np.full((frames, 32, 32, 3), level, np.uint8), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_fragments_are_read_by_a_player_from_any_one_on():
  encoder = FragmentEncoder(fps=10, sample_rate=16000)
  fragments = []
  for level in (30, 90, 150, 210):
    fragments += encoder.write(*_chunk(level))
  fragments += encoder.close()
  assert len(fragments) == 4 and all(f[4:8] == b"moof" for f in fragments)  # one fragment per chunk
  assert encoder.init[4:8] == b"ftyp" and b"moov" in encoder.init and encoder.codecs.startswith("avc1.")
  for first in (0, 2):  # a viewer joining at fragment 2 reads the init segment, then fragments 2 and 3
    with av.open(io.BytesIO(encoder.init + b"".join(fragments[first:]))) as container:
      assert {s.type: s.codec_context.name for s in container.streams} == {"video": "h264", "audio": "aac"}
      levels = [frame.to_ndarray(format="rgb24").mean() for frame in container.decode(video=0)]
    assert len(levels) == 5 * (4 - first)
    np.testing.assert_allclose(levels[::5], (30, 90, 150, 210)[first:], atol=3)  # each fragment its own chunk


def test_a_viewer_that_falls_behind_skips_its_oldest_fragments():
  async def run():
    viewer = Viewer(max_fragments=3)
    for i in range(10):
      viewer.push(bytes([i]))
    viewer.end()
    return [await viewer.next() for _ in range(4)], viewer.skipped

  received, skipped = asyncio.run(run())
  assert received == [bytes([7]), bytes([8]), bytes([9]), None] and skipped == 7


@pytest.fixture(scope="module")
def tiny_generator():
  """A 1-block pixel FLAV (8x8 frames, window 4, 3 classes) with N(0, 0.2) weights, stochastic steps."""
  model = FLAV(latent_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, predict_frames=4,
               n_mels=256, num_classes=3)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *dummy_inputs(model))["params"]
  params = jax.tree.map(lambda x: rng.normal(0.0, 0.2, x.shape).astype(np.float32), shapes)
  options = SamplingOptions(steps_per_frame=2, stochasticity=0.5, chunk_frames=3)
  return Generator(model, params, PixelCodec(3), MelVocoder(256, 1.0), options)


@pytest.mark.slow
def test_streams_rolled_in_one_batch_are_each_their_own_stream(tiny_generator):
  """Streams that join a batch at different chunks, one of them guided, make the frames that each makes alone."""
  generator = tiny_generator
  batch = BatchSampler(generator, chunk_frames=3)
  first = batch.start(label=1, seed=3, guidance=1.0)
  mels = {0: [batch.roll([first])[1][0]], 1: []}
  second = batch.start(label=2, seed=4, guidance=2.0)
  for _ in range(2):
    _, mel = batch.roll([second, first])
    mels[1].append(mel[0])
    mels[0].append(mel[1])
  for (label, seed, guidance), mel in zip(((1, 3, 1.0), (2, 4, 2.0)), (mels[0], mels[1])):
    alone = Generator(generator.model, generator.params, generator.codec, generator.vocoder,
                      SamplingOptions(steps_per_frame=2, stochasticity=0.5, chunk_frames=3, guidance_scale=guidance))
    expected = np.concatenate([c.mel[0] for c in alone.stream([label], len(mel) * 3, seed=seed, vocode=False)])
    np.testing.assert_allclose(np.concatenate(mel), expected, atol=1e-4)  # batched float32 sums differ slightly
  assert batch.compiled == {(1, False), (2, True)}


@pytest.mark.slow
def test_a_class_change_takes_effect_at_the_next_chunk_without_compiling(tiny_generator):
  batch = BatchSampler(tiny_generator, chunk_frames=3)
  streams = [batch.start(label=0, seed=5, guidance=1.0) for _ in range(2)]
  batch.roll(streams)
  compiles = []
  listener = lambda name, _, **kwargs: compiles.append(name) if "compile" in name else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    streams[1].label = 2
    _, mel = batch.roll(streams)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert not compiles
  assert np.abs(mel[0] - mel[1]).max() > 1e-3  # same seed, same past: only the label differs
