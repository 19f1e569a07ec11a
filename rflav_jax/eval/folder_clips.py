"""16-frame clips at 10 fps from a folder of mp4, picked and prepared as MM-Diffusion's evaluation loader does.

Which clips: every .mp4 under the folder (subfolders too), sorted by path, read at 10 fps by `media.reader`'s
rule. A file of T >= 16 frames holds the T - 15 windows of 16 frames at stride 1, as MM-Diffusion's loader
(torchvision's VideoClips, clip_length_in_frames=16, frames_between_clips=1, frame_rate=10) indexes them: a file of
exactly 16 frames is one clip. When the folder holds more windows than `num_clips`, `num_clips` of them are drawn
uniformly without replacement by `numpy.random.default_rng(seed)` (MM-Diffusion shuffles all windows with Python's
unseeded `random` and keeps the first 2048); otherwise every window is used.

What a clip becomes:
  video  uint8 (16, 64, 64, 3): the frames through `fvd_clips.fit_square`, ready for `i3d.features`.
  audio  float32 (70560,) in [-1, 1): the file's audio at 44.1 kHz as `fad_audio.resample_to_44k` converts it,
         the 1.6 s from time start / 10 s, zero-padded when the file ends sooner, ready for `audioclip.embed`.

`batches` decodes one file at a time (the whole file, once for all of its clips in a batch, and kept while the
next batch still needs it), so memory holds one decoded file and one batch of clips, whatever the folder's size.
"""
import dataclasses
import math
import os
import pathlib
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from rflav_jax.eval import audioclip, fad_audio, fvd_clips
from rflav_jax.media import reader
from rflav_jax.media.errors import ClipTooShortError, NoAudioTrackError, UndecodableMediaError

FPS = 10
CLIP_FRAMES = 16
AUDIO_SAMPLES_PER_FRAME = fad_audio.SAMPLE_RATE // FPS  # 4410
FIT_CHUNK = 16  # frames resized at once by fit_square


def list_videos(folder: str | os.PathLike) -> list[pathlib.Path]:
  """The .mp4 files under `folder`, subfolders included, sorted by path; ValueError when there are none."""
  folder = pathlib.Path(folder).expanduser()
  if not folder.is_dir():
    raise FileNotFoundError(f"clip folder {folder} does not exist or is not a folder; pass a folder of mp4 files")
  videos = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".mp4" and p.is_file())
  if not videos:
    raise ValueError(f"clip folder {folder} holds no .mp4 file (subfolders included); pass the folder that holds the "
                     f"clips (e.g. the one launch.sample wrote)")
  return videos


def frame_count(path: str | os.PathLike, fps: float = FPS) -> int:
  """Frames of the video of `path` at `fps` as `reader.read_video` resamples them, from the packets' timestamps:
  slots i / fps after the first frame, up to the end of the last frame (its timestamp plus the interval between the
  last two). Nothing is decoded."""
  try:
    with av.open(os.fspath(path)) as container:
      if not container.streams.video:
        raise UndecodableMediaError(path, "has no video stream")
      stream = container.streams.video[0]
      times = sorted({packet.pts * packet.time_base for packet in container.demux(stream) if packet.pts is not None})
      average_rate = stream.average_rate
  except av.FFmpegError as error:
    raise UndecodableMediaError(path, f"FFmpeg cannot read it ({error}); the file is corrupt, truncated or not a "
                                "media file") from error
  if not times:
    raise UndecodableMediaError(path, "the video stream holds no frames")
  period = 1 / Fraction(fps).limit_denominator(1_000_000)
  last_interval = times[-1] - times[-2] if len(times) > 1 else (1 / Fraction(average_rate) if average_rate else period)
  return math.ceil((times[-1] + last_interval - times[0]) / period)


@dataclasses.dataclass(frozen=True)
class ClipIndex:
  """Clips picked from a folder: clip i is frames starts[i] .. starts[i] + 15 of files[file_index[i]]."""
  folder: pathlib.Path
  files: tuple[str, ...]  # paths relative to the folder, sorted
  file_index: np.ndarray  # (N,) int
  starts: np.ndarray  # (N,) int, frames at 10 fps

  def __len__(self) -> int:
    return len(self.starts)


