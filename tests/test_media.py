"""Media I/O: real mp4 files, fps resampling, letterboxing, writer round trips, and clear errors."""
import wave
from fractions import Fraction

import av
import numpy as np
import pytest

from helpers import media_file, moving_gradient, write_video_only
from rflav_jax.codecs.audio import frames_from_mel, mel_from_waveform
from rflav_jax.media import (ClipTooShortError, MediaError, Mp4Writer, NoAudioTrackError,
                             UndecodableMediaError, letterbox, read_audio, read_clip, read_video, write_wav)

SHORT_FILES = ["aist_video0.mp4", "landscape_video0.mp4", "landscape_video1.mp4"]
QUADRANTS = np.array([[[200, 40, 40], [40, 200, 40]], [[40, 40, 200], [230, 230, 60]]], np.uint8)


def decode_with_pyav(path, kind):
  """Independent reference: every decoded frame of the first `kind` stream as an ndarray."""
  with av.open(str(path)) as container:
    if kind == "video":
      return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


def quadrant_frames(num_frames, height, width):
  """Four coloured blocks split at a quarter of the height and a third of the width: off-centre splits
  move if the picture is cropped instead of scaled."""
  rows = (np.arange(height) >= height // 4).astype(int)
  cols = (np.arange(width) >= width // 3).astype(int)
  return np.broadcast_to(QUADRANTS[rows[:, None], cols[None, :]], (num_frames, height, width, 3)).copy()


def psnr(a, b):
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("name", SHORT_FILES)
def test_short_release_files_give_16_frames_and_a_16x10x256_mel(name):
  clip = read_clip(media_file(name))
  assert clip.video.shape == (16, 256, 256, 3) and clip.video.dtype == np.uint8
  assert clip.audio.shape == (25600,) and clip.audio.dtype == np.float32
  assert (clip.fps, clip.sample_rate, clip.path) == (10.0, 16000, str(media_file(name)))
  mel = frames_from_mel(mel_from_waveform(clip.audio))
  assert mel.shape == (16, 10, 256)
  assert -1.0 <= mel.min() and mel.max() <= 1.0


def test_long_release_file_gives_240_frames_and_24_seconds():
  path = media_file("aist_video1_long.mp4")
  assert read_video(path).shape == (240, 256, 256, 3)
  assert abs(len(read_audio(path)) / 16000 - 24.0) < 0.1  # 24 s plus the codec's few ms of padding
  clip = read_clip(path)
  assert clip.video.shape[0] == 240 and clip.audio.shape == (240 * 1600,)


def test_native_rate_video_is_every_decoded_frame():
  path = media_file("aist_video0.mp4")
  np.testing.assert_array_equal(read_video(path, fps=10), decode_with_pyav(path, "video"))


@pytest.mark.parametrize("fps, source_index", [
    (5, [0, 2, 4, 6, 8, 10, 12, 14]),
    (7.5, [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14]),  # floor(i * 10 / 7.5)
    (20, np.repeat(np.arange(16), 2)),
])
def test_fps_resampling_takes_the_nearest_earlier_frame(fps, source_index):
  path = media_file("aist_video0.mp4")
  np.testing.assert_array_equal(read_video(path, fps=fps), decode_with_pyav(path, "video")[source_index])


def test_release_audio_is_the_first_channel_in_int16_scale():
  path = media_file("landscape_video0.mp4")  # stereo MP3 at 16 kHz
  planes = decode_with_pyav(path, "audio")
  with av.open(str(path)) as container:
    declared = container.streams.audio[0].duration  # in 1 / 16000 s
  assert planes.shape[0] == 2 and planes.shape[1] > declared  # the decoder adds a few padding samples
  np.testing.assert_allclose(read_audio(path), planes[0, :declared] * 32768, atol=1e-2)


def write_stereo_wav(path, seconds=0.5):
  """16 kHz stereo wav: left = 1 kHz + a little 6 kHz, right = 300 Hz. Returns the int16 (2, samples)."""
  t = np.arange(int(seconds * 16000)) / 16000
  left = 0.5 * np.sin(2 * np.pi * 1000 * t) + 0.2 * np.sin(2 * np.pi * 6000 * t)
  right = 0.3 * np.sin(2 * np.pi * 300 * t)
  pcm = np.round(np.stack([left, right]) * 32767).astype("<i2")
  with wave.open(str(path), "wb") as out:
    out.setnchannels(2)
    out.setsampwidth(2)
    out.setframerate(16000)
    out.writeframes(pcm.T.tobytes())  # interleaved
  return pcm


def test_audio_channel_modes(tmp_path):
  pcm = write_stereo_wav(tmp_path / "stereo.wav")
  np.testing.assert_array_equal(read_audio(tmp_path / "stereo.wav"), pcm[0])
  np.testing.assert_allclose(read_audio(tmp_path / "stereo.wav", channels="mean"), pcm.mean(0), atol=1e-3)


def test_audio_is_resampled_to_the_requested_rate(tmp_path):
  write_stereo_wav(tmp_path / "stereo.wav")
  half = read_audio(tmp_path / "stereo.wav", sample_rate=8000)
  assert half.shape == (4000,)
  # At 8 kHz the 1 kHz tone remains and the 6 kHz one (above 4 kHz) is filtered out, not aliased.
  expected = 0.5 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(4000) / 8000)
  inner = slice(200, -200)  # away from the filter's edge effects
  assert np.abs(half[inner] - expected[inner]).max() < 0.01 * 32767


@pytest.mark.parametrize("height, width, top, left, new_h, new_w", [
    (240, 320, 32, 0, 192, 256),  # landscape: bars above and below
    (320, 240, 0, 32, 256, 192),  # portrait: bars left and right
    (59, 100, 52, 0, 151, 256),  # an odd 105 rows of padding: 52 on top, 53 below
])
def test_letterbox_scales_to_fit_and_pads_symmetrically_with_black(height, width, top, left, new_h, new_w):
  frames = quadrant_frames(2, height, width)
  boxed = letterbox(frames, 256)
  assert boxed.shape == (2, 256, 256, 3) and boxed.dtype == np.uint8
  content = np.zeros((256, 256), bool)
  content[top:top + new_h, left:left + new_w] = True
  assert not boxed[:, ~content].any()  # the bars are exactly black
  picture = boxed[:, top:top + new_h, left:left + new_w].astype(int)
  # Scaled, not cropped: each quadrant's colour reaches the content's corresponding corner.
  for i, row in ((0, 0), (1, -1)):
    for j, col in ((0, 0), (1, -1)):
      np.testing.assert_allclose(picture[:, row, col], np.broadcast_to(QUADRANTS[i, j], (2, 3)), atol=12)
  assert (picture.max(axis=-1) > 100).all()  # the content fills its whole box
  # The splits sit at their scaled positions (bicubic rings for a few pixels beside them).
  mid_row, mid_col = round(height // 4 * new_h / height), round(width // 3 * new_w / width)
  for i, row in ((0, mid_row - 8), (1, mid_row + 8)):
    for j, col in ((0, mid_col - 8), (1, mid_col + 8)):
      np.testing.assert_allclose(picture[:, row, col], np.broadcast_to(QUADRANTS[i, j], (2, 3)), atol=12)


def test_read_clip_letterboxes_a_non_square_file(tmp_path):
  path = tmp_path / "wide_320x240.mp4"
  with Mp4Writer(path) as writer:
    writer.write(quadrant_frames(3, 240, 320), np.zeros(3 * 1600, np.float32))
  clip = read_clip(path, resolution=256)
  assert clip.video.shape == (3, 256, 256, 3)
  assert not clip.video[:, :32].any() and not clip.video[:, 224:].any()
  picture = clip.video[:, 32:224].astype(int)
  # Splits at rows 60 * 0.8 = 48 and columns 106 * 0.8 = 85 of the 192 x 256 picture.
  for (i, j), (row, col) in zip([(0, 0), (0, 1), (1, 0), (1, 1)], [(40, 77), (40, 93), (56, 77), (56, 93)]):
    np.testing.assert_allclose(picture[:, row, col], np.broadcast_to(QUADRANTS[i, j], (3, 3)), atol=12)
  assert np.abs(picture[:, 2, 2] - QUADRANTS[0, 0]).max() <= 20  # the corner survives: nothing was cropped


def test_mp4_writer_round_trip_in_chunks(tmp_path):
  path = tmp_path / "round_trip.mp4"
  frames = moving_gradient(25)
  t = np.arange(25 * 1600) / 16000
  sound = (0.5 * np.sin(2 * np.pi * 440 * t) * np.minimum(1, 4 * t)).astype(np.float32)
  with Mp4Writer(path, fps=10, sample_rate=16000) as writer:
    for start, stop in [(0, 7), (7, 8), (8, 25)]:
      writer.write(frames[start:stop], sound[start * 1600:stop * 1600])
  with av.open(str(path)) as container:
    assert container.streams.video[0].codec_context.name == "h264"
    assert container.streams.audio[0].codec_context.name == "aac"
    assert container.streams.video[0].average_rate == 10
  video, audio = read_video(path), read_audio(path)
  assert video.shape == frames.shape
  assert len(audio) == len(sound)  # the AAC padding is cut at the declared duration
  assert np.mean([psnr(a, b) for a, b in zip(video, frames)]) >= 30.0
  clip = read_clip(path)
  assert clip.video.shape[0] == 25 and len(clip.audio) == 25 * 1600
  assert np.corrcoef(clip.audio, sound)[0, 1] > 0.99  # same sound, in place


def test_write_wav_round_trip(tmp_path):
  path = tmp_path / "tone.wav"
  sound = np.sin(np.linspace(0, 300, 8000)).astype(np.float32) * np.linspace(-1, 1, 8000, dtype=np.float32)
  write_wav(path, sound, 16000)
  with wave.open(str(path)) as wav:
    assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (1, 2, 16000, 8000)
    pcm = np.frombuffer(wav.readframes(8000), "<i2")
  np.testing.assert_array_equal(pcm, np.round(sound * 32767).astype(np.int16))
  np.testing.assert_array_equal(read_audio(path), pcm.astype(np.float32))  # the reader agrees


def test_corrupt_and_truncated_files_are_undecodable(tmp_path):
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  good = tmp_path / "good.mp4"
  with Mp4Writer(good) as writer:
    writer.write(moving_gradient(5), np.zeros(5 * 1600, np.float32))
  truncated = tmp_path / "truncated.mp4"
  truncated.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
  for path in (garbage, truncated):
    for read in (read_video, read_audio, read_clip):
      with pytest.raises(UndecodableMediaError, match=path.name) as error:
        read(path)
      assert isinstance(error.value, ValueError) and error.value.path == str(path)


def test_video_without_audio_track(tmp_path):
  path = tmp_path / "silent_film.mp4"
  write_video_only(path)
  assert read_video(path).shape == (5, 48, 64, 3)
  for read in (read_audio, read_clip):
    with pytest.raises(NoAudioTrackError, match="silent_film.mp4.*no audio track"):
      read(path)


def test_read_clip_aligns_audio_that_starts_late(tmp_path):
  """Audio starting 0.05 s after the video: frame 0 has no audio, so the clip starts at frame 1 (0.1 s)
  with the audio sample 800 recorded at that time."""
  path = tmp_path / "late_audio.mkv"
  ramp = (np.arange(8000) % 1000).astype(np.int16)
  with av.open(str(path), "w") as container:
    video = container.add_stream("libx264", rate=10)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    sound = container.add_stream("pcm_s16le", rate=16000, layout="mono")
    for i, frame in enumerate(moving_gradient(6)):
      image = av.VideoFrame.from_ndarray(frame, format="rgb24")
      image.pts = i
      container.mux(video.encode(image))
    samples = av.AudioFrame.from_ndarray(ramp[None], format="s16", layout="mono")
    samples.sample_rate, samples.pts, samples.time_base = 16000, 800, Fraction(1, 16000)
    container.mux(sound.encode(samples))
    container.mux(video.encode(None))
    container.mux(sound.encode(None))
  clip = read_clip(path)
  np.testing.assert_array_equal(clip.video, read_video(path)[1:5])  # 7200 samples left: 4 whole frames
  np.testing.assert_array_equal(clip.audio, ramp[800:800 + 4 * 1600])


def test_clip_too_short():
  with pytest.raises(ClipTooShortError, match=r"aist_video0.mp4: holds 16 whole frames.*at least 17"):
    read_clip(media_file("aist_video0.mp4"), min_frames=17)


def test_reader_input_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
    read_video(tmp_path / "nowhere.mp4")
  path = media_file("aist_video0.mp4")
  with pytest.raises(ValueError, match="channels must be one of"):
    read_audio(path, channels="left")
  with pytest.raises(ValueError, match="fps must be a positive number"):
    read_video(path, fps=0)
  with pytest.raises(ValueError, match="whole number of audio samples per video frame"):
    read_clip(path, fps=30)
  with pytest.raises(ValueError, match=r"uint8 \(T, H, W, 3\)"):
    letterbox(np.zeros((2, 8, 8, 3), np.float32), 16)
  assert issubclass(MediaError, ValueError)


def test_writer_input_errors(tmp_path):
  frames, sound = moving_gradient(2), np.zeros(3200, np.float32)
  with Mp4Writer(tmp_path / "a.mp4") as writer:
    with pytest.raises(ValueError, match=r"\(3200,\) for 2 frames"):
      writer.write(frames, sound[:3000])
    with pytest.raises(ValueError, match=r"lie in \[-1, 1\]"):
      writer.write(frames, sound + 1.5)
    with pytest.raises(ValueError, match="uint8"):
      writer.write(frames.astype(np.float32), sound)
    writer.write(frames, sound)
    with pytest.raises(ValueError, match="keep the size of the first chunk"):
      writer.write(moving_gradient(2, 32, 32), sound)
  with pytest.raises(ValueError, match="is closed"):
    writer.write(frames, sound)
  with pytest.raises(ValueError, match="even frame height and width"):
    with Mp4Writer(tmp_path / "b.mp4") as odd:
      odd.write(moving_gradient(2, 47, 64), sound)
  with pytest.raises(ValueError, match="1-D float"):
    write_wav(tmp_path / "c.wav", np.zeros((2, 100)), 16000)
