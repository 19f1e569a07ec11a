"""Long videos scored window by window, as R-FLAV's Fig. 5: FVD, KVD and FAD of each 16-frame window of N long
generations against the real set, and the drift of the generations' features away from their first window.

  report = long_video.run(config.eval, "long.json")    # also writes long.png

Windows: every .mp4 of generated_dir (subfolders too, sorted by path; e.g. launch.sample's evaluation set with
config.sample.eval_frames=240) is cut into the 16-frame windows starting at frames 0, s, 2 s, ... (s:
config.eval.window_stride) that fit in the shortest file, so every window start has one clip of each of the N files.
Window w's clips are embedded as `av_metrics` embeds clips (I3D; AudioCLIP when config.eval.audioclip_weights is
given), in batches of config.eval.batch_size over all local devices; the real folder's features are those of
`av_metrics.folder_features` (cached, config.eval.num_clips of them drawn by clip_seed).

Per window start: fvd, kvd and fad (null without AudioCLIP weights) of its N clips against the real clips, and drift,
the Fréchet distance of its N clips' I3D features to those of window 0 (0 at window 0). Small N biases FVD and drift
upward: compare figures of equal N only.

The PNG beside the report shows, left to right, FVD, KVD, drift (and FAD when computed) over the window start, each
from its minimum (bottom) to its maximum (top).
"""
import json
import os
import pathlib

import jax
import numpy as np
from absl import logging

from rflav_jax.eval import av_metrics, distances, folder_clips
from rflav_jax.media import images
from rflav_jax.media.errors import ClipTooShortError

MODE = "long_video"
PANEL_HEIGHT = 200


def window_starts(num_frames: int, stride: int) -> np.ndarray:
  """First frames (W,) of the 16-frame windows at `stride` that fit in num_frames frames."""
  if stride < 1:
    raise ValueError(f"--config.eval.window_stride={stride}: pass a positive number of frames between windows")
  return np.arange(0, num_frames - folder_clips.CLIP_FRAMES + 1, stride)


def window_index(folder: str | os.PathLike, stride: int) -> tuple[folder_clips.ClipIndex, int]:
  """(the windows of every video of `folder` (module docstring), file by file: clip f * W + w is window w of file f;
  the frames they are taken from, those of the shortest file)."""
  folder = pathlib.Path(folder).expanduser()
  videos = folder_clips.list_videos(folder)
  counts = [folder_clips.frame_count(path) for path in videos]
  shortest = int(np.argmin(counts))
  if counts[shortest] < folder_clips.CLIP_FRAMES:
    raise ClipTooShortError(videos[shortest], f"holds {counts[shortest]} frames at {folder_clips.FPS} fps; long-video "
                            f"windows are {folder_clips.CLIP_FRAMES} frames: remove the file or make it longer")
  if min(counts) != max(counts):
    logging.warning("long videos of %d to %d frames: windows are taken up to frame %d of each", min(counts),
                    max(counts), min(counts))
  starts = window_starts(counts[shortest], stride)
  index = folder_clips.ClipIndex(folder, tuple(p.relative_to(folder).as_posix() for p in videos),
                                 np.repeat(np.arange(len(videos)), len(starts)), np.tile(starts, len(videos)))
  return index, counts[shortest]


def drift(features: np.ndarray) -> list[float]:
  """Fréchet distance of each window's features to the first window's: features (N, W, D) -> W floats."""
  return [distances.frechet_distance(features[:, w], features[:, 0]) for w in range(features.shape[1])]


def window_scores(real: dict[str, np.ndarray], generated: dict[str, np.ndarray]) -> dict[str, list]:
  """{"fvd", "kvd", "fad", "fad_unscaled", "drift": W values each (fad ones None without "audioclip")} of generated
  features {network: (N, W, D)} against real features {network: (M, D)}."""
  video = generated["i3d"]
  scores = {"fvd": [distances.frechet_distance(video[:, w], real["i3d"]) for w in range(video.shape[1])],
            "kvd": [distances.polynomial_mmd(video[:, w], real["i3d"]) for w in range(video.shape[1])],
            "fad": None, "fad_unscaled": None, "drift": drift(video)}
  if "audioclip" in generated:
    fad = [distances.fad(real["audioclip"], generated["audioclip"][:, w]) for w in range(video.shape[1])]
    scores["fad"], scores["fad_unscaled"] = [scaled for scaled, _ in fad], [unscaled for _, unscaled in fad]
  return scores


