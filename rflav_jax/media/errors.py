"""Errors raised when a media file cannot serve as an audio-video example.

All are ValueErrors whose message names the file, what is wrong with it and, where there is one, a fix.
A dataset build catches `MediaError` to skip a file, count it and report it.
"""
import os


class MediaError(ValueError):
  """A media file cannot be used; `path` is the file, the message says why."""

  def __init__(self, path: str | os.PathLike, problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f"{self.path}: {problem}")


class UndecodableMediaError(MediaError):
  """The file is missing, corrupt, truncated, not a media container, or has no video stream."""


class NoAudioTrackError(MediaError):
  """The file has a video stream but no audio stream."""


class ClipTooShortError(MediaError):
  """The file holds fewer whole frames (with their audio) than were asked for."""
