"""Media files in and out: reading mp4/webm/avi/wav with PyAV, streaming mp4 and wav writing."""
from rflav_jax.media.errors import ClipTooShortError, MediaError, NoAudioTrackError, UndecodableMediaError
from rflav_jax.media.reader import AVClip, letterbox, read_audio, read_clip, read_video
from rflav_jax.media.writer import Mp4Writer, write_wav

__all__ = ["AVClip", "ClipTooShortError", "MediaError", "Mp4Writer", "NoAudioTrackError", "UndecodableMediaError",
           "letterbox", "read_audio", "read_clip", "read_video", "write_wav"]
