"""HiFi-GAN generator (V1/V2/V3 style) in Flax: log-mel (B, frames, N) -> waveform (B, samples).

The network is conv_pre (kernel 7) -> per stage [leaky ReLU 0.1 -> transposed-conv upsampler -> mean of
residual blocks with different kernel sizes] -> leaky ReLU 0.01 -> conv_post (kernel 7) -> tanh, as in the
official HiFi-GAN generator. Layouts are channels-last (B, time, channels).

Streaming: the generator is a stack of convolutions without normalisation, so each output sample depends
only on mel frames within `receptive_radius_frames(config)` of it. `vocode_stream` therefore vocodes an
unbounded mel stream in fixed-size windows of `chunk + 2 * context` frames and keeps only the middle
`chunk` frames' samples; with context >= that radius every kept sample equals whole-stream vocoding (up to
float re-association), including at the stream's two ends, where the windows are shifted to start or stop
exactly at the ends. There is no cross-fade and nothing to hear at the joins.
"""
import dataclasses
import functools
import math
from typing import Any, Iterable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Keys of the official config.json that describe training or the mel front end, not the generator.
TRAINING_KEYS = frozenset({
    "num_gpus", "batch_size", "learning_rate", "adam_b1", "adam_b2", "lr_decay", "seed", "segment_size",
    "num_freq", "n_fft", "hop_size", "win_size", "sampling_rate", "fmin", "fmax", "fmax_for_loss",
    "num_workers", "dist_config", "fine_tuning", "checkpoint_interval", "summary_interval",
    "validation_interval", "training_epochs", "stdout_interval", "discriminator_periods",
})
# Keys that define the generator. Any key outside these and TRAINING_KEYS is rejected: it may select a
# variant this module does not implement (e.g. BigVGAN's "activation").
_ARCHITECTURE_KEYS = ("num_mels", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
                      "resblock", "resblock_kernel_sizes", "resblock_dilation_sizes")
LEAKY_SLOPE = 0.1  # inside the stages
FINAL_LEAKY_SLOPE = 0.01  # before conv_post (torch's default negative slope in the official code)


@dataclasses.dataclass(frozen=True)
class HifiGanConfig:
  """Generator architecture, as in the official config.json.

  resblock "1" uses (convs1 dilated, convs2 undilated) pairs per dilation; "2" uses one dilated conv each.
  """
  num_mels: int
  upsample_rates: tuple[int, ...]
  upsample_kernel_sizes: tuple[int, ...]
  upsample_initial_channel: int
  resblock: str
  resblock_kernel_sizes: tuple[int, ...]
  resblock_dilation_sizes: tuple[tuple[int, ...], ...]

  @classmethod
  def from_dict(cls, config: Mapping[str, Any]) -> "HifiGanConfig":
    """Reads the official vocoder config.json dict; training-only keys are ignored."""
    unknown = sorted(set(config) - TRAINING_KEYS - set(_ARCHITECTURE_KEYS))
    if unknown:
      raise ValueError(
          f"vocoder config has keys {unknown} that this HiFi-GAN generator does not know; they may select "
          f"another architecture (e.g. BigVGAN). Supported generator keys: {list(_ARCHITECTURE_KEYS)}; "
          "training keys such as segment_size are ignored. Remove the keys if they do not change the generator.")
    missing = [k for k in _ARCHITECTURE_KEYS if k not in config]
    if missing:
      raise ValueError(f"vocoder config lacks the generator keys {missing}; pass the config.json that came "
                       "with the checkpoint.")
    result = cls(
        num_mels=int(config["num_mels"]),
        upsample_rates=tuple(int(u) for u in config["upsample_rates"]),
        upsample_kernel_sizes=tuple(int(k) for k in config["upsample_kernel_sizes"]),
        upsample_initial_channel=int(config["upsample_initial_channel"]),
        resblock=str(config["resblock"]),
        resblock_kernel_sizes=tuple(int(k) for k in config["resblock_kernel_sizes"]),
        resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in config["resblock_dilation_sizes"]))
    result.validate()
    return result

  def validate(self):
    """Raises ValueError on inconsistent settings."""
    if self.resblock not in ("1", "2"):
      raise ValueError(f"vocoder config resblock={self.resblock!r}; expected '1' or '2'.")
    if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
      raise ValueError(f"vocoder config: upsample_rates {self.upsample_rates} and upsample_kernel_sizes "
                       f"{self.upsample_kernel_sizes} must have the same length.")
    if any(k < u for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes)):
      raise ValueError(f"vocoder config: each upsample kernel size {self.upsample_kernel_sizes} must be at "
                       f"least its rate {self.upsample_rates}.")
    if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
      raise ValueError(f"vocoder config: resblock_kernel_sizes {self.resblock_kernel_sizes} and "
                       f"resblock_dilation_sizes {self.resblock_dilation_sizes} must have the same length.")
    if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
      raise ValueError(f"vocoder config: upsample_initial_channel {self.upsample_initial_channel} must be "
                       f"divisible by 2 ** {len(self.upsample_rates)} (it halves at each upsampler).")

  @property
  def hop_length(self) -> int:
    """Waveform samples per mel frame."""
    return math.prod(self.upsample_rates)


