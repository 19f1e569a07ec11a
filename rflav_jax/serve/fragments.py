"""A live stream as fragmented MP4 (H.264 + AAC): an init segment, then fragments that each begin with a keyframe.

Players read the init segment (ftyp + moov) first and then any run of consecutive fragments (moof + mdat), so a
viewer can join a running stream at any fragment: each `write` of a chunk of frames makes one fragment.
"""
import io
import struct

import numpy as np

from rflav_jax.media.writer import Mp4Writer


class _Bytes(io.RawIOBase):
  """A write-only byte buffer that PyAV writes the container into (not seekable: the muxer streams)."""

  def __init__(self):
    super().__init__()
    self.data = bytearray()

  def writable(self) -> bool:
    return True

  def write(self, data) -> int:
    self.data += data
    return len(data)


class FragmentEncoder:
  """Encodes chunks of frames and their audio into fragmented MP4, cut into its init segment and fragments.

    encoder = FragmentEncoder(fps=10, sample_rate=16000)
    for video, wav in chunks:            # uint8 (n, H, W, 3), float32 (n * 1600,) in [-1, 1]
      for fragment in encoder.write(video, wav):
        send(fragment)                   # after encoder.init, which is set by the first write

  The muxer passes on a chunk's fragment once the next chunk begins, so fragments lag the writes by one chunk.
  """

  def __init__(self, fps: float = 10, sample_rate: int = 16000, crf: int = 18):
    self._bytes = _Bytes()
    self._writer = Mp4Writer(self._bytes, fps, sample_rate, crf=crf, preset="veryfast", live=True)
    self.init: bytes | None = None  # ftyp + moov, set by the first write
    self._moof: bytes | None = None  # the last fragment's moof box, whose mdat follows it

  @property
  def codecs(self) -> str | None:
    """The codecs of the init segment as a MIME type's codecs parameter (e.g. 'avc1.64000a, mp4a.40.2', what Media
    Source Extensions ask for); None before the first write."""
    at = self.init.find(b"avcC") if self.init else -1
    if at < 0:
      return None
    return f"avc1.{self.init[at + 5:at + 8].hex()}, mp4a.40.2"  # avcC: version, profile, compatibility, level

  def write(self, video: np.ndarray, wav: np.ndarray) -> list[bytes]:
    """Encodes uint8 frames (n, H, W, 3) and their float32 audio (n * samples per frame,); returns the fragments
    that are complete."""
    self._writer.write(video, wav)
    return self._take()

  def close(self) -> list[bytes]:
    """Flushes the encoders; returns the last fragments."""
    self._writer.close()
    return self._take()

  def _take(self) -> list[bytes]:
    """Cuts the complete top-level boxes off the written bytes: the boxes before the first moof make the init
    segment, then each moof + mdat pair a fragment (the index written on close, mfra, is left out)."""
    data, fragments, start = self._bytes.data, [], 0
    while len(data) - start >= 8:
      size, kind = struct.unpack_from(">I4s", data, start)
      if size == 1:  # a 64-bit size follows the type
        size = struct.unpack_from(">Q", data, start + 8)[0] if len(data) - start >= 16 else len(data) + 1
      if len(data) - start < size:
        break
      box = bytes(data[start:start + size])
      start += size
      if kind == b"moof":
        self._moof = box
      elif kind == b"mdat":
        fragments.append(self._moof + box)
      elif self._moof is None:
        self.init = (self.init or b"") + box
    del data[:start]
    return fragments
