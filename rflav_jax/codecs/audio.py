"""The official R-FLAV audio front end, its inverse, and a Griffin-Lim vocoder (host side, numpy/librosa).

Layouts: a waveform is (samples,) at 16 kHz; a mel is (columns, N) with one column per hop of 160 samples
and N = 256 mel bins, so one video frame at 10 fps (1600 samples) is 10 columns. The model sees mels as
(T, F=10, N) per clip; `frames_from_mel` / `mel_from_frames` convert between the two layouts.

Front end (as the official code computes it): int16-scale waveform / 32768 -> peak-normalised to 0.95 -> reflect-padded
by (n_fft - hop) / 2 -> STFT (n_fft 2048, periodic hann window of 1024 centred in the frame, hop 160, not
centred) -> magnitude sqrt(re^2 + im^2 + 1e-9) -> slaney mel filterbank (0-8000 Hz) -> ln(max(x, 1e-5))
-> [ln 1e-5, ln 200] mapped linearly to [-1, 1] (not clipped, as in the official code).
"""
import dataclasses
import functools

import librosa
import numpy as np

AIST_AUDIO_SCALE = 3.5009668382765917
LANDSCAPE_AUDIO_SCALE = 3.0951129410195515
COLUMNS_PER_FRAME = 10


@dataclasses.dataclass(frozen=True)
class MelParams:
  """Front-end settings; the defaults are the released models'. Override any by keyword in the functions."""
  sample_rate: int = 16000
  n_fft: int = 2048
  win_length: int = 1024
  hop_length: int = 160
  n_mels: int = 256
  fmin: float = 0.0
  fmax: float = 8000.0
  min_value: float = 1e-5  # mel floor before the log; ln(min_value) maps to -1
  max_value: float = 200.0  # ln(max_value) maps to +1
  peak: float = 0.95  # waveform peak after normalisation

  def __post_init__(self):
    for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"mel parameter {name} must be a positive int, got {value!r}")
    if not self.hop_length <= self.win_length <= self.n_fft:
      raise ValueError(f"mel parameters need hop_length <= win_length <= n_fft, got {self.hop_length}, "
                       f"{self.win_length}, {self.n_fft}")
    if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
      raise ValueError(f"mel parameters need 0 <= fmin < fmax <= sample_rate / 2, got fmin={self.fmin}, "
                       f"fmax={self.fmax}, sample_rate={self.sample_rate}")
    if not 0 < self.min_value < self.max_value:
      raise ValueError(f"mel parameters need 0 < min_value < max_value, got {self.min_value}, {self.max_value}")

  @property
  def padding(self) -> int:
    """Reflect padding on each side of the waveform: (n_fft - hop) // 2 samples."""
    return (self.n_fft - self.hop_length) // 2


def mel_params(**overrides) -> MelParams:
  """The default MelParams with `overrides` (field names of MelParams) applied."""
  unknown = set(overrides) - {f.name for f in dataclasses.fields(MelParams)}
  if unknown:
    raise ValueError(f"unknown mel parameter(s) {sorted(unknown)}; valid names are "
                     f"{[f.name for f in dataclasses.fields(MelParams)]}")
  return dataclasses.replace(MelParams(), **overrides)


def log_mel_from_waveform(wav_int16_scale: np.ndarray, **overrides) -> np.ndarray:
  """Natural-log mel of an int16-scale waveform (samples,): float32 (columns, N), columns = samples // hop.

  This is what a vocoder takes. Keyword overrides: the fields of MelParams.
  """
  params = mel_params(**overrides)
  wav = _check_waveform(wav_int16_scale, params)
  wav = librosa.util.normalize(wav / 32768.0) * params.peak
  wav = np.pad(wav, params.padding, mode="reflect")
  spectrum = librosa.stft(wav, n_fft=params.n_fft, hop_length=params.hop_length,
                          win_length=params.win_length, window="hann", center=False)
  magnitude = np.sqrt(spectrum.real**2 + spectrum.imag**2 + 1e-9)
  mel = _mel_filterbank(params) @ magnitude  # (N, columns)
  return np.log(np.maximum(mel, params.min_value)).T.astype(np.float32)


def mel_from_waveform(wav_int16_scale: np.ndarray, **overrides) -> np.ndarray:
  """The official front end: int16-scale waveform (samples,) -> float32 (columns, N) normalised mel.

  ln(min_value) maps to -1 and ln(max_value) to +1. Multiply by the dataset's audio_scale (e.g.
  AIST_AUDIO_SCALE) before the network. Keyword overrides: the fields of MelParams.
  """
  params = mel_params(**overrides)
  log_mel = log_mel_from_waveform(wav_int16_scale, **overrides)
  low, high = np.log(params.min_value), np.log(params.max_value)
  return ((log_mel - low) / (high - low) * 2.0 - 1.0).astype(np.float32)


