"""Reading the bouncing-ball state back from pictures and sound alone (see synthetic.py for the design).

These work on any video / mel of the bouncing-ball layout, generated or not, so evaluation can check that
GENERATED audio matches GENERATED video: the height from the picture against the height from the pitch,
the lowest frames against the clicks, the colour against the timbre.

video: uint8 (T, R, R, 3). mel: (T, 10, N) normalised to [-1, 1] (divide by audio_scale first).
"""
import functools

import librosa
import numpy as np

from rflav_jax.codecs.audio import MelParams, log_mel_from_mel
from rflav_jax.data import synthetic

STEADY_COLUMNS = slice(3, 7)  # mel columns of a frame whose 64 ms windows see only that frame's held tone
CLICK_BAND_HZ = (6600.0, 7400.0)
CLICK_THRESHOLD = -0.3  # normalised mel, mean over the click band; silence is -1, a click about 0.3 or more
HARMONIC_THRESHOLD = np.log(1e-2)  # a partial counts as present within 40 dB of the fundamental


def ball_height_from_video(video: np.ndarray) -> np.ndarray:
  """float64 (T,): ball height in [0, 1] per frame from the coverage-weighted centroid row; NaN if no ball.

  Coverage is the brightest channel / 255 (the ball colours are saturated); pixels below 0.1 count as
  background, so faint noise does not pull the centroid.
  """
  video = _check_video(video)
  weight = np.maximum(video.max(axis=-1) / 255.0 - 0.1, 0.0)  # (T, R, R)
  rows = np.arange(video.shape[1]) + 0.5
  total = weight.sum(axis=(1, 2))
  with np.errstate(invalid="ignore", divide="ignore"):
    centre_row = (weight.sum(axis=2) @ rows) / total
  return synthetic.BallGeometry.for_resolution(video.shape[1]).height(np.where(total > 0, centre_row, np.nan))


def contacts_from_video(video: np.ndarray) -> np.ndarray:
  """bool (T,): frames where the ball is lower than in both neighbours. The first and last frames have only
  one neighbour and are never marked."""
  height = ball_height_from_video(video)
  out = np.zeros(len(height), bool)
  out[1:-1] = (height[1:-1] < height[:-2]) & (height[1:-1] < height[2:])
  return out


def label_from_video(video: np.ndarray) -> int:
  """Class whose ball colour is closest (cosine) to the frames' coverage-weighted mean colour."""
  video = _check_video(video).astype(np.float64)
  colour = video.reshape(-1, 3).sum(axis=0)
  colours = synthetic.CLASS_COLOURS / np.linalg.norm(synthetic.CLASS_COLOURS, axis=1, keepdims=True)
  return int(np.argmax(colours @ colour))


def pitch_from_mel(mel: np.ndarray) -> np.ndarray:
  """float64 (T,): the tone's fundamental in Hz per frame, from the steady columns' loudest mel bin within
  the pitch range (refined by a parabola through its neighbours)."""
  spectrum = _steady_spectrum(mel)  # (T, N)
  centres_mel = _bin_centres_mel(spectrum.shape[-1])
  centres_hz = librosa.mel_to_hz(centres_mel)
  band = np.flatnonzero((centres_hz >= synthetic.PITCH_LOW_HZ / 1.25) & (centres_hz <= synthetic.PITCH_HIGH_HZ * 1.25))
  peak = band[np.argmax(spectrum[:, band], axis=1)]
  rows = np.arange(len(spectrum))
  left, mid, right = spectrum[rows, peak - 1], spectrum[rows, peak], spectrum[rows, peak + 1]
  curvature = left - 2 * mid + right  # negative at a proper peak
  offset = np.divide(0.5 * (left - right), curvature, out=np.zeros_like(mid), where=curvature < 0)
  step = centres_mel[1] - centres_mel[0]
  return librosa.mel_to_hz(centres_mel[peak] + np.clip(offset, -0.5, 0.5) * step)


def height_from_mel(mel: np.ndarray) -> np.ndarray:
  """float64 (T,): ball height implied by each frame's pitch (synthetic.height_of_pitch)."""
  return synthetic.height_of_pitch(pitch_from_mel(mel))


