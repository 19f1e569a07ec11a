"""Audio codec: parity with the official mel front end, its inverse, frame layouts, Griffin-Lim."""
import json

import numpy as np
import pytest

from helpers import load_fixture
from rflav_jax.codecs import audio

SR = 16000
LOG_MIN, LOG_MAX = np.log(1e-5), np.log(200.0)


def fixture_front_end():
  """The golden waveform, its official log-mel and normalised mel as (columns, N), and our overrides."""
  d = load_fixture("mel_frontend.npz")
  p = json.loads(str(d["params_json"]))
  assert p["center"] is False  # the only mode the official front end uses
  overrides = dict(sample_rate=p["sr"], n_fft=p["n_fft"], n_mels=p["num_mels"], hop_length=p["hop"],
                   win_length=p["win"], fmin=p["fmin"], fmax=p["fmax"], min_value=p["min_value"],
                   max_value=p["max_value"])
  return d["wav_int16_scale"], d["log_mel"][0].T, d["normalized_mel"][0].T, overrides


def tone(freq, seconds=1.6, amplitude=20000.0):
  return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def test_front_end_reproduces_official_fixture():
  wav, log_mel, normalized, overrides = fixture_front_end()
  ours_log = audio.log_mel_from_waveform(wav, **overrides)
  ours = audio.mel_from_waveform(wav, **overrides)
  assert ours.shape == normalized.shape == (40, 256) and ours.dtype == np.float32
  assert np.abs(ours_log - log_mel).max() < 1e-4
  assert np.abs(ours - normalized).max() < 1e-4
  # The defaults are the fixture's parameters.
  np.testing.assert_array_equal(audio.mel_from_waveform(wav), ours)


def test_front_end_is_invariant_to_waveform_scale():
  """Peak normalisation makes the output independent of the input's gain (int16 or [-1, 1] scale)."""
  wav = fixture_front_end()[0]
  np.testing.assert_allclose(audio.mel_from_waveform(wav / 32768.0), audio.mel_from_waveform(wav), atol=1e-5)


def test_one_video_frame_is_ten_columns():
  mel = audio.mel_from_waveform(tone(440.0, seconds=0.3))
  assert mel.shape == (30, 256)


@pytest.mark.parametrize("scale", [1.0, audio.AIST_AUDIO_SCALE, audio.LANDSCAPE_AUDIO_SCALE])
@pytest.mark.parametrize("max_value", [200.0, 1.0])
def test_log_mel_from_mel_inverts_the_normalisation(scale, max_value):
  """Scaled mel -> log-mel gives the front end's log-mel, clipped to [ln min, ln max] (max 1 forces clipping)."""
  wav = fixture_front_end()[0]
  log_mel = audio.log_mel_from_waveform(wav, max_value=max_value)
  mel = audio.mel_from_waveform(wav, max_value=max_value) * scale
  recovered = audio.log_mel_from_mel(mel, audio_scale=scale, max_value=max_value)
  expected = np.clip(log_mel, LOG_MIN, np.log(max_value))
  if max_value == 1.0:
    assert (log_mel > 0).any()  # the clip is exercised
  np.testing.assert_allclose(recovered, expected, atol=2e-5)


def test_log_mel_from_mel_always_maps_x_over_2_plus_half():
  """No data-dependent branch: an all-positive mel is mapped like any other."""
  mel = np.array([[0.0, 0.5, 1.0, 3.0]])
  expected = LOG_MIN + np.clip(mel / 2 + 0.5, 0, 1) * (LOG_MAX - LOG_MIN)
  np.testing.assert_allclose(audio.log_mel_from_mel(mel), expected, rtol=1e-6)
  assert audio.log_mel_from_mel(mel)[0, -1] == pytest.approx(LOG_MAX)  # 3 is clipped to the top


def test_frames_and_columns_round_trip():
  mel = np.arange(2 * 30 * 4, dtype=np.float32).reshape(2, 30, 4)
  frames = audio.frames_from_mel(mel)
  assert frames.shape == (2, 3, 10, 4)
  np.testing.assert_array_equal(frames[1, 2, 7], mel[1, 27])  # frame t, column f = mel column 10 t + f
  np.testing.assert_array_equal(audio.mel_from_frames(frames), mel)


