"""Bouncing ball: a procedural audio-video dataset with an exact link between picture and sound.

A ball of one colour bounces elastically under gravity in a black square frame. The sound is a tone whose
pitch follows the ball's height and a click at every floor contact; the colour sets the timbre (the class):

  class 0 "red_sine":   pure tone (partial 1);
  class 1 "green_odd":  odd partials 1, 3, 5 with amplitudes 1/k;
  class 2 "blue_saw":   all partials 1..6 with amplitudes 1/k.

Timing (10 fps, 16 kHz, 1600 samples per frame): frame n stands for the interval [n, n + 1) / fps. Its
picture shows the ball at the interval's midpoint, with height h_n in [0, 1] (0 = resting on the floor,
1 = touching the top). Its audio (samples [1600 n, 1600 (n + 1))) is the tone held at
  pitch_n = PITCH_LOW_HZ * (PITCH_HIGH_HZ / PITCH_LOW_HZ) ** h_n      (200 Hz .. 800 Hz, two octaves)
with continuous phase (gliding to the next pitch over the 4 ms around each frame boundary, fading in and
out over 8 ms at the clip's ends), plus a click (a 7 kHz burst, Gaussian envelope of 1 ms) centred on every floor
contact that falls inside the interval. Contacts keep CONTACT_MARGIN_S away from frame boundaries, so each
click belongs to exactly one frame, and that frame is the one whose picture shows the ball lowest (a local
minimum of h_n). Tone partials stay below 5 kHz and the click sits above 6 kHz, so both can be read back
from the mel spectrogram (see synthetic_analysis.py).

Physics per clip, drawn from the clip's seed: bounce period P ~ U(0.6, 1.6) s, peak height
H ~ U(0.5, 0.95), phase ~ U(0, P), horizontal position ~ U over the frame; h(t) = 4 H s (1 - s) with
s = frac((t - phase) / P), i.e. parabolic flights with gravity 8 H / P^2 and contacts at phase + k P.

The mel is computed exactly as for real data: mel_from_waveform of the int16-scale waveform.
"""
import dataclasses

import numpy as np

from rflav_jax.codecs.audio import frames_from_mel, mel_from_waveform

FPS = 10.0
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 1600
PITCH_LOW_HZ = 200.0
PITCH_HIGH_HZ = 800.0
CLICK_HZ = 7000.0
CLICK_SIGMA_S = 0.001
CONTACT_MARGIN_S = 0.005
GLIDE_S = 0.004
FADE_S = 0.008
PERIOD_RANGE_S = (0.6, 1.6)
PEAK_HEIGHT_RANGE = (0.5, 0.95)
CLASS_NAMES = ("red_sine", "green_odd", "blue_saw")
CLASS_COLOURS = np.array([(255, 48, 48), (48, 255, 48), (48, 96, 255)], np.float64)
CLASS_PARTIALS = (
    {1: 1.0},
    {1: 1.0, 3: 1 / 3, 5: 1 / 5},
    {k: 1 / k for k in range(1, 7)},
)
_TONE_PEAK = 0.5  # peak amplitude of the tone in [-1, 1] waveform units
_CLICK_PEAK = 0.4


@dataclasses.dataclass(frozen=True)
class BouncingBallConfig:
  """Clip geometry: square frames of `resolution` pixels (32 default, 64 an option), `num_frames` frames."""
  resolution: int = 32
  num_frames: int = 16

  def __post_init__(self):
    if self.resolution < 16:
      raise ValueError(f"resolution={self.resolution}: expected at least 16 pixels (32 or 64 are typical)")
    if self.num_frames < 1:
      raise ValueError(f"num_frames={self.num_frames}: expected a positive number of frames")


