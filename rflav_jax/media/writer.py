"""Writing audio-video streams to mp4 (H.264 + AAC, chunk by chunk) and audio to 16-bit wav."""
import os
import tempfile
import wave
from typing import BinaryIO

import av
import numpy as np

from rflav_jax import storage
from rflav_jax.media.timing import exact_rate, samples_per_frame


class Mp4Writer:
  """Streams video frames and their audio into one mp4 file, in constant memory.

  Each `write` encodes its chunk and hands the packets to the muxer at once, so a stream of any length
  can be written. The file is valid once `close` has run (on leaving a `with` block):

    with Mp4Writer("out.mp4", fps=10, sample_rate=16000) as writer:
      for frames, audio in chunks:   # uint8 (T, H, W, 3), float32 (T * 1600,) in [-1, 1]
        writer.write(frames, audio)

  path: a file path, or a writable binary file object.
  crf: H.264 constant rate factor (0 lossless .. 51 worst; 18 is visually near lossless).
  `path` may be a URL (gs://bucket/out.mp4): FFmpeg's mp4 muxer needs a local file, so the writer fills a local
  temporary file and copies it to `path` (then removes it) on `close`; a process killed before that leaves the
  temporary file behind and nothing at `path`.
  live: write fragmented MP4 that a player can read while it grows: every `write` begins with a keyframe and a
    fragment of its own (moof + mdat, passed to the file once the next write begins, or on close), and x264 keeps
    no frames back (tune zerolatency).
  """

  def __init__(self, path: str | os.PathLike | BinaryIO, fps: float = 10, sample_rate: int = 16000, crf: int = 18,
               preset: str = "medium", audio_bitrate: int = 128_000, *, live: bool = False):
    if not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
      raise ValueError(f"crf must be an int in [0, 51] (lower is better quality), got {crf!r}")
    self.path = path if hasattr(path, "write") else os.fspath(path)
    self.live = live
    self.fps = fps
    self.sample_rate = sample_rate
    self._samples_per_frame = samples_per_frame(fps, sample_rate)
    self._encoder_options = {"crf": str(crf), "preset": preset, **({"tune": "zerolatency"} if live else {})}
    self._audio_bitrate = audio_bitrate
    fragmented = {"movflags": "frag_keyframe+empty_moov+default_base_moof"} if live else {}
    remote = isinstance(self.path, str) and storage.is_remote(self.path)
    self._local = _temporary_mp4() if remote else self.path
    self._container = av.open(self._local, "w", format="mp4", options=fragmented)
    self._video = self._audio = None  # created by the first write, once the frame size is known
    self._frames_written = 0
    self._samples_written = 0
    self._closed = False

  def write(self, frames: np.ndarray, audio: np.ndarray) -> None:
    """Appends uint8 (T, H, W, 3) RGB frames and their float (T * sample_rate / fps,) audio in [-1, 1]."""
    if self._closed:
      raise ValueError(f"Mp4Writer({self.path!r}) is closed; open a new writer to write more")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
      raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB with T >= 1, got {frames.dtype} {frames.shape}; "
                       "map [-1, 1] video with np.round((x + 1) * 127.5).clip(0, 255).astype(np.uint8)")
    expected = len(frames) * self._samples_per_frame
    audio = check_waveform(audio, "audio")
    if audio.shape != (expected,):
      raise ValueError(f"audio must hold {self._samples_per_frame} samples per frame, i.e. ({expected},) for "
                       f"{len(frames)} frames at {self.fps} fps and {self.sample_rate} Hz; got {audio.shape}")
    if self._video is None:
      self._add_streams(height=frames.shape[1], width=frames.shape[2])
    if frames.shape[1:3] != (self._video.height, self._video.width):
      raise ValueError(f"frames must keep the size of the first chunk, {self._video.height}x{self._video.width}; "
                       f"got {frames.shape[1]}x{frames.shape[2]}")
    for i, frame in enumerate(frames):
      image = av.VideoFrame.from_ndarray(frame, format="rgb24")
      image.pts = self._frames_written
      if self.live and i == 0:
        image.pict_type = av.video.frame.PictureType.I
      self._frames_written += 1
      self._container.mux(self._video.encode(image))
    sound = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
    sound.sample_rate = self.sample_rate
    sound.pts = self._samples_written
    self._samples_written += len(audio)
    self._container.mux(self._audio.encode(sound))

  def close(self) -> None:
    """Flushes both encoders and finishes the file; further calls do nothing."""
    if self._closed:
      return
    if self._video is None:
      self.discard()
      raise ValueError(f"Mp4Writer({self.path!r}) was closed before any write(); no file was written")
    self._closed = True
    self._container.mux(self._video.encode(None))
    self._container.mux(self._audio.encode(None))
    self._container.close()
    if self._local != self.path:
      storage.upload_file(self._local, storage.as_path(self.path))
      os.remove(self._local)

  def __enter__(self) -> "Mp4Writer":
    return self

  def __exit__(self, exc_type, exc, traceback) -> None:
    if exc_type is None or self._video is not None:
      self.close()  # after an error, what was written before it stays a valid file
    else:
      self.discard()

  def discard(self) -> None:
    """Closes the writer and removes its file, whatever was written to it."""
    self._closed = True
    try:
      self._container.close()
    finally:
      if isinstance(self._local, str) and os.path.exists(self._local):
        os.remove(self._local)

  def _add_streams(self, height: int, width: int) -> None:
    """Adds the H.264 and AAC streams for frames of height x width (both must be even for yuv420p)."""
    if height % 2 or width % 2:
      raise ValueError(f"H.264 (yuv420p) needs an even frame height and width, got {height}x{width}; "
                       "crop or pad the frames by one pixel")
    self._video = self._container.add_stream("libx264", rate=exact_rate(self.fps, "fps"))
    self._video.height, self._video.width = height, width
    self._video.pix_fmt = "yuv420p"
    self._video.options = self._encoder_options
    self._audio = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")
    self._audio.bit_rate = self._audio_bitrate


def _temporary_mp4() -> str:
  """A new empty local file for an mp4 that will be copied elsewhere."""
  handle, path = tempfile.mkstemp(suffix=".mp4")
  os.close(handle)
  return path


def write_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
  """Writes float (samples,) audio in [-1, 1] as mono 16-bit PCM wav (sample = round(32767 x))."""
  rate = exact_rate(sample_rate, "sample_rate")
  if rate.denominator != 1:
    raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
  pcm = np.round(check_waveform(audio, "audio") * 32767).astype("<i2")
  with wave.open(os.fspath(path), "wb") as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(int(rate))
    out.writeframes(pcm.tobytes())


def check_waveform(audio: np.ndarray, name: str) -> np.ndarray:
  """`audio` as float32 (samples,), checked to be finite and within [-1, 1]."""
  audio = np.asarray(audio)
  if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
    raise ValueError(f"{name} must be a 1-D float waveform (samples,), got {audio.dtype} {audio.shape}")
  if not np.all(np.isfinite(audio)):
    raise ValueError(f"{name} contains NaN or infinite samples; check the model output that produced it")
  peak = float(np.abs(audio).max(initial=0.0))
  if peak > 1.0:
    raise ValueError(f"{name} must lie in [-1, 1], its peak is {peak:.4f}; scale it or np.clip(audio, -1, 1)")
  return audio.astype(np.float32)
