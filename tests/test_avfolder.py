"""TFDS dataset from a folder of mp4 files: example count, bad files reported, example contents, CLI."""
import os
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds

from helpers import media_file
from rflav_jax.codecs.audio import frames_from_mel, mel_from_waveform
from rflav_jax.data import avfolder, pipeline
from rflav_jax.media.reader import read_clip
from rflav_jax.media.writer import Mp4Writer

GOOD_FILES = {  # path in the source folder -> file in tests/data/media (frames at 10 fps)
    "train/aist/aist_video0.mp4": "aist_video0.mp4",  # 16
    "train/aist/aist_video1_long.mp4": "aist_video1_long.mp4",  # 240
    "train/landscape/landscape_video0.mp4": "landscape_video0.mp4",  # 16
    "test/landscape/landscape_video1.mp4": "landscape_video1.mp4",  # 16
}
BAD_FILES = {"train/aist/corrupt.mp4": "UndecodableMediaError", "train/landscape/short.mp4": "ClipTooShortError",
             "test/aist/silent.mp4": "NoAudioTrackError"}
CLIP_FRAMES = 8
RESOLUTION = 64


def write_video_without_audio(path: pathlib.Path, num_frames: int = 20) -> None:
  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    for i in range(num_frames):
      container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 10 * i, np.uint8), format="rgb24")))
    container.mux(stream.encode(None))


def make_source_folder(root: pathlib.Path) -> pathlib.Path:
  """train/ and test/ with class folders: the release mp4s (symlinked) plus three files that must be skipped."""
  for relative, name in GOOD_FILES.items():
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    (root / relative).symlink_to(media_file(name))
  (root / "test/aist").mkdir(parents=True)
  (root / "train/aist/corrupt.mp4").write_bytes(b"this is not an mp4 file" * 64)
  with Mp4Writer(root / "train/landscape/short.mp4") as writer:  # 3 frames < one 8-frame window
    writer.write(np.zeros((3, 64, 64, 3), np.uint8), np.zeros(3 * 1600, np.float32))
  write_video_without_audio(root / "test/aist/silent.mp4")
  (root / "train/aist/notes.txt").write_text("not media: ignored")
  return root


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
  return make_source_folder(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="module")
