"""Input pipeline: per-host shards that cover the data, seeded order, batch layout, conversion, hooks."""
import itertools
import json

import numpy as np
import pytest

from helpers import load_fixture
from rflav_jax.codecs.audio import frames_from_mel, mel_from_waveform
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


def numbered_clips(num_clips: int, frames: int) -> dict[str, np.ndarray]:
  """Clips whose every frame says which clip and frame it is: video[c, f] = (c, f, 0) in every pixel, and mel
  column values f (to check that video and mel are cut at the same offset)."""
  clip, frame = np.meshgrid(np.arange(num_clips), np.arange(frames), indexing="ij")
  video = np.zeros((num_clips, frames, 2, 2, 3), np.uint8)
  video[..., 0], video[..., 1] = clip[..., None, None], frame[..., None, None]
  mel = np.broadcast_to(frame[..., None, None], (num_clips, frames, 10, 4)).astype(np.float32)
  return {"video": video, "mel": mel, "label": np.zeros(num_clips, np.int64)}


def windows_seen(data, steps: int, window: int = 10, **kwargs) -> list[tuple[int, int]]:
  """(clip, first frame) of every window the first `steps` global batches of 4 hold."""
  kwargs = {"process_index": 0, "process_count": 1, "local_device_count": 1, **kwargs}
  seen = []
  for batch in itertools.islice(pipeline.make_pipeline(data, global_batch_size=4, seed=8, window_frames=window,
                                                       **kwargs), steps):
    video = np.round((batch["video"] + 1.0) * 127.5).astype(int)  # (4, window, 2, 2, 3)
    clips, frames = video[:, :, 0, 0, 0], video[:, :, 0, 0, 1]
    assert np.all(clips == clips[:, :1]) and np.all(frames == frames[:, :1] + np.arange(window))
    np.testing.assert_array_equal(batch["mel"][:, :, 0, 0], frames)  # the mel of the same frames
    seen += [(int(c), int(f)) for c, f in zip(clips[:, 0], frames[:, 0])]
  return seen


def test_windows_start_at_every_frame_of_official_length_clips():
  """Clips stored at the official 50 frames give every 10-frame window at stride 1, 41 per clip, each about equally
  often; the same frames stored as 10-frame clips give 5 windows per 50 frames, 8x fewer."""
  seen = windows_seen(numbered_clips(4, 50), steps=600)
  assert set(seen) == {(clip, start) for clip in range(4) for start in range(41)}  # 164 distinct windows
  counts = np.bincount([clip * 41 + start for clip, start in seen])
  assert counts.min() >= 5 and counts.max() <= 30  # 2400 draws: about 14.6 per window
  short_clips = {name: array.reshape(20, 10, *array.shape[2:]) if name != "label" else np.zeros(20, np.int64)
                 for name, array in numbered_clips(4, 50).items()}
  assert len(set(windows_seen(short_clips, steps=600))) == 20


def test_windows_are_fixed_by_seed_and_step_whatever_the_host_count():
  data = numbered_clips(4, 50)
  straight = windows_seen(data, steps=12)
  assert windows_seen(data, steps=4, start_step=8) == straight[32:]  # resuming at step 8
  two_hosts = [windows_seen(data, steps=12, process_index=i, process_count=2) for i in range(2)]
  assert [w for step in range(12) for host in two_hosts for w in host[2 * step:2 * step + 2]] == straight


def audio_clips(num_clips: int, frames: int, with_mel: bool = True) -> dict[str, np.ndarray]:
  """numbered_clips with a waveform of 1600 samples per frame whose loudness differs from frame to frame, so that
  a window's peak normalisation differs from its clip's."""
  data = numbered_clips(num_clips, frames)
  rng = np.random.default_rng(0)
  loudness = np.repeat(rng.uniform(500, 20000, (num_clips, frames)), 1600, axis=1)
  data["audio"] = (rng.standard_normal((num_clips, frames * 1600)) * loudness).astype(np.float32)
  data["mel"] = np.stack([frames_from_mel(mel_from_waveform(audio)) for audio in data["audio"]])  # the clip's
  if not with_mel:
    del data["mel"]
  return data


@pytest.mark.parametrize("with_mel", [True, False])
def test_mel_per_window_is_the_front_end_on_the_window_audio(with_mel):
  """Each window's mel is mel_from_waveform of the window's own samples (normalised over the window, as the official
  code does), times audio_scale; a source without mel computes it from the audio always."""
  data = audio_clips(3, 8, with_mel)
  batches = one_pass(data, global_batch_size=3, window_frames=3, mel_per_window=with_mel, audio_scale=2.0)
  for batch in batches:
    clips = np.round((batch["video"][:, 0, 0, 0, 0] + 1.0) * 127.5).astype(int)
    starts = np.round((batch["video"][:, 0, 0, 0, 1] + 1.0) * 127.5).astype(int)
    for mel, clip, start in zip(batch["mel"], clips, starts):
      samples = data["audio"][clip, start * 1600:(start + 3) * 1600]
      np.testing.assert_allclose(mel, 2.0 * frames_from_mel(mel_from_waveform(samples)), atol=1e-5)
  if with_mel:  # cut from the clip's mel instead: other values
    cut = one_pass(data, global_batch_size=3, window_frames=3, audio_scale=2.0)
    assert np.abs(cut[0]["mel"] - batches[0]["mel"]).max() > 0.1


def test_mel_per_window_needs_the_audio():
  with pytest.raises(ValueError, match="mel_per_window needs the clips' audio"):
    one_pass(numbered_clips(4, 8), mel_per_window=True)
