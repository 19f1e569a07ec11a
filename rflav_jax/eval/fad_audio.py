"""Audio at 44.1 kHz as MM-Diffusion's evaluation loads it for FAD (`audioclip.embed` takes the result).

MM-Diffusion's data loader reads a clip's audio with moviepy, `AudioFileClip(path, fps=44100)`, which has FFmpeg
decode the file and convert it to 44.1 kHz, two channels, signed 16 bits (`-ar 44100 -ac 2 -f s16le`), divides the
samples by 32768 and keeps the first channel. `resample_to_44k` makes the same conversion of decoded audio with
FFmpeg's own resampler (libswresample, default settings, through PyAV), so:
  - a mono source comes out at 1/sqrt(2) of its amplitude, FFmpeg's mono-to-stereo mix (our mp4s carry mono AAC);
    of a stereo source the first channel is kept as it is;
  - every sample is rounded to a multiple of 1/32768 and clipped to [-1, 1 - 1/32768].
"""
import av
import numpy as np

SAMPLE_RATE = 44100
_LAYOUTS = {1: "mono", 2: "stereo"}


def resample_to_44k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
  """First channel float64 (round(n * 44100 / sample_rate),) in [-1, 1) of audio (channels, n) or mono (n,) in
  [-1, 1] at `sample_rate` Hz, as FFmpeg converts it for moviepy (see the module docstring)."""
  audio = np.asarray(audio)
  audio = audio[None] if audio.ndim == 1 else audio
  if audio.ndim != 2 or audio.shape[0] not in _LAYOUTS or audio.shape[1] == 0:
    raise ValueError(f"expected audio of shape (samples,) or (channels, samples) with 1 or 2 channels, "
                     f"got shape {audio.shape}")
  if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
    raise ValueError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
  frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, np.float32), format="fltp",
                                     layout=_LAYOUTS[audio.shape[0]])
  frame.sample_rate, frame.pts = int(sample_rate), 0
  resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
  chunks = [f.to_ndarray() for f in resampler.resample(frame)] + [f.to_ndarray() for f in resampler.resample(None)]
  interleaved = np.concatenate(chunks, axis=1).reshape(-1, 2)  # packed s16: (1, 2 n) -> (n, 2)
  return interleaved[:, 0] / 32768.0
