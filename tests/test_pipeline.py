"""Input pipeline: per-host shards that cover the data, seeded order, batch layout, conversion, hooks."""
import itertools
import json

import numpy as np
import pytest

from helpers import load_fixture
from rflav_jax.codecs.sdvae import LATENT_SCALE, SdVaeCodec
from rflav_jax.convert.sdvae import sdvae_from_diffusers
from rflav_jax.data import pipeline, synthetic, synthetic_tfds

NUM_CLIPS = 12


@pytest.fixture(scope="module")
def data():
  return synthetic.synthetic_dataset(NUM_CLIPS, synthetic.BouncingBallConfig(num_frames=4), seed=11)


@pytest.fixture(scope="module")
def tfds_builder(tmp_path_factory):
  return synthetic_tfds.build_bouncing_ball(tmp_path_factory.mktemp("tfds"), num_train=NUM_CLIPS, num_test=1,
                                            num_frames=4, seed=11)


def clip_indices(batches, data) -> list[int]:
  """Which clip of `data` each example of the batches is, found from its video (unique per clip)."""
  lookup = {video.tobytes(): i for i, video in enumerate(data["video"])}
  as_uint8 = lambda video: np.round((video + 1.0) * 127.5).astype(np.uint8)
  return [lookup[as_uint8(video).tobytes()] for batch in batches for video in batch["video"]]


def one_pass(source, **kwargs) -> list[dict]:
  kwargs = {"global_batch_size": 4, "seed": 0, "process_index": 0, "process_count": 1, "local_device_count": 1,
            "repeat": False, **kwargs}
  return list(pipeline.make_pipeline(source, **kwargs))


@pytest.mark.parametrize("source_kind", ["in_memory", "tfds"])
def test_two_hosts_read_disjoint_shards_that_cover_the_data(source_kind, data, tfds_builder):
  source = data if source_kind == "in_memory" else tfds_builder
  hosts = [clip_indices(one_pass(source, process_index=i, process_count=2), data) for i in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == NUM_CLIPS // 2  # global batch 4 -> 2 per host, 3 batches each
  assert not set(hosts[0]) & set(hosts[1])
  assert sorted(hosts[0] + hosts[1]) == list(range(NUM_CLIPS))


@pytest.mark.parametrize("source_kind", ["in_memory", "tfds"])
def test_seed_fixes_the_order(source_kind, data, tfds_builder):
  source = data if source_kind == "in_memory" else tfds_builder
  order = lambda seed: clip_indices(one_pass(source, seed=seed), data)
  assert order(1) == order(1)
  assert order(1) != order(2)
  assert sorted(order(1)) == list(range(NUM_CLIPS))


def test_repeat_reshuffles_every_epoch_deterministically(data):
  epochs = lambda: clip_indices(itertools.islice(pipeline.make_pipeline(
      data, global_batch_size=4, seed=3, process_count=1, process_index=0, local_device_count=1), 6), data)
  first = epochs()
  assert first == epochs()
  one, two = first[:NUM_CLIPS], first[NUM_CLIPS:]
  assert sorted(one) == sorted(two) == list(range(NUM_CLIPS)) and one != two


def test_batches_are_flat_converted_and_scaled(data):
  batches = one_pass(data, global_batch_size=8, process_count=2, local_device_count=4, audio_scale=3.5)
  batch = batches[0]
  assert batch["video"].shape == (4, 4, 32, 32, 3) and batch["video"].dtype == np.float32
  assert batch["mel"].shape == (4, 4, 10, 256) and batch["mel"].dtype == np.float32
  assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
  index = clip_indices([batch], data)
  np.testing.assert_allclose(batch["video"], data["video"][index] / 127.5 - 1.0, atol=1e-6)
  np.testing.assert_allclose(batch["mel"], data["mel"][index] * 3.5, rtol=1e-6)
  np.testing.assert_array_equal(batch["label"], data["label"][index])


def test_encode_video_hook_replaces_the_video(data):
  downsample = lambda video: video[:, :, ::4, ::4, :].mean(axis=-1, keepdims=True)
  plain, encoded = one_pass(data)[0], one_pass(data, encode_video=downsample)[0]
  assert encoded["video"].shape == (4, 4, 8, 8, 1)
  np.testing.assert_allclose(encoded["video"], downsample(plain["video"]), atol=1e-6)
  np.testing.assert_array_equal(encoded["mel"], plain["mel"])


def test_bad_arguments_are_rejected(data, tfds_builder):
  with pytest.raises(ValueError, match="positive multiple of process_count"):
    pipeline.make_pipeline(data, global_batch_size=6, seed=0, process_index=0, process_count=2, local_device_count=2)
  with pytest.raises(ValueError, match="process_index"):
    one_pass(data, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="lacks"):
    one_pass({"video": data["video"], "mel": data["mel"]})
  with pytest.raises(ValueError, match="split 'validation'"):
    one_pass(tfds_builder, split="validation")
  with pytest.raises(ValueError, match="cannot feed"):
    one_pass(tfds_builder, split="test", process_count=2, global_batch_size=2)


@pytest.mark.slow
def test_sdvae_codec_pre_encodes_batches_to_scaled_latents(data):
  fixture = load_fixture("sdvae_small.npz")
  state_dict = {k[len("vae/"):]: v for k, v in fixture.items() if k.startswith("vae/")}
  codec = SdVaeCodec(*sdvae_from_diffusers(state_dict, json.loads(str(fixture["config_json"]))), chunk_size=8)
  plain, encoded = one_pass(data)[0], one_pass(data, encode_video=codec.encode)[0]
  assert encoded["video"].shape == (4, 4, 16, 16, 4)  # 32x32 frames -> 16x16x4 latents (downsample 2 in this VAE)
  mean, _ = codec.encode_moments(plain["video"])
  np.testing.assert_allclose(encoded["video"], LATENT_SCALE * mean, rtol=1e-5, atol=1e-6)


def test_resuming_at_a_step_reads_the_same_batches(data):
  kwargs = dict(global_batch_size=4, seed=5, process_index=0, process_count=1, local_device_count=1, window_frames=3)
  straight = list(itertools.islice(pipeline.make_pipeline(data, **kwargs), 7))
  resumed = list(itertools.islice(pipeline.make_pipeline(data, start_step=4, **kwargs), 3))
  for a, b in zip(straight[4:], resumed):
    for name in pipeline.FEATURES:
      np.testing.assert_array_equal(a[name], b[name])


def test_global_batch_does_not_depend_on_the_host_count(data):
  read = lambda hosts: [np.concatenate([next(itertools.islice(pipeline.make_pipeline(
      data, global_batch_size=4, seed=2, start_step=step, process_index=i, process_count=hosts,
      local_device_count=1), 1))["video"] for i in range(hosts)]) for step in range(5)]
  for one, two in zip(read(1), read(2)):
    np.testing.assert_array_equal(one, two)


def test_window_crops_consecutive_frames_at_seeded_offsets(data):
  batches = one_pass(data, window_frames=2, seed=4)
  assert batches[0]["video"].shape == (4, 2, 32, 32, 3)
  full = one_pass(data, seed=4)
  offsets = set()
  for cropped, whole in zip(batches, full):
    for c, w in zip(cropped["video"], whole["video"]):
      matches = [o for o in range(3) if np.array_equal(c, w[o:o + 2])]
      assert matches, "the crop is not a run of consecutive frames of its clip"
      offsets.add(matches[0])
  assert len(offsets) > 1  # offsets vary over examples
  with pytest.raises(ValueError, match="window_frames=5"):
    one_pass(data, window_frames=5)