@dataclasses.dataclass(frozen=True)
class BouncingBallClip:
  """One clip and the latent state that generated it.

  video: uint8 (T, R, R, 3). audio: float32 (T * 1600,) in [-1, 1] at 16 kHz.
  mel: float32 (T, 10, 256) normalised to [-1, 1]. label: class index (CLASS_NAMES).
  height: float32 (T,) ball height shown in each frame, in [0, 1].
  pitch_hz: float32 (T,) tone frequency of each frame's audio.
  contacts: bool (T,) frames whose interval holds a floor contact (and a click).
  contact_times: float64 (K,) contact times in seconds from the clip start.
  """
  video: np.ndarray
  audio: np.ndarray
  mel: np.ndarray
  label: int
  height: np.ndarray
  pitch_hz: np.ndarray
  contacts: np.ndarray
  contact_times: np.ndarray


@dataclasses.dataclass(frozen=True)
class BallGeometry:
  """Where the ball is drawn in an R x R frame, in pixel units (pixel (i, j) covers [i, i+1) x [j, j+1))."""
  radius: float
  row_at_floor: float  # centre row when h = 0
  row_at_top: float  # centre row when h = 1
  margin: float

  @classmethod
  def for_resolution(cls, resolution: int) -> "BallGeometry":
    radius, margin = resolution / 10, 1.0
    return cls(radius, resolution - margin - radius, margin + radius, margin)

  def row(self, height):
    """Centre row of a ball at `height` in [0, 1]."""
    return self.row_at_floor - np.asarray(height) * (self.row_at_floor - self.row_at_top)

  def height(self, row):
    """Inverse of row()."""
    return (self.row_at_floor - np.asarray(row)) / (self.row_at_floor - self.row_at_top)


def pitch_of_height(height):
  """Tone frequency in Hz for ball height in [0, 1]: two octaves, linear in log-frequency."""
  return PITCH_LOW_HZ * (PITCH_HIGH_HZ / PITCH_LOW_HZ) ** np.asarray(height)


def height_of_pitch(pitch_hz):
  """Inverse of pitch_of_height."""
  return np.log(np.asarray(pitch_hz) / PITCH_LOW_HZ) / np.log(PITCH_HIGH_HZ / PITCH_LOW_HZ)


def _draw_physics(rng: np.random.Generator, num_frames: int):
  """Draws (period, peak, phase) until no contact lies within CONTACT_MARGIN_S of a frame boundary."""
  duration = num_frames / FPS
  for _ in range(1000):
    period = rng.uniform(*PERIOD_RANGE_S)
    peak = rng.uniform(*PEAK_HEIGHT_RANGE)
    phase = rng.uniform(0.0, period)
    times = phase + period * np.arange(-1, duration / period + 2)  # contacts from before to after the clip
    near = times[np.abs(times - duration / 2) < duration / 2 + 1 / FPS]
    if np.all(np.abs(near - np.round(near * FPS) / FPS) >= CONTACT_MARGIN_S):
      return period, peak, phase, times[(times >= 0) & (times < duration)]
  raise RuntimeError("could not draw bounce physics away from frame boundaries")


def _render(geometry: BallGeometry, resolution: int, rows: np.ndarray, column: float, colour: np.ndarray):
  """uint8 (T, R, R, 3): an anti-aliased disc (coverage = clip(radius + 1/2 - distance, 0, 1)) per frame."""
  centres = np.arange(resolution) + 0.5
  dy = centres[None, :, None] - rows[:, None, None]
  dx = centres[None, None, :] - column
  coverage = np.clip(geometry.radius + 0.5 - np.hypot(dy, dx), 0.0, 1.0)
  return np.round(coverage[..., None] * colour).astype(np.uint8)