def contacts_from_mel(mel: np.ndarray) -> np.ndarray:
  """bool (T,): frames holding a click: a column whose click-band level exceeds CLICK_THRESHOLD and peaks
  there (the column whose 64 ms window is centred nearest the click)."""
  mel = _check_mel(mel)
  centres_hz = librosa.mel_to_hz(_bin_centres_mel(mel.shape[-1]))
  band = (centres_hz >= CLICK_BAND_HZ[0]) & (centres_hz <= CLICK_BAND_HZ[1])
  level = mel[..., band].mean(axis=-1).reshape(-1)  # one value per column
  padded = np.concatenate([[-np.inf], level, [-np.inf]])
  peaks = np.flatnonzero((level > CLICK_THRESHOLD) & (level >= padded[:-2]) & (level > padded[2:]))
  out = np.zeros(len(mel), bool)
  out[peaks // mel.shape[1]] = True
  return out


def label_from_mel(mel: np.ndarray) -> int:
  """Class from the timbre: partials 2 and 3 both absent -> 0, only 3 -> 1, both -> 2; majority over frames.

  A partial is present when its log-mel level is within 40 dB of the fundamental's (pitch_from_mel).
  """
  log_mel = log_mel_from_mel(_steady_spectrum(mel))  # (T, N) natural log of mel amplitude
  centres_mel = _bin_centres_mel(log_mel.shape[-1])
  pitch = pitch_from_mel(mel)

  def level(frequency_hz):  # loudest bin within half a bin of the frequency, per frame
    position = np.interp(librosa.hz_to_mel(frequency_hz), centres_mel, np.arange(len(centres_mel)))
    lower = np.clip(np.floor(position).astype(int), 0, len(centres_mel) - 1)
    upper = np.clip(lower + 1, 0, len(centres_mel) - 1)
    rows = np.arange(len(log_mel))
    return np.maximum(log_mel[rows, lower], log_mel[rows, upper])

  fundamental = level(pitch)
  has_2 = level(2 * pitch) - fundamental > HARMONIC_THRESHOLD
  has_3 = level(3 * pitch) - fundamental > HARMONIC_THRESHOLD
  votes = np.where(has_3, np.where(has_2, 2, 1), 0)
  return int(np.bincount(votes, minlength=len(synthetic.CLASS_NAMES)).argmax())


def _steady_spectrum(mel: np.ndarray) -> np.ndarray:
  """float64 (T, N): mean over each frame's steady columns."""
  return _check_mel(mel)[:, STEADY_COLUMNS].mean(axis=1)


@functools.lru_cache(maxsize=4)
def _bin_centres_mel(n_mels: int) -> np.ndarray:
  """Centre of each mel filter on librosa's (slaney) mel scale, as in the front end's filterbank."""
  params = MelParams()
  return librosa.hz_to_mel(librosa.mel_frequencies(n_mels + 2, fmin=params.fmin, fmax=params.fmax))[1:-1]


def _check_video(video: np.ndarray) -> np.ndarray:
  video = np.asarray(video)
  if video.ndim != 4 or video.shape[-1] != 3 or video.shape[1] != video.shape[2]:
    raise ValueError(f"video must be (T, R, R, 3) square RGB frames, got shape {video.shape}; pass one clip")
  if video.dtype != np.uint8:
    raise ValueError(f"video must be uint8 in [0, 255], got {video.dtype}; map [-1, 1] floats with "
                     "np.round((x + 1) * 127.5).clip(0, 255).astype(np.uint8)")
  return video


def _check_mel(mel: np.ndarray) -> np.ndarray:
  mel = np.asarray(mel, np.float64)
  if mel.ndim != 3 or mel.shape[1] != 10:
    raise ValueError(f"mel must be (T, 10, N) for one clip, got shape {mel.shape}; "
                     "use rflav_jax.codecs.audio.frames_from_mel on (columns, N) mels")
  if not np.all(np.isfinite(mel)):
    raise ValueError("mel contains NaN or infinite values")
  return mel
