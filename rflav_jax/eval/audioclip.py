"""AudioCLIP's audio branch (ESResNeXt-fbsp, Guzhov et al. 2021) as MM-Diffusion computes FAD embeddings with it.

MM-Diffusion's evaluator reads each clip's audio at 44.1 kHz (the first channel, 1.6 s = 70560 samples, zero-padded
when shorter) as floats in [-1, 1] and passes them to AudioCLIP unchanged. The network itself maps its input from
the int16 range to [-1, 1], x -> (x + 32768) * 2 / 65535 - 1, so waveforms in [-1, 1] reach its spectrogram as
(2x + 1) / 65535: 1/32767.5 of their amplitude on a constant offset of 1/65535. In float32 the sum x + 32768 also
rounds every sample to a multiple of 2^-9 (x < 0) or 2^-8 (x >= 0), so that samples below about 0.001 in magnitude
vanish. `embed` reproduces all of this, rounding included (`from_int16_range`); AudioCLIP's own training fed
x * 32768. Frames of silence therefore reach the spectrogram as the constant 1/65535, whose spectrum away from 0 Hz
is float32 rounding noise of the filter products and so differs between implementations (torch's CPU and GPU
included); the parity tests use clips with sound in every frame.

The network, channels-last:
  frames      the scaled waveform cut into frames of 1654 samples every 561 (zero-padded evenly at both ends to
              whole frames), each multiplied by a Blackman-Harris window and zero-padded to 2048 samples;
  FBSP        a learned Fourier basis (1025 complex filters of 2048 taps from per-filter centre frequency `fc`,
              bandwidth `fb` and window power `m`) in place of a DFT: a complex spectrogram (frames, 1025);
  bands       bins 0-340, 341-681 and 682-1022 become the 3 input channels of the picture (341, frames, 3), in dB
              (10 log10 of the power, powers of 0 taken as 1e-18);
  trunk       ResNeXt-50 32x4d whose four stages and global average pool are each multiplied by an attention map
              (sigmoid of a depthwise-pointwise convolution of the stage's max-pooled input);
  head        a linear layer to the 1024-d embedding: AudioCLIP's `encode_audio`, before any normalisation. FAD is
              computed on these unnormalised embeddings.
Module and parameter names follow the reference state dict ("layer2.0.conv2.weight" is
params["layer2_0"]["conv2"]["kernel"]); `audioclip_weights` loads the published weights onto them.
"""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

SAMPLE_RATE = 44100
CLIP_SECONDS = 1.6
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)  # 70560, as MM-Diffusion's evaluator sizes it
EMBED_DIM = 1024
N_FFT = 2048
HOP_LENGTH = 561
WIN_LENGTH = 1654
NUM_BINS = N_FFT // 2 + 1  # 1025 FBSP filters
BANDS = 3  # input channels of the trunk
LOG10_EPS = 1e-18
FBSP_EPS = 1e-8
STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (planes, blocks) of ResNeXt-50
GROUPS, WIDTH_PER_GROUP, EXPANSION = 32, 4, 4
# Depthwise kernel and padding of the attention after each stage and after the pool.
ATTENTION_KERNELS = {"att1": ((3, 1), (1, 0)), "att2": ((1, 5), (0, 2)), "att3": ((3, 1), (1, 0)),
                     "att4": ((1, 5), (0, 2)), "att5": ((3, 5), (1, 2))}
_HIGHEST = jax.lax.Precision.HIGHEST


def _minus_one(c: jnp.ndarray) -> jnp.ndarray:
  """c - 1, exactly, for float32 c in [0.5, 2): c's distance from 1 in float32 steps (2^-23 above 1, 2^-24 below),
  read from its bits. Written out so that no compiler fuses the product that made c with this subtraction into one
  rounding (an FMA), which would keep digits that the reference's float32 c has lost."""
  steps = jax.lax.bitcast_convert_type(c, jnp.int32) - np.int32(0x3F800000)
  exact = steps.astype(jnp.float32) * jnp.where(c >= 1.0, np.float32(2.0 ** -23), np.float32(2.0 ** -24))
  return jnp.where((c >= 0.5) & (c < 2.0), exact, c - 1.0)


def from_int16_range(x: jnp.ndarray, rounding: str = "cuda") -> jnp.ndarray:
  """The network's input scaling, [-32768, 32767] -> [-1, 1]: (x + 32768) * 2 / 65535 - 1, rounded as torch rounds
  it in float32. Every sum x + 32768 rounds to float32; then torch on a GPU ("cuda", as MM-Diffusion's evaluation
  ran) multiplies by the float32 reciprocal of 65535, and on the CPU ("cpu") divides. Inputs in [-1, 1] come out
  in float32's steps near 1 (6e-8 below, 1.2e-7 above) against a signal of 3e-5 x, so the two roundings give
  spectra that differ by up to several dB where the sound is faint.
  """
  doubled = (x.astype(jnp.float32) + 32768.0) * 2.0
  if rounding == "cuda":
    c = doubled * np.float32(1 / 65535)
  elif rounding == "cpu":  # a divisor the compiler cannot see as a constant, so it divides instead of multiplying
    c = doubled / (65535.0 + 0.0 * doubled)
  else:
    raise ValueError(f"rounding must be 'cuda' or 'cpu', got {rounding!r}")
  return _minus_one(c)