def select_clips(folder: str | os.PathLike, num_clips: int, seed: int) -> ClipIndex:
  """The clips of `folder` (see the module docstring); num_clips <= 0 takes every window. A file shorter than 16
  frames raises ClipTooShortError naming it."""
  folder = pathlib.Path(folder).expanduser()
  videos = list_videos(folder)
  windows = []
  for path in videos:
    frames = frame_count(path)
    if frames < CLIP_FRAMES:
      raise ClipTooShortError(path, f"holds {frames} frames at {FPS} fps; FVD clips are {CLIP_FRAMES} frames "
                              f"({CLIP_FRAMES / FPS} s): remove the file or make it at least that long")
    windows.append(frames - CLIP_FRAMES + 1)
  ends = np.cumsum(windows)
  chosen = np.arange(ends[-1])
  if 0 < num_clips < ends[-1]:
    chosen = np.sort(np.random.default_rng(seed).choice(ends[-1], num_clips, replace=False))
  file_index = np.searchsorted(ends, chosen, side="right")
  starts = chosen - (ends[file_index] - np.asarray(windows)[file_index])
  return ClipIndex(folder, tuple(p.relative_to(folder).as_posix() for p in videos), file_index, starts)


def audio_44k(path: str | os.PathLike) -> np.ndarray:
  """The audio of `path` as MM-Diffusion reads it for FAD: float64 (n,) at 44.1 kHz, the first channel after FFmpeg's
  conversion to stereo (a mono track at 1/sqrt(2) of its amplitude; of more than two channels, the first is kept)."""
  with av.open(os.fspath(path)) as container:
    if not container.streams.audio:
      raise NoAudioTrackError(path, "has no audio track, which FAD needs; leave config.eval.audioclip_weights empty "
                              "to skip FAD")
    rate, channels = container.streams.audio[0].rate, container.streams.audio[0].channels
  first = reader.read_audio(path, rate, channels="first") / 32768.0  # at the file's own rate: not resampled
  return fad_audio.resample_to_44k(first if channels == 1 else np.stack([first, first]), rate)


def _decode(path: pathlib.Path, video: bool, audio: bool) -> dict[str, np.ndarray]:
  """{"video": fit_square'd frames (T, 64, 64, 3) uint8, "audio": audio_44k} of one file, as asked."""
  decoded = {}
  if video:
    frames = reader.read_video(path, FPS)
    decoded["video"] = np.concatenate([fvd_clips.fit_square(frames[None, i:i + FIT_CHUNK])[0]
                                       for i in range(0, len(frames), FIT_CHUNK)])
  if audio:
    decoded["audio"] = audio_44k(path)
  return decoded


def _clip(decoded: dict[str, np.ndarray], start: int, path: pathlib.Path) -> dict[str, np.ndarray]:
  clip = {}
  if "video" in decoded:
    clip["video"] = decoded["video"][start:start + CLIP_FRAMES]
    if len(clip["video"]) < CLIP_FRAMES:
      raise UndecodableMediaError(path, f"decodes to {len(decoded['video'])} frames at {FPS} fps where its timestamps "
                                  f"give more; remux it (ffmpeg -i in.mp4 -c copy out.mp4)")
  if "audio" in decoded:
    sound = decoded["audio"][start * AUDIO_SAMPLES_PER_FRAME:][:audioclip.CLIP_SAMPLES]
    clip["audio"] = np.pad(sound, (0, audioclip.CLIP_SAMPLES - len(sound))).astype(np.float32)
  return clip


def batches(index: ClipIndex, batch_size: int, video: bool = True,
            audio: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Batches of at most `batch_size` clips in index order: {"video": (B, 16, 64, 64, 3) uint8, "audio": (B, 70560)
  float32}, each key present when asked for."""
  last_file, decoded = None, None
  for first in range(0, len(index), batch_size):
    clips = []
    for file, start in zip(index.file_index[first:first + batch_size], index.starts[first:first + batch_size]):
      path = index.folder / index.files[file]
      if file != last_file:
        last_file, decoded = file, _decode(path, video, audio)
      clips.append(_clip(decoded, int(start), path))
    yield {key: np.stack([clip[key] for clip in clips]) for key in clips[0]}
