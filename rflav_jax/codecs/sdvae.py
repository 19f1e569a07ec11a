"""Stable Diffusion VAE (diffusers AutoencoderKL) in Flax, channels-last, and a frame-stream codec around it.

`AutoencoderKL.encode(image (B, H, W, in_channels) in [-1, 1]) -> (mean, logvar)` each (B, H/f, W/f, latent),
`AutoencoderKL.decode(latent) -> image`, with f = 2 ** (len(block_out_channels) - 1) (8 for SD).
Submodule names follow the diffusers parameter names (`down_blocks_0/resnets_1/conv1` for
`down_blocks.0.resnets.1.conv1`), which keeps the converter a renaming.

The flow model works on latents multiplied by `LATENT_SCALE`; `to_model_latents` / `from_model_latents` are
the only places that apply it. `SdVaeCodec` encodes and decodes frame streams of any length in fixed-size
chunks (one compilation, bounded memory).
"""
import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rflav_jax.codecs.pixel import to_signed_unit

LATENT_SCALE = 0.18215  # Stable Diffusion's latent scaling; R-FLAV models see latent * LATENT_SCALE.
GROUP_NORM_EPS = 1e-6
LOGVAR_RANGE = (-30.0, 20.0)

# diffusers config.json keys that do not change the weights or the computation.
NON_ARCHITECTURAL_KEYS = frozenset({
    "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "sample_size",
    "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast",
})
# Architecture keys with a single supported value.
_FIXED_CHOICES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D", "act_fn": "silu"}