@pytest.mark.parametrize("freq", [440.0, 1000.0])
def test_griffin_lim_keeps_a_pure_tone_pitch(freq):
  log_mel = audio.log_mel_from_waveform(tone(freq))
  wav = audio.griffin_lim(log_mel)
  assert wav.shape == (len(log_mel) * 160,) and wav.dtype == np.float32
  assert np.abs(wav).max() <= 1.0
  assert 0.55 < np.sqrt(np.mean(wav**2)) < 0.8  # the loudness of the input's 0.95-peak sine (rms 0.67)
  spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
  dominant = np.fft.rfftfreq(len(wav), 1 / SR)[spectrum.argmax()]
  assert abs(dominant - freq) <= SR / 2048  # within one bin of the front end's STFT


def test_griffin_lim_is_deterministic_by_seed():
  log_mel = audio.log_mel_from_waveform(tone(700.0, seconds=0.2))
  np.testing.assert_array_equal(audio.griffin_lim(log_mel, n_iter=4), audio.griffin_lim(log_mel, n_iter=4))
  assert not np.array_equal(audio.griffin_lim(log_mel, n_iter=4), audio.griffin_lim(log_mel, n_iter=4, seed=1))


@pytest.mark.parametrize("wav, match", [
    (np.zeros((2, 3200), np.float32), "1-D"),
    (np.array(["a"] * 3200), "1-D numeric"),
    (np.zeros(500, np.float32), "needs more than 944"),
    (np.full(3200, np.nan, np.float32), "NaN"),
])
def test_front_end_rejects_bad_waveforms(wav, match):
  with pytest.raises(ValueError, match=match):
    audio.mel_from_waveform(wav)


def test_bad_parameters_and_shapes_raise_clear_errors():
  wav = tone(440.0, seconds=0.2)
  with pytest.raises(ValueError, match="unknown mel parameter"):
    audio.mel_from_waveform(wav, num_mels=80)
  with pytest.raises(ValueError, match="fmax <= sample_rate / 2"):
    audio.mel_from_waveform(wav, sample_rate=8000)
  with pytest.raises(ValueError, match="sample_rate must be a positive int"):
    audio.mel_from_waveform(wav, sample_rate=-16000)
  with pytest.raises(ValueError, match="audio_scale"):
    audio.log_mel_from_mel(np.zeros((10, 256)), audio_scale=0.0)
  with pytest.raises(ValueError, match="multiple of 10"):
    audio.frames_from_mel(np.zeros((15, 256)))
  with pytest.raises(ValueError, match=r"\(columns, 256\)"):
    audio.griffin_lim(np.zeros((2, 10, 256)))


def test_streaming_griffin_lim_joins_chunks_as_smoothly_as_one_whole_clip():
  log_mel = audio.log_mel_from_waveform(tone(440.0, seconds=2.0))
  stream = audio.GriffinLimStream(n_iter=8)
  pieces = [stream.push(log_mel[i:i + 50]) for i in range(0, len(log_mel), 50)] + [stream.flush()]
  wav = np.concatenate(pieces)
  assert wav.shape == (len(log_mel) * 160,) and wav.dtype == np.float32
  assert len(pieces[0]) == (50 - stream.lookahead) * 160  # the lookahead columns wait for the next chunk
  spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
  assert abs(np.fft.rfftfreq(len(wav), 1 / SR)[spectrum.argmax()] - 440.0) <= SR / 2048
  largest_step = lambda x: np.abs(np.diff(x[800:-800])).max()  # a phase jump at a join shows as a step
  assert largest_step(wav) <= 1.2 * largest_step(audio.griffin_lim(log_mel, n_iter=8))


def test_streaming_griffin_lim_needs_enough_lookahead_and_context():
  with pytest.raises(ValueError, match="lookahead >= 4"):
    audio.GriffinLimStream(lookahead=2)
  with pytest.raises(ValueError, match="context >= lookahead"):
    audio.GriffinLimStream(lookahead=4, context=6)