def log_mel_from_mel(mel: np.ndarray, audio_scale: float = 1.0, **overrides) -> np.ndarray:
  """Inverse of the normalisation for listening: mel (..., N) (times audio_scale) -> natural-log mel.

  Divides by audio_scale, maps x -> x / 2 + 0.5 (always, unlike the official code's data-dependent
  check), clips to [0, 1] and maps back to [ln min_value, ln max_value]. float32, same shape.
  """
  params = mel_params(**overrides)
  if not np.isfinite(audio_scale) or audio_scale <= 0:
    raise ValueError(f"audio_scale must be a positive number (e.g. AIST_AUDIO_SCALE), got {audio_scale!r}")
  mel = np.asarray(mel, np.float64)
  if not np.all(np.isfinite(mel)):
    raise ValueError("mel contains NaN or infinite values; check the model output that produced it")
  unit = np.clip(mel / audio_scale / 2.0 + 0.5, 0.0, 1.0)
  low, high = np.log(params.min_value), np.log(params.max_value)
  return (low + unit * (high - low)).astype(np.float32)


def frames_from_mel(mel: np.ndarray, columns_per_frame: int = COLUMNS_PER_FRAME) -> np.ndarray:
  """(..., columns, N) -> (..., T, columns_per_frame, N), T = columns / columns_per_frame."""
  mel = np.asarray(mel)
  if mel.ndim < 2 or mel.shape[-2] % columns_per_frame:
    raise ValueError(f"mel must be (..., columns, N) with columns a multiple of {columns_per_frame} "
                     f"(one video frame each), got shape {mel.shape}; trim the waveform to whole frames")
  return mel.reshape(*mel.shape[:-2], mel.shape[-2] // columns_per_frame, columns_per_frame, mel.shape[-1])


def mel_from_frames(frames: np.ndarray) -> np.ndarray:
  """(..., T, F, N) -> (..., T * F, N): the per-video-frame layout back to mel columns."""
  frames = np.asarray(frames)
  if frames.ndim < 3:
    raise ValueError(f"frames must be (..., T, F, N), got shape {frames.shape}")
  return frames.reshape(*frames.shape[:-3], frames.shape[-3] * frames.shape[-2], frames.shape[-1])


def griffin_lim(log_mel: np.ndarray, n_iter: int = 32, seed: int = 0, **overrides) -> np.ndarray:
  """Vocodes a natural-log mel (columns, N) to a float32 waveform (columns * hop,) in [-1, 1].

  The mel is mapped back to an STFT magnitude by least squares against the front end's filterbank (its
  pseudo-inverse, negatives set to zero: as close as librosa's NNLS mel_to_stft, hundreds of times
  faster), then `n_iter` Griffin-Lim iterations (librosa, random initial phase from `seed`) with the
  front end's STFT; the reflect padding is cut off so that column c covers samples [c * hop, (c+1) * hop).
  The default vocoder when no HiFi-GAN weights are given. Keyword overrides: the fields of MelParams.
  """
  params = mel_params(**overrides)
  log_mel = np.asarray(log_mel, np.float64)
  if log_mel.ndim != 2 or log_mel.shape[1] != params.n_mels:
    raise ValueError(f"log_mel must be (columns, {params.n_mels}), got shape {log_mel.shape}; "
                     "vocode one clip at a time and use mel_from_frames for (T, F, N) inputs")
  if not np.all(np.isfinite(log_mel)):
    raise ValueError("log_mel contains NaN or infinite values")
  if n_iter < 1:
    raise ValueError(f"n_iter must be a positive number of Griffin-Lim iterations, got {n_iter}")
  magnitude = np.maximum(_mel_pseudo_inverse(params) @ np.exp(log_mel).T, 0.0)  # (n_fft // 2 + 1, columns)
  wav = librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=params.hop_length,
                           win_length=params.win_length, n_fft=params.n_fft, window="hann", center=False,
                           random_state=seed)
  wav = wav[params.padding:params.padding + len(log_mel) * params.hop_length]
  return np.clip(wav, -1.0, 1.0).astype(np.float32)  # phase errors can overshoot the front end's 0.95 peak


