"""Reading video frames and audio from media files (mp4, webm, avi, wav, ...) with PyAV.

Video is resampled to a target frame rate by one rule: output frame i, at time i / fps after the first
decoded frame, is the latest decoded frame whose presentation time is at or before that time (the
nearest earlier frame). Output frames continue while their time lies before the end of the last decoded
frame (its timestamp plus the interval between the last two frames), so a 1.6 s file read at 10 fps
gives 16 frames and read at 5 fps gives 8 (source frames 0, 2, 4, ...).

Audio is decoded, reduced to mono (the first channel, as the official code does, or the mean of all
channels) and resampled with soxr (`librosa.resample`, res_type "soxr_hq") when the file's rate differs
from the one asked for. It is returned in int16 scale, the scale the mel front end expects. Samples past
the stream's declared duration (encoder padding) are dropped.
"""
import contextlib
import dataclasses
import math
import os
from fractions import Fraction
from typing import Iterator

import av
import librosa
import numpy as np

from rflav_jax.media.errors import ClipTooShortError, NoAudioTrackError, UndecodableMediaError
from rflav_jax.media.timing import exact_rate, samples_per_frame

CHANNEL_MODES = ("first", "mean")


@dataclasses.dataclass(frozen=True)
class AVClip:
  """Aligned video and audio of one file: frame i covers audio samples [i * spf, (i + 1) * spf).

  video: uint8 (T, H, W, 3), or (T, R, R, 3) when letterboxed to resolution R.
  audio: float32 (T * sample_rate / fps,) in int16 scale [-32768, 32767].
  """
  video: np.ndarray
  audio: np.ndarray
  fps: float
  sample_rate: int
  path: str


def read_video(path: str | os.PathLike, fps: float = 10.0) -> np.ndarray:
  """All frames of `path` resampled to `fps` (nearest earlier frame): uint8 (T, H, W, 3) RGB."""
  return _decode_video(path, fps)[0]


def read_audio(path: str | os.PathLike, sample_rate: int = 16000, channels: str = "first") -> np.ndarray:
  """The audio of `path` as mono float32 (samples,) at `sample_rate` Hz, in int16 scale.

  channels: "first" keeps the first channel (as the official code does), "mean" averages all channels.
  Raises NoAudioTrackError when the file has no audio stream.
  """
  return _decode_audio(path, sample_rate, channels)[0]