def frame_count(samples: int) -> int:
  """Number of frames of a waveform of `samples` samples."""
  return 1 if samples <= WIN_LENGTH else 1 + math.ceil((samples - WIN_LENGTH) / HOP_LENGTH)


def windowed_frames(x: jnp.ndarray, window: jnp.ndarray) -> jnp.ndarray:
  """(B, samples) -> (B, frames, N_FFT): windowed frames, zero-padded to N_FFT taps (half of the rest first)."""
  frames = frame_count(x.shape[-1])
  pad = (frames - 1) * HOP_LENGTH + WIN_LENGTH - x.shape[-1]
  x = jnp.pad(x, [(0, 0), (pad // 2, pad - pad // 2)])
  index = np.arange(frames)[:, None] * HOP_LENGTH + np.arange(WIN_LENGTH)[None]
  taps = N_FFT - WIN_LENGTH
  return jnp.pad(x[:, index] * window, [(0, 0), (0, 0), (taps // 2, taps - taps // 2)])


def _complex_power(base: jnp.ndarray, exponent: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(real, imaginary) parts of base ** exponent for real base and exponent, written as the reference's LinearFBSP
  writes it for complex numbers (a negative base has phase pi)."""
  magnitude = (base ** 2 + 0.0 ** 2) ** 0.5
  phase = jnp.arctan2(jnp.zeros_like(base), base)
  scale = (magnitude ** 2) ** (0.5 * exponent) * jnp.exp(-0.0 * phase)
  angle = exponent * phase + 0.5 * 0.0 * jnp.log(magnitude ** 2)
  return scale * jnp.cos(angle), scale * jnp.sin(angle)


def fbsp_filters(m: jnp.ndarray, fb: jnp.ndarray, fc: jnp.ndarray, taps: int = N_FFT) -> jnp.ndarray:
  """The FBSP layer's (NUM_BINS, taps, 2) complex filters, divided by sqrt(taps) as AudioCLIP's normalised layer.

  Filter k over t = pi * linspace(-1, 1, taps): sqrt(fb_k) * sinc(fb_k t / m_k) ** m_k * exp(-i fc_k t).
  """
  t = (np.pi * np.linspace(-1.0, 1.0, taps).astype(np.float32) + np.float32(FBSP_EPS))[None, :]
  m, fb, fc = m[:, None], fb[:, None], fc[:, None]
  kernel_re, kernel_im = jnp.cos(fc * t), -jnp.sin(fc * t)
  y = fb * t / (m + FBSP_EPS)
  window = jnp.where(y == 0, 1.0, jnp.sin(y) / y)
  window_re, window_im = _complex_power(window, m)
  scale = jnp.sqrt(fb)
  filters = jnp.stack([scale * (window_re * kernel_re - window_im * kernel_im),
                       scale * (window_re * kernel_im + window_im * kernel_re)], axis=-1)
  return filters / np.float32(taps ** 0.5)


class FBSPSpectrogram(nn.Module):
  """Waveforms (B, samples) in the int16 range -> dB spectrogram pictures (B, 341, frames, 3), bands on channels.

  `rounding` is `from_int16_range`'s.
  """
  rounding: str = "cuda"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    window = self.param("window", lambda _: jnp.asarray(
        scipy.signal.get_window("blackmanharris", WIN_LENGTH, fftbins=True), jnp.float32))
    m = self.param("m", nn.initializers.zeros, (NUM_BINS,))
    fb = self.param("fb", nn.initializers.ones, (NUM_BINS,))
    fc = self.param("fc", lambda _, shape: jnp.arange(shape[0], dtype=jnp.float32), (NUM_BINS,))
    frames = windowed_frames(from_int16_range(x, self.rounding), window)
    filters = fbsp_filters(m, fb, fc)
    real = jnp.einsum("bft,kt->bfk", frames, filters[..., 0], precision=_HIGHEST)
    imag = jnp.einsum("bft,kt->bfk", frames, filters[..., 1], precision=_HIGHEST)
    per_band = NUM_BINS // BANDS
    power = (real ** 2 + imag ** 2)[..., :BANDS * per_band]
    power = jnp.where(power > 0.0, power, LOG10_EPS)
    power = power.reshape(*power.shape[:2], BANDS, per_band).transpose(0, 3, 1, 2)  # (B, bin, frame, band)
    return jnp.log10(power) * 10.0


def adaptive_max_pool(x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
  """torch's adaptive_max_pool2d, channels-last: (B, H, W, C) -> (B, h, w, C), output i along an axis of n inputs
  taking the max over inputs floor(i n / out) to ceil((i + 1) n / out) - 1."""
  for axis, out in zip((1, 2), size):
    n = x.shape[axis]
    start = np.arange(out) * n // out
    stop = -(-(np.arange(out) + 1) * n // out)
    index = np.minimum(start[:, None] + np.arange((stop - start).max())[None], stop[:, None] - 1)
    x = jnp.take(x, index.reshape(-1), axis=axis)
    x = x.reshape(*x.shape[:axis], out, -1, *x.shape[axis + 1:]).max(axis=axis + 1)
  return x


def _conv(features: int, kernel: tuple[int, int], strides: int = 1, padding: tuple[int, int] = (0, 0),
          groups: int = 1, bias: bool = False, name: str | None = None) -> nn.Conv:
  return nn.Conv(features, kernel, strides, padding=[(p, p) for p in padding], feature_group_count=groups,
                 use_bias=bias, precision=_HIGHEST, name=name)


def _batch_norm(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)


class Attention2d(nn.Module):
  """Attention map (B, h, w, out) in (0, 1) from a stage's input (B, H, W, C), max-pooled to the stage's output."""
  features: int
  kernel: tuple[int, int]
  padding: tuple[int, int]

  @nn.compact
  def __call__(self, x: jnp.ndarray, size: tuple[int, int]) -> jnp.ndarray:
    x = adaptive_max_pool(x, size)
    x = _conv(x.shape[-1], self.kernel, padding=self.padding, groups=x.shape[-1], bias=True, name="conv_depth")(x)
    x = _conv(self.features, (1, 1), bias=True, name="conv_point")(x)
    return nn.sigmoid(_batch_norm("bn")(x))


class Bottleneck(nn.Module):
  """ResNeXt bottleneck (torchvision's, stride on the grouped 3x3): (B, H, W, C) -> (B, H / s, W / s, 4 planes)."""
  planes: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    width = self.planes * WIDTH_PER_GROUP // 64 * GROUPS
    out = nn.relu(_batch_norm("bn1")(_conv(width, (1, 1), name="conv1")(x)))
    out = _conv(width, (3, 3), self.strides, (1, 1), GROUPS, name="conv2")(out)
    out = nn.relu(_batch_norm("bn2")(out))
    out = _batch_norm("bn3")(_conv(self.planes * EXPANSION, (1, 1), name="conv3")(out))
    if self.strides != 1 or x.shape[-1] != self.planes * EXPANSION:
      x = _batch_norm("downsample_1")(_conv(self.planes * EXPANSION, (1, 1), self.strides, name="downsample_0")(x))
    return nn.relu(out + x)


class ESResNeXtFBSP(nn.Module):
  """AudioCLIP's audio network: waveforms (B, samples) in the int16 range -> embeddings (B, 1024).

  Evaluation only: BatchNorm uses its running statistics. Waveforms of any length work; FAD feeds 70560 samples
  (see `embed`). `rounding` is `from_int16_range`'s: "cuda" as MM-Diffusion's evaluation ran, "cpu" as torch
  computes on the CPU.
  """
  embed_dim: int = EMBED_DIM
  rounding: str = "cuda"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = FBSPSpectrogram(self.rounding, name="fbsp")(x)
    x = nn.relu(_batch_norm("bn1")(_conv(64, (7, 7), 2, (3, 3), name="conv1")(x)))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage, (planes, blocks) in enumerate(STAGES, start=1):
      stage_input = x
      for block in range(blocks):
        x = Bottleneck(planes, 2 if stage > 1 and block == 0 else 1, name=f"layer{stage}_{block}")(x)
      kernel, padding = ATTENTION_KERNELS[f"att{stage}"]
      x = x * Attention2d(x.shape[-1], kernel, padding, name=f"att{stage}")(stage_input, x.shape[1:3])
    kernel, padding = ATTENTION_KERNELS["att5"]
    channels = x.shape[-1]
    pooled = x.mean(axis=(1, 2), keepdims=True)
    x = (pooled * Attention2d(channels, kernel, padding, name="att5")(x, (1, 1))).reshape(x.shape[0], channels)
    return nn.Dense(self.embed_dim, precision=_HIGHEST, name="fc")(x)


def fit_clip(waveforms: jnp.ndarray, samples: int = CLIP_SAMPLES) -> jnp.ndarray:
  """The first `samples` samples of each waveform (B, n), zero-padded at the end when shorter."""
  n = waveforms.shape[-1]
  return waveforms[:, :samples] if n >= samples else jnp.pad(waveforms, [(0, 0), (0, samples - n)])


@functools.partial(jax.jit, static_argnames=("samples", "rounding"))
def embed(variables: dict, waveforms: jnp.ndarray, samples: int = CLIP_SAMPLES, rounding: str = "cuda") -> jnp.ndarray:
  """FAD embeddings (B, 1024) float32 of 44.1 kHz mono waveforms (B, n) in [-1, 1], as MM-Diffusion computes them.

  Each waveform is cut or zero-padded to `samples` (1.6 s) and passed on in [-1, 1], unscaled, as MM-Diffusion
  passes it (see the module docstring). `variables` come from `audioclip_weights`; `rounding` is
  `from_int16_range`'s.
  """
  if waveforms.ndim != 2:
    raise ValueError(f"expected mono waveforms of shape (B, samples) at {SAMPLE_RATE} Hz, got shape {waveforms.shape}")
  return ESResNeXtFBSP(rounding=rounding).apply(variables, fit_clip(waveforms.astype(jnp.float32), samples))