def upsample_padding(kernel: int, rate: int) -> tuple[int, int]:
  """(padding, output_padding) of the official ConvTranspose1d so that it outputs exactly rate x input.

  padding (k - u + 1) // 2 and output padding (k - u) % 2: equal to (k - u) // 2 when k - u is even, and
  one more on the left, one extra sample on the right when it is odd.
  """
  return (kernel - rate + 1) // 2, (kernel - rate) % 2


class UpsampleConv(nn.Module):
  """PyTorch ConvTranspose1d(stride=rate, padding p, output_padding q) on (B, L, C) -> (B, rate L, features).

  A transposed convolution is a correlation of the zero-stuffed input (lhs_dilation = rate) with the
  spatially flipped kernel, padded by k - 1 - p on the left and k - 1 - p + q on the right. `kernel`
  (k, in, out) holds the already-flipped taps (the converter flips the official (in, out, k) weight).
  """
  features: int
  kernel_size: int
  rate: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    padding, output_padding = upsample_padding(self.kernel_size, self.rate)
    edge = self.kernel_size - 1 - padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(1,),
        padding=[(edge, edge + output_padding)], lhs_dilation=(self.rate,),
        dimension_numbers=("NWC", "WIO", "NWC"))
    return y + bias.astype(self.dtype)


def _conv(features: int, kernel: int, dilation: int, name: str, dtype) -> nn.Conv:
  """'Same' 1-D convolution (odd kernel) with the official padding dilation * (kernel - 1) // 2."""
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(features, (kernel,), kernel_dilation=(dilation,), padding=[(pad, pad)], name=name,
                 dtype=dtype)


class ResBlock(nn.Module):
  """ResBlock1 (pairs of dilated + plain convs) or ResBlock2 (single dilated convs), residual each."""
  kernel_size: int
  dilations: tuple[int, ...]
  kind: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    for i, dilation in enumerate(self.dilations):
      if self.kind == "1":
        h = _conv(channels, self.kernel_size, dilation, f"convs1_{i}", self.dtype)(
            nn.leaky_relu(x, LEAKY_SLOPE))
        h = _conv(channels, self.kernel_size, 1, f"convs2_{i}", self.dtype)(nn.leaky_relu(h, LEAKY_SLOPE))
      else:
        h = _conv(channels, self.kernel_size, dilation, f"convs_{i}", self.dtype)(
            nn.leaky_relu(x, LEAKY_SLOPE))
      x = x + h
    return x


class HifiGanGenerator(nn.Module):
  """log-mel (B, frames, num_mels) -> waveform (B, frames * hop_length) in [-1, 1]."""
  config: HifiGanConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, log_mel):
    cfg = self.config
    if log_mel.ndim != 3 or log_mel.shape[-1] != cfg.num_mels:
      raise ValueError(f"log_mel has shape {log_mel.shape}; expected (batch, frames, {cfg.num_mels}) "
                       "channels-last (transpose an official (batch, mels, frames) array).")
    x = _conv(cfg.upsample_initial_channel, 7, 1, "conv_pre", self.dtype)(log_mel)
    num_kernels = len(cfg.resblock_kernel_sizes)
    for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
      channels = cfg.upsample_initial_channel // 2 ** (i + 1)
      x = UpsampleConv(channels, kernel, rate, self.dtype, name=f"ups_{i}")(nn.leaky_relu(x, LEAKY_SLOPE))
      x = sum(ResBlock(k, d, cfg.resblock, self.dtype, name=f"resblocks_{i * num_kernels + j}")(x)
              for j, (k, d) in enumerate(zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)))
      x = x / num_kernels
    x = _conv(1, 7, 1, "conv_post", self.dtype)(nn.leaky_relu(x, FINAL_LEAKY_SLOPE))
    return jnp.tanh(x[..., 0].astype(jnp.float32))