def plot(starts, scores: dict[str, list]) -> np.ndarray:
  """uint8 (PANEL_HEIGHT, width, 3): one panel per figure of `scores` (fvd, kvd, drift, then fad if computed) over
  the window starts, white on black, separated by white gaps."""
  names = ["fvd", "kvd", "drift"] + (["fad"] if scores["fad"] is not None else [])
  gap = np.full((PANEL_HEIGHT, 8, 3), 255, np.uint8)
  panels = [images.curve_image(starts, scores[name], PANEL_HEIGHT, 2 * PANEL_HEIGHT, log_scale=False)
            for name in names]
  return np.concatenate([part for panel in panels for part in (panel, gap)][:-1], axis=1)


def _check(eval_config, output: str | None) -> None:
  for field in ("real_dir", "generated_dir"):
    if not eval_config[field]:
      raise ValueError(f"--config.eval.{field} is empty: pass the folder of {field.split('_')[0]} mp4 videos")
  if eval_config.batch_size < 1:
    raise ValueError(f"--config.eval.batch_size={eval_config.batch_size}: pass a positive number of clips per batch")
  if not output:
    raise ValueError("--mode=long_video writes its plot beside the report: pass --output=report.json")
  window_starts(folder_clips.CLIP_FRAMES, eval_config.window_stride)


def run(eval_config, output: str) -> dict:
  """The report of config.eval's folders (module docstring), written to `output` (JSON) with its plot beside it."""
  _check(eval_config, output)
  folder_clips.list_videos(eval_config.real_dir)  # a bad folder fails before any weights are read
  index, video_frames = window_index(eval_config.generated_dir, eval_config.window_stride)
  num_videos = len(index.files)
  if num_videos < 2:
    raise ValueError(f"{eval_config.generated_dir} holds {num_videos} video; FVD and drift per window need at least 2")
  embedders = [av_metrics.i3d_embedder(eval_config.i3d_weights)]
  if eval_config.audioclip_weights:
    embedders.append(av_metrics.audioclip_embedder(eval_config.audioclip_weights))
  real = av_metrics.folder_features(eval_config.real_dir, embedders, eval_config, "real")
  if len(real["i3d"]) < 2:
    raise ValueError(f"the real folder holds {len(real['i3d'])} clip; FVD and KVD need at least 2")
  logging.info("generated: %d windows of %d long videos in %s", len(index) // num_videos, num_videos,
               eval_config.generated_dir)
  generated = {name: features.reshape(num_videos, -1, features.shape[-1])
               for name, features in av_metrics.embed_clips(index, embedders, eval_config.batch_size,
                                                            "generated windows").items()}
  starts = index.starts[:len(index) // num_videos]
  scores = window_scores(real, generated)
  picture = pathlib.Path(output).with_suffix(".png")
  picture.parent.mkdir(parents=True, exist_ok=True)
  images.write_png(picture, plot(starts, scores))
  report = {
      "window_starts": starts.tolist(), **scores, "fad_scale": distances.FAD_SCALE,
      "num_videos": num_videos, "num_real": len(real["i3d"]),
      "video_frames": video_frames,
      "window_frames": folder_clips.CLIP_FRAMES, "window_stride": eval_config.window_stride, "fps": folder_clips.FPS,
      "real_dir": str(pathlib.Path(eval_config.real_dir).expanduser().resolve()),
      "generated_dir": str(pathlib.Path(eval_config.generated_dir).expanduser().resolve()),
      "num_clips": eval_config.num_clips, "clip_seed": eval_config.clip_seed,
      "weights": {e.name: e.weights for e in embedders},
      "devices": f"{jax.local_device_count()} x {jax.local_devices()[0].device_kind}", "plot": str(picture)}
  with open(output, "w") as f:
    json.dump(report, f, indent=1)
  return report
