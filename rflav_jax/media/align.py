"""Pairing video frames with audio that arrives at another pace (a streaming vocoder lags its mel)."""
import numpy as np


class FrameAligner:
  """Buffers B streams' video frames and audio samples and hands them out in whole aligned frames.

  push_video: uint8 (B, n, H, W, 3); push_audio: float (B, samples). `pop` returns the frames that have
  their audio, (B, k, H, W, 3) and (B, k * samples_per_frame), and keeps the rest for later.
  """

  def __init__(self, batch: int, samples_per_frame: int):
    self.samples_per_frame = samples_per_frame
    self._video = np.zeros((batch, 0, 0, 0, 3), np.uint8)
    self._audio = np.zeros((batch, 0), np.float32)

  def push_video(self, frames: np.ndarray) -> None:
    self._video = np.concatenate([self._video, frames], axis=1) if self._video.shape[1] else frames

  def push_audio(self, samples: np.ndarray) -> None:
    self._audio = np.concatenate([self._audio, samples], axis=1)

  def pop(self) -> tuple[np.ndarray, np.ndarray]:
    ready = min(self._video.shape[1], self._audio.shape[1] // self.samples_per_frame)
    video, self._video = self._video[:, :ready], self._video[:, ready:]
    audio, self._audio = np.split(self._audio, [ready * self.samples_per_frame], axis=1)
    return video, audio