def receptive_radius_frames(config: HifiGanConfig) -> int:
  """Mel frames of context on each side that make windowed vocoding equal whole-stream vocoding.

  Adds up each layer's reach to the left and to the right, converted from its sample rate to mel frames
  (sample i at rate r sits at time i / r frames). The right side needs one frame more, because the samples
  of a frame span the whole frame after its start.
  """
  def conv_reach(kernel, dilation):
    return dilation * (kernel - 1) // 2

  left = right = conv_reach(7, 1)  # conv_pre, at the frame rate
  rate = 1
  for u, k in zip(config.upsample_rates, config.upsample_kernel_sizes):
    padding, _ = upsample_padding(k, u)
    left += (k - 1 - padding) / (u * rate)  # output i mixes inputs (i - (k - 1 - p)) / u .. (i + p) / u
    right += padding / (u * rate)
    rate *= u
    block = max(sum(conv_reach(ks, d) + (conv_reach(ks, 1) if config.resblock == "1" else 0) for d in ds)
                for ks, ds in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes))
    left += block / rate
    right += block / rate
  left += conv_reach(7, 1) / rate  # conv_post
  right += conv_reach(7, 1) / rate
  return math.ceil(max(left, right + 1))


@functools.partial(jax.jit, static_argnums=0)
def _generate(model: HifiGanGenerator, params, log_mel):
  return model.apply({"params": params}, log_mel)


def vocode_stream(model: HifiGanGenerator, params, mel_chunks: Iterable[np.ndarray], chunk_frames: int = 64,
                  context_frames: int | None = None) -> Iterator[np.ndarray]:
  """Vocodes a mel stream that arrives in pieces of any length, yielding waveform pieces as they are ready.

  Args:
    model, params: the generator and its params.
    mel_chunks: iterable of log-mel arrays (B, n_i, num_mels); n_i may vary and be 0.
    chunk_frames: mel frames vocoded per call (C); each call sees C + 2 * context frames.
    context_frames: frames of context on each side; default `receptive_radius_frames(model.config)`,
      which makes the output equal whole-stream vocoding.
  Yields:
    float32 waveform pieces (B, m * hop_length); concatenated they cover every input frame once.
  The generator is jitted once for the window shape (C + 2 * context); a stream shorter than one window is
  vocoded whole in a single call at its own shape.
  """
  context = receptive_radius_frames(model.config) if context_frames is None else context_frames
  if chunk_frames < 1 or context < 0:
    raise ValueError(f"chunk_frames={chunk_frames} must be >= 1 and context_frames={context} >= 0.")
  window = chunk_frames + 2 * context
  hop = model.config.hop_length
  def vocode(mel, start, emit_from, emit_to):
    """Vocodes `mel` (frames from absolute index `start`) and keeps the samples of [emit_from, emit_to)."""
    wav = np.asarray(_generate(model, params, jnp.asarray(mel)))
    return wav[:, (emit_from - start) * hop:(emit_to - start) * hop]

  buffer, offset = None, 0  # buffered mel frames and the absolute index of the first one
  emitted = 0  # frames vocoded so far; the next piece starts there
  for piece in mel_chunks:
    piece = np.asarray(piece, np.float32)
    buffer = piece if buffer is None else np.concatenate([buffer, piece], axis=1)
    # Emit [emitted, emitted + C) once a full window with `context` frames after it has arrived.
    while offset + buffer.shape[1] >= max(emitted - context, 0) + window:
      start = max(emitted - context, 0)
      yield vocode(buffer[:, start - offset:start - offset + window], start, emitted, emitted + chunk_frames)
      emitted += chunk_frames
      keep_from = max(emitted - window + 1, 0)  # the earliest frame the final window can need
      buffer, offset = buffer[:, keep_from - offset:], keep_from
  if buffer is None:
    return
  total = offset + buffer.shape[1]
  if emitted < total:  # the last window ends exactly at the stream's end, as whole-stream vocoding does
    start = max(total - window, 0)
    yield vocode(buffer[:, start - offset:], start, emitted, total)


def vocode_chunked(model: HifiGanGenerator, params, log_mel, chunk_frames: int = 64,
                   context_frames: int | None = None) -> np.ndarray:
  """Vocodes a whole (B, frames, num_mels) log-mel in chunks with bounded memory -> (B, frames * hop)."""
  log_mel = np.asarray(log_mel, np.float32)
  pieces = (log_mel[:, i:i + chunk_frames] for i in range(0, log_mel.shape[1], chunk_frames))
  return np.concatenate(list(vocode_stream(model, params, pieces, chunk_frames, context_frames)), axis=1)