class GriffinLimStream:
  """Griffin-Lim over an endless stream of natural-log mel chunks (columns, N), with seamless joins.

  Each `push` runs n_iter iterations on its chunk together with the `context` columns before it: those keep the
  phase that the previous push gave them, held fixed where their samples are already out, and the chunk's own
  columns start from that phase advanced at each bin's frequency. The last `lookahead` columns' samples still
  depend on the columns to come, so each push returns the waveform (samples,) in [-1, 1] from the previous push's
  end up to `lookahead` columns before its own end; `flush` returns those last samples at the end of a stream.
  Concatenated, the pieces are the whole stream's waveform, column c covering samples [c hop, (c + 1) hop) as in
  `griffin_lim`, whose front-end STFT, momentum and pseudo-inverse magnitudes it uses.
  """

  def __init__(self, n_iter: int = 8, seed: int = 0, lookahead: int = 4, context: int = 8, **overrides):
    self.params = mel_params(**overrides)
    if n_iter < 1:
      raise ValueError(f"n_iter must be a positive number of Griffin-Lim iterations, got {n_iter}")
    # A sample depends on the columns whose windows (win_length around each column's centre) cover it.
    reach = -(-self.params.win_length // (2 * self.params.hop_length))
    if lookahead < reach or context < lookahead + reach:
      raise ValueError(f"lookahead={lookahead} and context={context} columns: a sample depends on the {reach} "
                       f"columns either side, so use lookahead >= {reach} and context >= lookahead + {reach}")
    self.n_iter, self.lookahead, self.context = n_iter, lookahead, context
    self._rng = np.random.default_rng(seed)
    self._magnitude = self._angles = None  # (bins, columns) of the last context + lookahead columns
    self._pending = np.zeros(0, np.float32)  # the samples of the last lookahead columns, as the last push made them

  def push(self, log_mel: np.ndarray) -> np.ndarray:
    """Vocodes the next chunk (columns, N); returns the samples that are final (see the class docstring)."""
    params = self.params
    log_mel = np.asarray(log_mel, np.float64)
    if log_mel.ndim != 2 or log_mel.shape[1] != params.n_mels or not np.all(np.isfinite(log_mel)):
      raise ValueError(f"log_mel must be finite (columns, {params.n_mels}), got shape {log_mel.shape}")
    magnitude = np.maximum(_mel_pseudo_inverse(params) @ np.exp(log_mel).T, 0.0)  # (bins, columns)
    bins, columns = magnitude.shape
    if self._angles is None:
      held, angles = 0, np.exp(2j * np.pi * self._rng.random((bins, columns)))
    else:
      held = self._angles.shape[1] - self.lookahead  # columns whose samples are out: their phase stays
      advance = 2 * np.pi * params.hop_length / params.n_fft * np.arange(bins)[:, None] * np.arange(1, columns + 1)
      angles = np.concatenate([self._angles, self._angles[:, -1:] * np.exp(1j * advance)], axis=1)
      magnitude = np.concatenate([self._magnitude, magnitude], axis=1)
    wav = self._iterate(magnitude, angles, held)
    keep = min(magnitude.shape[1], self.context + self.lookahead)
    self._magnitude, self._angles = magnitude[:, -keep:], angles[:, -keep:]
    hop = params.hop_length  # column c's samples start at padding + c hop of the padded waveform
    out = wav[params.padding + held * hop:params.padding + magnitude.shape[1] * hop]
    out, self._pending = np.split(out, [max(len(out) - self.lookahead * hop, 0)])
    return np.clip(out, -1.0, 1.0).astype(np.float32)

  def flush(self) -> np.ndarray:
    """The samples of the stream's last `lookahead` columns."""
    out, self._pending = self._pending, np.zeros(0, np.float32)
    return np.clip(out, -1.0, 1.0).astype(np.float32)

  def _iterate(self, magnitude: np.ndarray, angles: np.ndarray, held: int, momentum: float = 0.99) -> np.ndarray:
    """Fast Griffin-Lim (librosa's update with momentum) with the first `held` columns' phase fixed; the phase
    ends in `angles` (updated in place) and the waveform of its last step is returned (front-end padding kept)."""
    params = self.params
    stft_args = dict(n_fft=params.n_fft, hop_length=params.hop_length, win_length=params.win_length, window="hann",
                     center=False)
    fixed, rebuilt = angles[:, :held].copy(), 0.0
    for _ in range(self.n_iter):
      previous = rebuilt
      rebuilt = librosa.stft(librosa.istft(magnitude * angles, **stft_args), **stft_args)
      angles[:] = rebuilt - (momentum / (1 + momentum)) * previous
      angles /= np.abs(angles) + 1e-16
      angles[:, :held] = fixed
    return librosa.istft(magnitude * angles, **stft_args)


@functools.lru_cache(maxsize=8)
def _mel_filterbank(params: MelParams) -> np.ndarray:
  """librosa's slaney mel filterbank (N, n_fft // 2 + 1)."""
  return librosa.filters.mel(sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels,
                             fmin=params.fmin, fmax=params.fmax)


@functools.lru_cache(maxsize=8)
def _mel_pseudo_inverse(params: MelParams) -> np.ndarray:
  """Moore-Penrose pseudo-inverse of the mel filterbank (n_fft // 2 + 1, N), float64."""
  return np.linalg.pinv(_mel_filterbank(params).astype(np.float64))


def _check_waveform(wav: np.ndarray, params: MelParams) -> np.ndarray:
  """The waveform as float64 (samples,), checked to be 1-D, finite and long enough to reflect-pad."""
  wav = np.asarray(wav)
  if wav.ndim != 1 or not (np.issubdtype(wav.dtype, np.floating) or np.issubdtype(wav.dtype, np.integer)):
    raise ValueError(f"wav_int16_scale must be a 1-D numeric waveform (samples,), got {wav.dtype} {wav.shape}; "
                     "take one channel and vocode clips one at a time")
  if len(wav) <= params.padding:
    raise ValueError(f"wav_int16_scale has {len(wav)} samples; the front end needs more than "
                     f"{params.padding} to reflect-pad (one video frame is {COLUMNS_PER_FRAME * params.hop_length})")
  if not np.all(np.isfinite(wav)):
    raise ValueError("wav_int16_scale contains NaN or infinite samples")
  return wav.astype(np.float64)
