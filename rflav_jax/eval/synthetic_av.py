"""Does a bouncing-ball stream look and sound right? Figures read back from its pictures and its mel alone.

For a stream of frames (video uint8 (T, R, R, 3), mel (T, 10, N) in [-1, 1]) cut into segments (e.g. one
minute each), `segment_figures` measures with `data.synthetic_analysis`:

  ball_frames      share of frames showing one ball: lit pixels (brightest channel > 0.5 of full scale) covering
                   between 0.5x and 1.6x the ball's drawn area, with black around it;
  background       mean brightness (0..1) of the pixels away from the ball (0 on clean frames);
  colour_label     share of frames whose colour is the stream's majority class colour;
  motion           standard deviation of the ball's height over the segment (0 = frozen);
  gravity          share of airborne frames (not at a bounce) whose height curves downwards (second
                   difference < 0), as a parabolic flight does;
  height_pitch_r   correlation of the height from the picture with the height from the pitch;
  click_recall     share of bounces seen in the picture (local minima of height) with a click in the
                   sound within one frame;  click_precision  share of clicks within one frame of a bounce;
  video_label / audio_label  class from the colour / the timbre (majority).
"""
import numpy as np

from rflav_jax.data import synthetic, synthetic_analysis

FIGURES = ("ball_frames", "background", "colour_label", "motion", "gravity", "height_pitch_r", "click_recall",
           "click_precision", "video_label", "audio_label")


def _ball_frames(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(bool (T,) one-ball frames, float (T,) background brightness away from the ball)."""
  geometry = synthetic.BallGeometry.for_resolution(video.shape[1])
  area = np.pi * geometry.radius ** 2
  brightness = video.max(axis=-1) / 255.0  # (T, R, R)
  lit = brightness > 0.5
  count = lit.sum(axis=(1, 2))
  rows, cols = np.indices(video.shape[1:3]) + 0.5
  with np.errstate(invalid="ignore"):
    centre_r = (lit * rows).sum(axis=(1, 2)) / count
    centre_c = (lit * cols).sum(axis=(1, 2)) / count
  distance = np.hypot(rows - centre_r[:, None, None], cols - centre_c[:, None, None])
  away = distance > geometry.radius + 2
  background = (brightness * away).sum(axis=(1, 2)) / np.maximum(away.sum(axis=(1, 2)), 1)
  compact = (lit & ~(distance <= geometry.radius + 2)).sum(axis=(1, 2)) == 0
  one_ball = (count >= 0.5 * area) & (count <= 1.6 * area) & compact & (background < 0.1)
  return one_ball, np.where(count > 0, background, brightness.mean(axis=(1, 2)))


def _near(events: np.ndarray, others: np.ndarray) -> np.ndarray:
  """For each True frame of `events`, whether `others` is True within one frame."""
  padded = np.concatenate([[False], others, [False]])
  close = padded[:-2] | padded[1:-1] | padded[2:]
  return close[events]


def segment_figures(video: np.ndarray, mel: np.ndarray) -> dict[str, float]:
  """The module's figures for one segment of one stream."""
  video, mel = np.asarray(video), np.asarray(mel)
  if len(video) != len(mel) or len(video) < 3:
    raise ValueError(f"video has {len(video)} frames and mel {len(mel)}; pass the same frames of one stream (>= 3)")
  one_ball, background = _ball_frames(video)
  height_video = synthetic_analysis.ball_height_from_video(video)
  height_audio = synthetic_analysis.height_from_mel(mel)
  contacts_video = synthetic_analysis.contacts_from_video(video)
  contacts_audio = synthetic_analysis.contacts_from_mel(mel)
  per_frame_label = np.array([synthetic_analysis.label_from_video(frame[None]) for frame in video])
  video_label = int(np.bincount(per_frame_label, minlength=len(synthetic.CLASS_NAMES)).argmax())

  valid = np.isfinite(height_video)
  second = np.diff(np.where(valid, height_video, np.nan), 2)
  airborne = ~(contacts_video[1:-1] | contacts_video[:-2] | contacts_video[2:]) & np.isfinite(second)
  pair = valid & np.isfinite(height_audio)
  correlation = (float(np.corrcoef(height_video[pair], height_audio[pair])[0, 1])
                 if pair.sum() > 2 and np.std(height_video[pair]) > 0 and np.std(height_audio[pair]) > 0 else 0.0)
  mean_or_nan = lambda x: float(np.mean(x)) if len(x) else float("nan")
  return {
      "ball_frames": float(one_ball.mean()),
      "background": float(background.mean()),
      "colour_label": float((per_frame_label == video_label).mean()),
      "motion": float(np.nanstd(height_video)) if valid.any() else 0.0,
      "gravity": mean_or_nan(second[airborne] < 0),
      "height_pitch_r": correlation,
      "click_recall": mean_or_nan(_near(contacts_video, contacts_audio)),
      "click_precision": mean_or_nan(_near(contacts_audio, contacts_video)),
      "video_label": video_label,
      "audio_label": synthetic_analysis.label_from_mel(mel),
  }


def stream_figures(video: np.ndarray, mel: np.ndarray, segment_frames: int) -> list[dict[str, float]]:
  """segment_figures of consecutive segments of `segment_frames` frames (a last shorter one is dropped)."""
  count = len(video) // segment_frames
  if count < 1:
    raise ValueError(f"the stream has {len(video)} frames, fewer than one segment of {segment_frames}")
  return [segment_figures(video[i * segment_frames:(i + 1) * segment_frames],
                          mel[i * segment_frames:(i + 1) * segment_frames]) for i in range(count)]
