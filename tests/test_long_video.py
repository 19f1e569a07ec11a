"""Long videos window by window (eval.long_video, launch.evaluate --mode=long_video): the windows, drift against
closed forms, and the command end to end on seeded random I3D weights."""
import json
import os
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest

from i3d_testing import FIXTURE as I3D_FIXTURE, random_i3d_state_dict
from rflav_jax.eval import distances, long_video
from rflav_jax.media import reader
from rflav_jax.media.writer import Mp4Writer

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(__file__).parent / "data"


def write_lossless(path: pathlib.Path, frames: np.ndarray) -> pathlib.Path:
  """uint8 frames (T, H, W, 3) as a lossless H.264 mp4 (equal frames decode equal) with silence."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with Mp4Writer(path, crf=0) as writer:
    writer.write(frames, np.zeros(len(frames) * 1600, np.float32))
  return path


def test_windows_fit_in_the_video():
  assert long_video.window_starts(240, 16).tolist() == list(range(0, 225, 16))  # 15 windows
  assert len(long_video.window_starts(240, 1)) == 225
  assert long_video.window_starts(16, 16).tolist() == [0]
  assert long_video.window_starts(20, 3).tolist() == [0, 3]
  with pytest.raises(ValueError, match="window_stride=0"):
    long_video.window_starts(240, 0)


def test_windows_of_a_folder_go_file_by_file_up_to_the_shortest(tmp_path):
  rng = np.random.default_rng(0)
  write_lossless(tmp_path / "a.mp4", rng.integers(0, 256, (45, 16, 16, 3), np.uint8))
  write_lossless(tmp_path / "b.mp4", rng.integers(0, 256, (40, 16, 16, 3), np.uint8))
  index, frames = long_video.window_index(tmp_path, 8)
  assert frames == 40 and index.files == ("a.mp4", "b.mp4")
  assert index.file_index.tolist() == [0] * 4 + [1] * 4 and index.starts.tolist() == [0, 8, 16, 24] * 2


def test_drift_is_zero_for_identical_windows_and_the_squared_shift_for_shifted_ones():
  rng = np.random.default_rng(0)
  first = rng.standard_normal((50, 1, 8))
  same = np.repeat(first, 4, axis=1)
  assert np.allclose(long_video.drift(same), 0, atol=1e-9)
  shift = np.arange(4)[None, :, None] * 0.5  # window w moves every feature by w / 2: equal covariances
  assert np.allclose(long_video.drift(same + shift), 8 * (np.arange(4) * 0.5) ** 2, atol=1e-9)


def test_window_scores_are_the_distances_of_each_window():
  rng = np.random.default_rng(1)
  real = {"i3d": rng.standard_normal((30, 6))}
  generated = {"i3d": rng.standard_normal((10, 3, 6)) + 0.3}
  scores = long_video.window_scores(real, generated)
  for w in range(3):
    assert scores["fvd"][w] == distances.frechet_distance(generated["i3d"][:, w], real["i3d"])
    assert scores["kvd"][w] == distances.polynomial_mmd(generated["i3d"][:, w], real["i3d"])
  assert scores["drift"][0] == pytest.approx(0, abs=1e-9) and scores["fad"] is None
  picture = long_video.plot([0, 16, 32], scores)
  height = long_video.PANEL_HEIGHT
  assert picture.dtype == np.uint8 and picture.shape == (height, 3 * 2 * height + 2 * 8, 3)  # 3 panels, 2 gaps


@pytest.fixture(scope="module")
def random_i3d(tmp_path_factory) -> pathlib.Path:
  """Seeded random I3D weights as MM-Diffusion's state dict, written by torch.save."""
  torch = pytest.importorskip("torch")
  with np.load(DATA / I3D_FIXTURE) as data:
    state = random_i3d_state_dict(*json.loads(str(data["state_dict_json"])), 0)
  path = tmp_path_factory.mktemp("weights") / "random_i3d.pt"
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  return path


@pytest.mark.slow
def test_long_video_mode_end_to_end(tmp_path, random_i3d):
  """Two real clips and two long videos that repeat them three times, so that every window at stride 16 holds the
  real clips: FVD 0, drift 0 and one KVD at every window; the report is printed and written, its plot beside it."""
  rng = np.random.default_rng(0)
  clips = rng.integers(0, 256, (2, 16, 24, 24, 3), np.uint8)
  for i, clip in enumerate(clips):
    write_lossless(tmp_path / "real" / f"{i}.mp4", clip)
    write_lossless(tmp_path / "long" / f"{i}.mp4", np.concatenate([clip] * 3))
  np.testing.assert_array_equal(reader.read_video(tmp_path / "long" / "1.mp4")[32:],
                                reader.read_video(tmp_path / "real" / "1.mp4"))
  output = tmp_path / "report" / "long.json"
  result = subprocess.run(
      [sys.executable, "-m", "launch.evaluate", "--mode=long_video", f"--config.eval.real_dir={tmp_path / 'real'}",
       f"--config.eval.generated_dir={tmp_path / 'long'}", f"--config.eval.i3d_weights={random_i3d}",
       "--config.eval.batch_size=4", "--config.eval.cache_dir=", f"--output={output}"],
      cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(output.read_text())
  assert json.loads(result.stdout.strip().splitlines()[-1]) == report
  assert report["window_starts"] == [0, 16, 32] and report["num_videos"] == 2 and report["num_real"] == 2
  assert report["video_frames"] == 48 and report["window_stride"] == 16
  assert np.allclose(report["fvd"], 0, atol=1e-6) and np.allclose(report["drift"], 0, atol=1e-6)
  assert report["kvd"] == pytest.approx([report["kvd"][0]] * 3, rel=1e-9) and report["fad"] is None
  assert pathlib.Path(report["plot"]) == output.with_suffix(".png")
  with av.open(str(output.with_suffix(".png"))) as png:
    picture = next(png.decode(video=0)).to_ndarray()
  assert picture.shape[:2] == (long_video.PANEL_HEIGHT, 6 * long_video.PANEL_HEIGHT + 16)