def read_clip(path: str | os.PathLike, fps: float = 10.0, sample_rate: int = 16000,
              resolution: int | None = None, channels: str = "first", min_frames: int = 1) -> AVClip:
  """Video and audio of `path`, aligned in time and trimmed to the same whole number of frames.

  Both streams are aligned on their first decoded timestamps (leading frames or samples that have no
  counterpart in the other stream are dropped), then cut to T = min(video frames, audio samples //
  (sample_rate / fps)) frames; nothing is ever padded. With `resolution` the frames are letterboxed to
  (R, R). Raises ClipTooShortError when T < min_frames, NoAudioTrackError / UndecodableMediaError as
  the readers do.
  """
  spf = samples_per_frame(fps, sample_rate)
  rate = exact_rate(fps, "fps")
  video, video_start = _decode_video(path, fps)
  audio, audio_start = _decode_audio(path, sample_rate, channels)
  offset = audio_start - video_start  # seconds by which the audio starts after the video
  skip_frames = max(0, math.ceil(offset * rate))
  skip_samples = round((skip_frames / rate - offset) * sample_rate)
  video, audio = video[skip_frames:], audio[skip_samples:]
  num_frames = min(len(video), len(audio) // spf)
  if num_frames < min_frames:
    raise ClipTooShortError(
        path, f"holds {num_frames} whole frames of video with audio at {fps} fps "
        f"({len(video)} frames, {len(audio) / sample_rate:.3f} s of audio); at least {min_frames} are needed")
  video = video[:num_frames]
  if resolution is not None:
    video = letterbox(video, resolution)
  return AVClip(video=video, audio=audio[:num_frames * spf], fps=fps, sample_rate=sample_rate,
                path=os.fspath(path))


def letterbox(frames: np.ndarray, resolution: int) -> np.ndarray:
  """Scales uint8 (T, H, W, 3) frames to fit in (R, R) keeping the aspect ratio, then pads with black.

  Scaling is bicubic (FFmpeg swscale); the scaled size is round(H * R / max(H, W)) by
  round(W * R / max(H, W)). Padding is symmetric; an odd leftover pixel goes to the bottom / right.
  Returns uint8 (T, R, R, 3).
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {frames.shape}; "
                     "convert with np.asarray(frames, np.uint8)")
  if not isinstance(resolution, (int, np.integer)) or resolution <= 0:
    raise ValueError(f"resolution must be a positive int (the side of the square output), got {resolution!r}")
  _, height, width, _ = frames.shape
  scale = resolution / max(height, width)
  new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
  top, left = (resolution - new_h) // 2, (resolution - new_w) // 2
  out = np.zeros((len(frames), resolution, resolution, 3), np.uint8)
  for i, frame in enumerate(frames):
    out[i, top:top + new_h, left:left + new_w] = _resize_bicubic(frame, new_h, new_w)
  return out


def _resize_bicubic(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (height, width, 3), bicubic; a no-op when the size already matches."""
  if frame.shape[:2] == (height, width):
    return frame
  image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
  return image.reformat(width=width, height=height, interpolation="BICUBIC").to_ndarray()


@contextlib.contextmanager
def _open(path: str | os.PathLike) -> Iterator[av.container.InputContainer]:
  """Opens `path` for decoding; FFmpeg errors while it is open become UndecodableMediaError."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"media file {os.fspath(path)!r} does not exist; check the path")
  try:
    with av.open(os.fspath(path)) as container:
      yield container
  except av.FFmpegError as e:
    raise UndecodableMediaError(
        path, f"FFmpeg cannot decode it ({e}); the file is corrupt, truncated or not a media file") from e


def _frame_time(frame: av.frame.Frame, path) -> Fraction:
  """Presentation time of a decoded frame in seconds."""
  if frame.pts is None or frame.time_base is None:
    raise UndecodableMediaError(path, "a decoded frame has no presentation timestamp; remux the file "
                                "(e.g. ffmpeg -i in -c copy out.mp4) to give it timestamps")
  return frame.pts * frame.time_base


def _decode_video(path, fps: float) -> tuple[np.ndarray, Fraction]:
  """Frames resampled to `fps` (module docstring's rule) and the first frame's time in seconds."""
  period = 1 / exact_rate(fps, "fps")
  with _open(path) as container:
    if not container.streams.video:
      raise UndecodableMediaError(path, "has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    # How long the last frame lasts when it is the only one: one source frame, else one output frame.
    single_frame_interval = 1 / Fraction(stream.average_rate) if stream.average_rate else period
    out, start, last, last_time, interval = [], None, None, None, None
    for frame in container.decode(stream):
      time = _frame_time(frame, path)
      if last is None:
        start = time
      elif time <= last_time:
        continue  # a duplicate or out-of-order timestamp cannot be the nearest earlier frame of a new slot
      else:
        interval = time - last_time
        while start + len(out) * period < time:
          out.append(last)
      last, last_time = frame.to_ndarray(format="rgb24"), time
  if last is None:
    raise UndecodableMediaError(path, "the video stream decodes to no frames")
  while start + len(out) * period < last_time + (interval or single_frame_interval):
    out.append(last)
  return np.stack(out), start


def _decode_audio(path, sample_rate: int, channels: str) -> tuple[np.ndarray, Fraction]:
  """Mono float32 int16-scale audio at `sample_rate` and the first sample's time in seconds."""
  if channels not in CHANNEL_MODES:
    raise ValueError(f"channels must be one of {CHANNEL_MODES}, got {channels!r}")
  target_rate = exact_rate(sample_rate, "sample_rate")
  if target_rate.denominator != 1:
    raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
  with _open(path) as container:
    if not container.streams.audio:
      raise NoAudioTrackError(path, "has no audio track; audio-video examples need one")
    stream = container.streams.audio[0]
    to_float = av.AudioResampler(format="fltp")  # planar float, channel layout and rate unchanged
    chunks, start, source_rate = [], None, None
    for frame in container.decode(stream):
      if start is None:
        start, source_rate = _frame_time(frame, path), frame.sample_rate
      chunks.extend(f.to_ndarray() for f in to_float.resample(frame))
    chunks.extend(f.to_ndarray() for f in to_float.resample(None))
    # Samples past the duration the container declares are the encoder's padding.
    known = stream.duration and source_rate
    declared = round(stream.duration * stream.time_base * source_rate) if known else None
  if not chunks:
    raise UndecodableMediaError(path, "the audio stream decodes to no samples")
  planes = np.concatenate(chunks, axis=1)[:, :declared]  # (channels, samples) in [-1, 1]
  mono = planes[0] if channels == "first" else planes.mean(axis=0)
  if source_rate != sample_rate:
    mono = librosa.resample(mono, orig_sr=source_rate, target_sr=int(sample_rate), res_type="soxr_hq")
  return np.clip(mono * 32768.0, -32768.0, 32767.0).astype(np.float32), start