def built(source_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  report = avfolder.build_avfolder(source_dir, data_dir, resolution=RESOLUTION, clip_frames=CLIP_FRAMES,
                                   labelled=True)
  return report, data_dir


def examples_of(report: avfolder.BuildReport, split: str) -> list[dict]:
  source = tfds.builder_from_directory(report.dataset_dir).as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def test_build_counts_examples_and_reports_the_three_bad_files(built):
  report, _ = built
  # Non-overlapping 8-frame windows: 16 -> 2, 240 -> 30.
  assert report.examples == {"train": 2 + 30 + 2, "test": 2}
  assert report.files_used == {"train": 3, "test": 1}
  assert {s.file: s.reason for s in report.skipped} == BAD_FILES
  saved = avfolder.BuildReport.load(pathlib.Path(report.dataset_dir) / avfolder.REPORT_NAME)
  assert saved == report
  summary = report.summary()
  assert all(name in summary for name in BAD_FILES)


def test_examples_have_the_layout_and_the_files_content(built, source_dir):
  report, _ = built
  examples = {(e["source"].decode(), round(float(e["start"]), 3)): e for e in examples_of(report, "train")}
  starts = sorted(start for source, start in examples if source == "train/aist/aist_video0.mp4")
  assert starts == [0.0, 0.8]
  first = examples[("train/aist/aist_video0.mp4", 0.0)]
  assert first["video"].shape == (CLIP_FRAMES, RESOLUTION, RESOLUTION, 3) and first["video"].dtype == np.uint8
  assert first["mel"].shape == (CLIP_FRAMES, 10, 256) and first["mel"].dtype == np.float32
  assert first["label"] == 0 and examples[("train/landscape/landscape_video0.mp4", 0.0)]["label"] == 1
  clip = read_clip(source_dir / "train/aist/aist_video0.mp4", resolution=RESOLUTION)
  np.testing.assert_array_equal(first["video"], clip.video[:CLIP_FRAMES])
  for start, example in ((0, first), (CLIP_FRAMES, examples[("train/aist/aist_video0.mp4", 0.8)])):
    audio = clip.audio[start * 1600:(start + CLIP_FRAMES) * 1600]
    np.testing.assert_allclose(example["mel"], frames_from_mel(mel_from_waveform(audio)), atol=1e-6)
  assert tfds.builder_from_directory(report.dataset_dir).info.features["label"].names == ["aist", "landscape"]


def test_second_build_reuses_the_dataset(built, source_dir):
  report, data_dir = built
  again = avfolder.build_avfolder(source_dir, data_dir, resolution=RESOLUTION, clip_frames=CLIP_FRAMES, labelled=True)
  assert again == report


def test_unlabelled_build_takes_every_file_below_the_split(source_dir, tmp_path):
  report = avfolder.build_avfolder(source_dir, tmp_path, resolution=32, clip_frames=16, name="all files")
  assert report.examples == {"train": 1 + 15 + 1, "test": 1}
  assert "all_files_r32_fps10_t16_unlabelled" in report.dataset_dir
  assert {e["label"] for e in examples_of(report, "test")} == {avfolder.UNLABELLED}


def test_pipeline_reads_the_built_dataset(built):
  report, _ = built
  builder = tfds.builder_from_directory(report.dataset_dir)
  batch = next(pipeline.make_pipeline(builder, global_batch_size=4, seed=0, process_index=0, process_count=1,
                                      local_device_count=1, audio_scale=3.5))
  assert batch["video"].shape == (4, CLIP_FRAMES, RESOLUTION, RESOLUTION, 3)
  assert -1.0 <= batch["video"].min() and batch["video"].max() <= 1.0
  assert batch["mel"].min() >= -3.5 - 1e-5 and batch["mel"].max() > 1.0  # scaled from [-1, 1]


def test_clips_keep_their_audio_and_training_windows_take_their_mel_from_it(built, source_dir):
  report, _ = built
  examples = {(e["source"].decode(), round(float(e["start"]), 3)): e for e in examples_of(report, "train")}
  clip = read_clip(source_dir / "train/aist/aist_video0.mp4", resolution=RESOLUTION)
  np.testing.assert_array_equal(examples[("train/aist/aist_video0.mp4", 0.8)]["audio"],
                                clip.audio[CLIP_FRAMES * 1600:2 * CLIP_FRAMES * 1600])
  builder = tfds.builder_from_directory(report.dataset_dir)
  batch = next(pipeline.make_pipeline(builder, global_batch_size=4, seed=2, window_frames=3, mel_per_window=True,
                                      audio_scale=3.5, process_index=0, process_count=1, local_device_count=1))
  source = builder.as_data_source(split="train")
  positions = pipeline.host_batch_positions(0, 4, 0, 1)
  indices = pipeline.epoch_order(len(source), 2, 0)[positions]
  for mel, index, start in zip(batch["mel"], indices, pipeline.window_offsets(positions, 2, CLIP_FRAMES, 3)):
    samples = source[int(index)]["audio"][start * 1600:(start + 3) * 1600]  # the window's own audio
    np.testing.assert_allclose(mel, 3.5 * frames_from_mel(mel_from_waveform(samples)), atol=1e-5)


def test_a_folder_without_usable_files_fails_naming_them(tmp_path):
  (tmp_path / "src/train/cls").mkdir(parents=True)
  (tmp_path / "src/train/outside.mp4").symlink_to(media_file("aist_video0.mp4"))
  (tmp_path / "src/train/cls/broken.mp4").write_bytes(b"broken")
  with pytest.raises(ValueError, match="every file was skipped") as error:
    avfolder.build_avfolder(tmp_path / "src", tmp_path / "out", resolution=32, clip_frames=8, labelled=True)
  assert "train/cls/broken.mp4: UndecodableMediaError" in str(error.value)
  assert "train/outside.mp4: OutsideClassFolder" in str(error.value)


def test_bad_layout_and_settings_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="neither train/ nor test/"):
    avfolder.avfolder_config(tmp_path)
  (tmp_path / "train").mkdir()
  with pytest.raises(ValueError, match="no class sub-folders"):
    avfolder.avfolder_config(tmp_path, labelled=True)
  with pytest.raises(ValueError, match="multiple of the mel hop"):
    avfolder.avfolder_config(tmp_path, fps=40)  # 400 samples per frame
  with pytest.raises(ValueError, match="clip_frames"):
    avfolder.avfolder_config(tmp_path, clip_frames=0)


@pytest.mark.slow
def test_prepare_data_command_builds_and_prints_the_report(tmp_path):
  """The command line builds a dataset whose test split has only a bad file: that split is left out."""
  (tmp_path / "src/train").mkdir(parents=True)
  (tmp_path / "src/test").mkdir(parents=True)
  (tmp_path / "src/train/a.mp4").symlink_to(media_file("landscape_video0.mp4"))
  (tmp_path / "src/test/b.mp4").write_bytes(b"junk")
  result = subprocess.run(
      [sys.executable, "-m", "launch.prepare_data", f"--source_dir={tmp_path / 'src'}",
       f"--data_dir={tmp_path / 'out'}", "--resolution=32", "--clip_frames=16"],
      cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "train: 1 examples from 1 files" in result.stdout
  assert "test: 0 examples from 0 files" in result.stdout
  assert "test/b.mp4: UndecodableMediaError" in result.stdout
  assert (result.stdout + result.stderr).count("skipped 1 files") == 1  # the report is printed once