def _tone(pitch_hz: np.ndarray, label: int) -> np.ndarray:
  """float64 (T * 1600,): the class's partials at each frame's pitch, phase-continuous across frames.

  The frequency glides between neighbouring frames' pitches over GLIDE_S around each frame boundary
  (raised cosine) and the tone fades in and out over FADE_S at the clip's ends: without them the steps
  and the front end's reflect padding would leak broadband energy into the click band.
  """
  num_frames = len(pitch_hz)
  t = np.arange(num_frames * SAMPLES_PER_FRAME) / SAMPLE_RATE
  boundary = np.round(t * FPS).astype(int)  # nearest frame boundary: between frames boundary-1 and boundary
  before = pitch_hz[np.clip(boundary - 1, 0, num_frames - 1)]
  after = pitch_hz[np.clip(boundary, 0, num_frames - 1)]
  ramp = np.clip((t - boundary / FPS) / GLIDE_S + 0.5, 0.0, 1.0)
  frequency = before + (after - before) * 0.5 * (1 - np.cos(np.pi * ramp))
  phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
  partials = CLASS_PARTIALS[label]
  tone = sum(amplitude * np.sin(k * phase) for k, amplitude in partials.items()) / sum(partials.values())
  fade = np.clip(np.minimum(t, num_frames / FPS - t) / FADE_S, 0.0, 1.0)
  return _TONE_PEAK * tone * 0.5 * (1 - np.cos(np.pi * fade))


def _clicks(contact_times: np.ndarray, num_samples: int) -> np.ndarray:
  """float64 (num_samples,): a Gaussian-enveloped CLICK_HZ burst centred on each contact time."""
  t = np.arange(num_samples) / SAMPLE_RATE
  out = np.zeros(num_samples)
  for tc in contact_times:
    out += np.exp(-0.5 * ((t - tc) / CLICK_SIGMA_S) ** 2) * np.sin(2 * np.pi * CLICK_HZ * (t - tc))
  return _CLICK_PEAK * out


def generate_clip(seed: int, index: int, config: BouncingBallConfig = BouncingBallConfig()) -> BouncingBallClip:
  """Clip number `index` of the set drawn with `seed`; the same (seed, index, config) gives the same clip."""
  rng = np.random.default_rng([seed, index])
  label = int(rng.integers(len(CLASS_NAMES)))
  period, peak, phase, contact_times = _draw_physics(rng, config.num_frames)
  geometry = BallGeometry.for_resolution(config.resolution)
  column = rng.uniform(geometry.margin + geometry.radius, config.resolution - geometry.margin - geometry.radius)

  midpoints = (np.arange(config.num_frames) + 0.5) / FPS
  s = np.mod(midpoints - phase, period) / period
  height = 4 * peak * s * (1 - s)
  pitch_hz = pitch_of_height(height)
  contacts = np.zeros(config.num_frames, bool)
  contacts[np.floor(contact_times * FPS).astype(int)] = True

  video = _render(geometry, config.resolution, geometry.row(height), column, CLASS_COLOURS[label])
  audio = (_tone(pitch_hz, label) + _clicks(contact_times, config.num_frames * SAMPLES_PER_FRAME)).astype(np.float32)
  mel = frames_from_mel(mel_from_waveform(audio * 32768.0))
  return BouncingBallClip(
      video=video, audio=audio, mel=mel, label=label,
      height=height.astype(np.float32), pitch_hz=pitch_hz.astype(np.float32), contacts=contacts,
      contact_times=contact_times)


def synthetic_dataset(num_clips: int, config: BouncingBallConfig = BouncingBallConfig(), seed: int = 0,
                      first_index: int = 0) -> dict[str, np.ndarray]:
  """Clips first_index .. first_index + num_clips - 1 of `seed`, stacked into numpy arrays.

  Returns {"video": uint8 (N, T, R, R, 3), "audio": float32 (N, T * 1600), "mel": float32 (N, T, 10, 256),
  "label": int64 (N,), "height": float32 (N, T), "contacts": bool (N, T)}.
  """
  if num_clips < 1:
    raise ValueError(f"num_clips={num_clips}: expected at least one clip")
  clips = [generate_clip(seed, first_index + i, config) for i in range(num_clips)]
  stack = lambda name: np.stack([getattr(clip, name) for clip in clips])
  return {"video": stack("video"), "audio": stack("audio"), "mel": stack("mel"),
          "label": np.array([clip.label for clip in clips], np.int64), "height": stack("height"),
          "contacts": stack("contacts")}
