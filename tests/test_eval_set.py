"""The evaluation set (eval.eval_set, launch.sample --config.sample.eval_clips=N): clip count and length, labels as
the official sample-metrics.py gives them, clips equal to the Generator's streams, and resuming after a kill."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import wave

import numpy as np
import pytest

from rflav_jax.data import synthetic
from rflav_jax.eval import eval_set
from rflav_jax.generator import Generator
from rflav_jax.media import reader

ROOT = pathlib.Path(__file__).resolve().parents[1]


def sample_config(**fields):
  """configs/synthetic_tiny.py (the shipped model) with config.sample's eval fields changed."""
  from configs import synthetic_tiny
  config = synthetic_tiny.get_config()
  config.sample.update(fields)
  return config


def read_wav(path: pathlib.Path) -> np.ndarray:
  with wave.open(str(path), "rb") as f:
    assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 16000)
    return np.frombuffer(f.readframes(f.getnframes()), "<i2")


def official_labels(classes: list[int], num_videos: int, batch_size: int) -> list[int]:
  """sample-metrics.py's labels: the list `classes` as y of every batch of `batch_size` (broadcast when it holds one
  class), for the num_videos // batch_size batches it makes."""
  per_batch = classes * batch_size if len(classes) == 1 else classes
  assert len(per_batch) == batch_size, "the official script fails for other lengths"
  return per_batch * (num_videos // batch_size)


@pytest.mark.parametrize("classes, batch_size", [([0], 4), ([2], 3), ([3, 1, 4, 1], 4), ([0, 1, 2], 3)])
def test_labels_are_the_official_ones(classes, batch_size):
  num_videos = 4 * batch_size
  for first in range(0, num_videos, batch_size):  # batch by batch, as the set is written
    got = eval_set.clip_labels(first, batch_size, classes, num_classes=10)
    assert got.tolist() == official_labels(classes, num_videos, batch_size)[first:first + batch_size]


def test_labels_cycle_over_clips_and_an_unconditional_model_gets_its_null_label():
  assert eval_set.clip_labels(4, 5, (0, 1, 2), 3).tolist() == [1, 2, 0, 1, 2]
  assert eval_set.clip_labels(0, 3, (2, 1), 0).tolist() == [0, 0, 0]


def test_batch_seeds_differ_between_sets_and_batches():
  seeds = {eval_set.batch_seed(seed, batch) for seed in range(4) for batch in range(64)}
  assert len(seeds) == 4 * 64


def test_bad_eval_fields_are_named():
  for fields, message in (({"eval_clips": 0}, "eval_clips=0"), ({"eval_source": "tfds"}, "eval_source='tfds'"),
                          ({"eval_batch_size": 0}, "eval_batch_size=0"), ({"eval_labels": ()}, "eval_labels is empty"),
                          ({"eval_labels": (0, 4)}, r"eval_labels\[1\]=4")):
    with pytest.raises(ValueError, match=message):
      eval_set.check_options(sample_config(**{"eval_clips": 2, **fields}))


def test_synthetic_set_resumes_and_keeps_complete_clips(tmp_path):
  config = sample_config(eval_clips=5, eval_source="synthetic")
  paths = eval_set.write_eval_set(config, tmp_path)
  assert paths == [tmp_path / "video" / f"sample_{i}_video.mp4" for i in range(5)]
  assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == sorted(f"sample_{i}_audio.wav" for i in range(5))
  for i, path in enumerate(paths):
    clip = synthetic.generate_clip(config.seed + 1, i)  # launch.evaluate's real clips
    assert reader.read_video(path).shape == (16, 32, 32, 3)
    np.testing.assert_array_equal(read_wav(eval_set.clip_paths(tmp_path, i)[1]), np.round(clip.audio * 32767))
  # An interrupted run: clip 3's mp4 never got its final name; the rest stays as it was.
  wav_3 = eval_set.clip_paths(tmp_path, 3)[1].read_bytes()
  os.rename(paths[3], paths[3].with_name(paths[3].name + ".part"))
  before = {p: os.stat(p).st_mtime_ns for p in paths if p.exists()}
  eval_set.write_eval_set(sample_config(eval_clips=6, eval_source="synthetic"), tmp_path)  # N may grow
  assert {p: os.stat(p).st_mtime_ns for p in before} == before
  assert paths[3].is_file() and eval_set.clip_paths(tmp_path, 3)[1].read_bytes() == wav_3
  assert eval_set.is_complete(tmp_path, 5) and not list(tmp_path.rglob("*.part"))
  with pytest.raises(ValueError, match=r"another recipe \(data_seed, seed differ"):
    other = sample_config(eval_clips=5, eval_source="synthetic")
    other.seed = 1
    eval_set.write_eval_set(other, tmp_path)


EVAL_FIELDS = {"eval_clips": 6, "eval_batch_size": 2, "eval_frames": 16}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> pathlib.Path:
  """The shipped model's set of 6 clips in batches of 2, written in one go."""
  folder = tmp_path_factory.mktemp("uninterrupted")
  eval_set.write_eval_set(sample_config(**EVAL_FIELDS), folder)
  return folder


@pytest.mark.slow
def test_generated_clips_are_the_generator_streams_of_their_batch(uninterrupted):
  config = sample_config(**EVAL_FIELDS)
  assert not list(uninterrupted.rglob("*.part"))
  names = sorted(p.name for p in (uninterrupted / "video").iterdir())
  assert names == sorted(f"sample_{i}_video.mp4" for i in range(6))
  generator = Generator.from_config(config)
  for batch in range(3):
    labels = [(2 * batch + j) % 3 for j in range(2)]  # eval_labels (0, 1, 2) cycled over the clips
    chunks = list(generator.stream(labels, 16, seed=eval_set.batch_seed(config.seed, batch)))
    wav = np.concatenate([chunk.wav for chunk in chunks], axis=1)
    for j in range(2):
      mp4, wav_path = eval_set.clip_paths(uninterrupted, 2 * batch + j)
      assert reader.read_video(mp4).shape == (16, 32, 32, 3)
      np.testing.assert_array_equal(read_wav(wav_path), np.round(wav[j] * 32767))
  assert json.loads((uninterrupted / eval_set.RECIPE_FILE).read_text()) == eval_set.recipe(config)


def _sample(folder: pathlib.Path, cache: pathlib.Path) -> subprocess.Popen:
  flags = [f"--config.sample.{name}={value}" for name, value in EVAL_FIELDS.items()]
  return subprocess.Popen([sys.executable, "-m", "launch.sample", *flags, f"--config.compilation_cache_dir={cache}",
                           f"--output_dir={folder}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_set(uninterrupted, tmp_path):
  folder, cache = tmp_path / "set", tmp_path / "xla"
  run = _sample(folder, cache)
  deadline = time.monotonic() + 600
  while not eval_set.is_complete(folder, 1) and run.poll() is None and time.monotonic() < deadline:
    time.sleep(0.1)
  run.send_signal(signal.SIGKILL)
  run.wait()
  done = [i for i in range(6) if eval_set.is_complete(folder, i)]
  assert done[:2] == [0, 1] and len(done) < 6, "the kill came too late to interrupt the set"
  kept = {i: os.stat(eval_set.clip_paths(folder, i)[0]).st_mtime_ns for i in done}
  run = _sample(folder, cache)
  _, log = run.communicate(timeout=900)
  assert run.returncode == 0, log[-3000:]
  assert {i: os.stat(eval_set.clip_paths(folder, i)[0]).st_mtime_ns for i in done} == kept  # not made again
  assert not list(folder.rglob("*.part"))
  for sub in ("video", "audio"):
    assert sorted(p.name for p in (folder / sub).iterdir()) == sorted(p.name for p in (uninterrupted / sub).iterdir())
  for i in range(6):
    (mp4, wav), (mp4_ref, wav_ref) = eval_set.clip_paths(folder, i), eval_set.clip_paths(uninterrupted, i)
    assert wav.read_bytes() == wav_ref.read_bytes()  # the same generated clip, to the bit
    # x264 may code a few blocks of the same frames differently in another process: the pictures agree to within
    # H.264's rounding, not bit for bit (seen: one clip of six, 34 levels at most, mean 0.13)
    video, video_ref = (reader.read_video(path).astype(np.int16) for path in (mp4, mp4_ref))
    assert video.shape == video_ref.shape and np.abs(video - video_ref).mean() < 0.5
    np.testing.assert_array_equal(reader.read_audio(mp4), reader.read_audio(mp4_ref))