@dataclasses.dataclass(frozen=True)
class VaeConfig:
  """AutoencoderKL architecture (the diffusers constructor arguments that matter, with their defaults)."""
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  norm_num_groups: int = 32
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  @classmethod
  def from_diffusers(cls, config: Mapping[str, Any]) -> "VaeConfig":
    """Reads a diffusers AutoencoderKL config.json dict, rejecting settings this port does not implement."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields - set(_FIXED_CHOICES) - NON_ARCHITECTURAL_KEYS)
    if unknown:
      raise ValueError(f"SD-VAE config has unknown keys {unknown}. Known architecture keys: "
                       f"{sorted(fields | set(_FIXED_CHOICES))}; pass a diffusers AutoencoderKL config.json.")
    kwargs = {k: v for k, v in config.items() if k in fields}
    if "block_out_channels" in kwargs:
      kwargs["block_out_channels"] = tuple(int(c) for c in kwargs["block_out_channels"])
    result = cls(**kwargs)
    num_blocks = len(result.block_out_channels)
    for key, choice in _FIXED_CHOICES.items():
      expected = [choice] * num_blocks if key.endswith("_types") else choice
      given = list(config[key]) if key in config and key.endswith("_types") else config.get(key, expected)
      if given != expected:
        raise ValueError(f"SD-VAE config {key}={config[key]!r} is not supported; this port implements "
                         f"{expected!r} (one per entry of block_out_channels).")
    bad = [c for c in result.block_out_channels if c % result.norm_num_groups]
    if bad:
      raise ValueError(f"SD-VAE config: block_out_channels {bad} are not divisible by norm_num_groups "
                       f"{result.norm_num_groups}.")
    return result

  @property
  def downsample_factor(self) -> int:
    """Pixels per latent position along each spatial axis."""
    return 2 ** (len(self.block_out_channels) - 1)


def _group_norm(groups: int, name: str, dtype) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=groups, epsilon=GROUP_NORM_EPS, use_fast_variance=False, name=name, dtype=dtype)


def _conv3x3(features: int, name: str, dtype) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), name=name, dtype=dtype)


class ResnetBlock(nn.Module):
  """GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> conv, plus the input (1x1 conv when widths differ)."""
  features: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = _conv3x3(self.features, "conv1", self.dtype)(nn.silu(_group_norm(self.groups, "norm1", self.dtype)(x)))
    h = _conv3x3(self.features, "conv2", self.dtype)(nn.silu(_group_norm(self.groups, "norm2", self.dtype)(h)))
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), name="conv_shortcut", dtype=self.dtype)(x)
    return x + h


class SpatialSelfAttention(nn.Module):
  """Single-head self-attention over the H*W positions of a (B, H, W, C) map, with a residual."""
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    tokens = _group_norm(self.groups, "group_norm", self.dtype)(x).reshape(b, h * w, c)
    # One head: (B, N, 1, C) through jax.nn.dot_product_attention (fused on GPUs, float32 softmax).
    q, k, v = (nn.Dense(c, name=name, dtype=self.dtype)(tokens)[:, :, None] for name in ("to_q", "to_k", "to_v"))
    out = nn.Dense(c, name="to_out_0", dtype=self.dtype)(jax.nn.dot_product_attention(q, k, v)[:, :, 0])
    return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
  """resnet -> [attention] -> resnet at the lowest resolution."""
  groups: int
  add_attention: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResnetBlock(x.shape[-1], self.groups, self.dtype, name="resnets_0")(x)
    if self.add_attention:
      x = SpatialSelfAttention(self.groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(x.shape[-1], self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
  """Pad one row/column at the bottom/right, then a 3x3 stride-2 conv (diffusers' padding=0 downsampler)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding="VALID", name="conv", dtype=self.dtype)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv3x3(x.shape[-1], "conv", self.dtype)(x)


class ResolutionBlock(nn.Module):
  """`num_layers` resnets at one resolution, then an optional resampler (diffusers Down/UpDecoderBlock2D)."""
  features: int
  num_layers: int
  groups: int
  resample: str | None  # "down", "up" or None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_layers):
      x = ResnetBlock(self.features, self.groups, self.dtype, name=f"resnets_{j}")(x)
    if self.resample == "down":
      x = Downsample(self.dtype, name="downsamplers_0")(x)
    elif self.resample == "up":
      x = Upsample(self.dtype, name="upsamplers_0")(x)
    return x


class Encoder(nn.Module):
  """image (B, H, W, in_channels) -> moments (B, H/f, W/f, 2 * latent_channels)."""
  config: VaeConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg, groups = self.config, self.config.norm_num_groups
    x = _conv3x3(cfg.block_out_channels[0], "conv_in", self.dtype)(x)
    for i, features in enumerate(cfg.block_out_channels):
      last = i == len(cfg.block_out_channels) - 1
      x = ResolutionBlock(features, cfg.layers_per_block, groups, None if last else "down", self.dtype,
                          name=f"down_blocks_{i}")(x)
    x = MidBlock(groups, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
    x = nn.silu(_group_norm(groups, "conv_norm_out", self.dtype)(x))
    return _conv3x3(2 * cfg.latent_channels, "conv_out", self.dtype)(x)


class Decoder(nn.Module):
  """latent (B, h, w, latent_channels) -> image (B, h f, w f, out_channels)."""
  config: VaeConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    cfg, groups = self.config, self.config.norm_num_groups
    widths = cfg.block_out_channels[::-1]
    x = _conv3x3(widths[0], "conv_in", self.dtype)(z)
    x = MidBlock(groups, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
    for i, features in enumerate(widths):
      last = i == len(widths) - 1
      x = ResolutionBlock(features, cfg.layers_per_block + 1, groups, None if last else "up", self.dtype,
                          name=f"up_blocks_{i}")(x)
    x = nn.silu(_group_norm(groups, "conv_norm_out", self.dtype)(x))
    return _conv3x3(cfg.out_channels, "conv_out", self.dtype)(x)


class AutoencoderKL(nn.Module):
  """The SD VAE. Apply methods: `encode` -> (mean, logvar), `decode`; `__call__` reconstructs from the mean."""
  config: VaeConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg, self.dtype)
    self.decoder = Decoder(cfg, self.dtype)
    if cfg.use_quant_conv:
      self.quant_conv = nn.Conv(2 * cfg.latent_channels, (1, 1), dtype=self.dtype)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = nn.Conv(cfg.latent_channels, (1, 1), dtype=self.dtype)

  def encode(self, image):
    """image (B, H, W, in_channels) in [-1, 1], H and W multiples of f -> (mean, logvar), float32."""
    self._check(image, self.config.in_channels, "image", self.config.downsample_factor)
    moments = self.encoder(image)
    if self.config.use_quant_conv:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, latent):
    """latent (B, h, w, latent_channels), unscaled -> image (B, h f, w f, out_channels), float32 ~[-1, 1]."""
    self._check(latent, self.config.latent_channels, "latent", 1)
    if self.config.use_post_quant_conv:
      latent = self.post_quant_conv(latent)
    return self.decoder(latent).astype(jnp.float32)

  def __call__(self, image):
    return self.decode(self.encode(image)[0])

  @staticmethod
  def _check(x, channels: int, what: str, multiple: int):
    if x.ndim != 4 or x.shape[-1] != channels or x.shape[1] % multiple or x.shape[2] % multiple:
      raise ValueError(f"SD-VAE {what} has shape {x.shape}; expected (batch, height, width, {channels}) "
                       f"channels-last with height and width multiples of {multiple}.")


def sample_latent(mean, logvar, key):
  """A draw from N(mean, exp(logvar)), same shape as mean."""
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def to_model_latents(latent):
  """VAE latent -> the scaled latent the flow model sees."""
  return latent * LATENT_SCALE


def from_model_latents(model_latent):
  """Scaled model latent -> VAE latent for decoding."""
  return model_latent / LATENT_SCALE


@functools.partial(jax.jit, static_argnums=0)
def _encode(model: AutoencoderKL, params, image):
  return model.apply({"params": params}, image, method=AutoencoderKL.encode)


@functools.partial(jax.jit, static_argnums=0)
def _decode(model: AutoencoderKL, params, latent):
  return model.apply({"params": params}, latent, method=AutoencoderKL.decode)


def map_in_chunks(fn: Callable, x: np.ndarray, chunk_size: int):
  """Applies `fn` (jitted) to x (N, ...) in equal chunks of at most chunk_size rows; returns its pytree output on
  the host.

  N rows go in the fewest chunks of at most chunk_size rows, all of one size (e.g. 20 rows with chunk_size 16: two
  of 10), so `fn` compiles once per N; the last chunk is padded by repeating its final row (fewer rows than there
  are chunks). Only one chunk's inputs and activations live on the device at a time.
  """
  if chunk_size < 1:
    raise ValueError(f"chunk_size={chunk_size}; expected a positive number of frames per call.")
  n = x.shape[0]
  if n == 0:
    raise ValueError("map_in_chunks got 0 frames; pass at least one frame.")
  size = math.ceil(n / math.ceil(n / chunk_size))  # rows per chunk: n spread evenly over the fewest chunks
  outputs = []
  for start in range(0, n, size):
    chunk = x[start:start + size]
    pad = size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out = jax.tree.map(np.asarray, fn(jnp.asarray(chunk)))
    outputs.append(jax.tree.map(lambda a: a[:size - pad], out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


class SdVaeCodec:
  """A `VideoCodec` (see `rflav_jax.codecs.pixel`) over the SD VAE.

  encode: frames (..., H, W, in_channels) uint8 or float in [-1, 1] -> scaled model latents (..., h, w, c);
  decode: scaled model latents -> frames in [-1, 1] (float32, not clipped). Leading axes (e.g. batch and
  time) are flattened into frames and processed `chunk_size` at a time; results are numpy arrays.
  """

  def __init__(self, model: AutoencoderKL, params, chunk_size: int = 16):
    self.model, self.params, self.chunk_size = model, params, chunk_size

  @property
  def downsample_factor(self) -> int:
    return self.model.config.downsample_factor

  def latent_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int, int]:
    """(H, W) of a frame -> (h, w, channels) of its latent."""
    f = self.downsample_factor
    height, width = frame_shape
    if height % f or width % f:
      raise ValueError(f"frame size {frame_shape} is not a multiple of the VAE's downsampling factor {f}; "
                       "resize or pad the frames.")
    return height // f, width // f, self.model.config.latent_channels

  def encode_moments(self, frames) -> tuple[np.ndarray, np.ndarray]:
    """frames (..., H, W, C) -> unscaled (mean, logvar), each (..., h, w, latent_channels)."""
    frames = to_signed_unit(frames)
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    mean, logvar = map_in_chunks(lambda x: _encode(self.model, self.params, x), flat, self.chunk_size)
    return mean.reshape(*lead, *mean.shape[1:]), logvar.reshape(*lead, *logvar.shape[1:])

  def encode(self, frames, key=None) -> np.ndarray:
    """frames -> scaled model latents: the posterior mean, or a draw from it when `key` is given."""
    mean, logvar = self.encode_moments(frames)
    latent = mean if key is None else np.asarray(sample_latent(mean, logvar, key))
    return np.asarray(to_model_latents(latent))

  def decode(self, latents) -> np.ndarray:
    """Scaled model latents (..., h, w, c) -> frames (..., H, W, out_channels), float32, about [-1, 1]."""
    latents = np.asarray(from_model_latents(np.asarray(latents, np.float32)))
    lead = latents.shape[:-3]
    frames = map_in_chunks(lambda z: _decode(self.model, self.params, z), latents.reshape(-1, *latents.shape[-3:]),
                           self.chunk_size)
    return frames.reshape(*lead, *frames.shape[1:])
