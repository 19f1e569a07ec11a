"""FLAV: the R-FLAV audio-video transformer, channels-last.

Inputs for a window of T = predict_frames frames:
  v: video (B, T, H, W, C) latents or pixels,
  a: mel (B, T, F, N): F = 10 mel columns per frame, N mel bins,
  t: flow time (B, T) in [0, 1] per frame (1 = clean),
  y: labels (B,) int in [0, num_classes], num_classes being the null label; None when num_classes == 0.
Output: velocities (v_hat (B, T, H, W, C), a_hat (B, T, F, N)) in float32.

Inside, video tokens are (B, T, L, D) with L = (H/p)(W/p) patches per frame, audio tokens (B, T, F, D).
Cross-modal blocks: "c" (released; temporal-average modulation with conditioning), "b" (temporal-average
modulation), "a" (joint self-attention over both modalities).

Which kernels run is set by FLAV's kernel attributes (KERNEL_ARGS, see `layers.Kernels`), plain XLA by default;
`flav_from_config` and `for_platform` choose them for the devices.
"""
import dataclasses
import functools
from typing import Any

import einops
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from rflav_jax.models import layers
from rflav_jax.models.layers import (Attention, FinalLayer, Kernels, Mlp, TimestepEmbedder, adaln, dense, layer_norm,
                                     modulate)
from rflav_jax.models.platforms import Platform, current_platform, kernel_args

# FLAV's attributes that choose kernels, not the network: the requested attention implementation and the facts
# and choices for the platform (PLATFORM_ARGS, which configs and checkpoints do not store).
KERNEL_ARGS = tuple(field.name for field in dataclasses.fields(Kernels))
PLATFORM_ARGS = tuple(name for name in KERNEL_ARGS if name != "attention_impl")

BLOCK_TYPES = ("a", "b", "c")
# How training drops labels for classifier-free guidance: an independent draw for each branch's label embedding
# (the official model's), or one draw for both.
LABEL_DROPOUTS = ("per_branch", "shared")
REMAT_POLICIES = {
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}


def frame_causal_mask(num_frames: int, tokens_per_frame: int) -> np.ndarray:
  """bool (T*n, T*n): a token of frame i may attend to every token of frames <= i (numpy: a constant under jit, as
  splash attention needs)."""
  frame = np.arange(num_frames * tokens_per_frame) // tokens_per_frame
  return frame[:, None] >= frame[None, :]


class FLAVBlock(nn.Module):
  """One transformer block: video spatial + temporal attention, audio attention, cross-modal MLPs."""
  num_heads: int
  mlp_ratio: float
  block_type: str = "c"
  causal: bool = False
  dtype: Any = jnp.float32
  kernels: Kernels = Kernels()

  @nn.compact
  def __call__(self, v, a, c_v, c_a):
    """v (B, T, L, D), a (B, T, F, D), c_v / c_a (B, T, D) -> updated (v, a)."""
    width = v.shape[-1]
    attention = functools.partial(Attention, self.num_heads, self.dtype, self.kernels)
    norm = lambda x: layer_norm(self.dtype)(x)
    modulation = lambda c, chunks, name: adaln(c, chunks, self.dtype, self.kernels, name)
    shift1, scale1, gate1, shift2, scale2, gate2 = modulation(c_v, 6, "video_adaLN_modulation")
    shift_a, scale_a, gate_a = modulation(c_a, 3, "audio_adaLN_modulation")

    # Spatial attention within each frame, then temporal attention per patch position over frames.
    v = v + gate1 * attention(name="video_spatial_attn")(modulate(norm(v), shift1, scale1))
    h = einops.rearrange(modulate(norm(v), shift2, scale2), "b t l d -> b l t d")
    h = attention(name="video_temporal_attn")(h, is_causal=self.causal)
    v = v + gate2 * einops.rearrange(h, "b l t d -> b t l d")

    # Audio attention over the window's T * F tokens, frame-major.
    h = einops.rearrange(modulate(norm(a), shift_a, scale_a), "b t f d -> b (t f) d")
    h = attention(name="audio_spatial_attn")(h, is_causal=self.causal)
    a = a + gate_a * einops.rearrange(h, "b (t f) d -> b t f d", f=a.shape[2])

    if self.block_type == "a":
      v, a = self._joint_attention(v, a, c_v, c_a)
      cond_for_video_mlp, cond_for_audio_mlp = c_v, c_a
    else:
      v_bar = dense(width, self.dtype, self.kernels, "v_avg_proj")(v.mean(axis=2))
      a_bar = dense(width, self.dtype, self.kernels, "a_avg_proj")(a.mean(axis=2))
      if self.block_type == "c":
        v_bar, a_bar = v_bar + c_a, a_bar + c_v
      cond_for_video_mlp, cond_for_audio_mlp = a_bar, v_bar

    hidden = int(width * self.mlp_ratio)
    scale_v, shift_v, gate_v = modulation(cond_for_video_mlp, 3, "video_scale")
    scale_a, shift_a, gate_a = modulation(cond_for_audio_mlp, 3, "audio_scale")
    v = v + gate_v * Mlp(hidden, self.dtype, self.kernels, name="video_mlp")(modulate(norm(v), shift_v, scale_v))
    a = a + gate_a * Mlp(hidden, self.dtype, self.kernels, name="audio_mlp")(modulate(norm(a), shift_a, scale_a))
    return v, a

  def _joint_attention(self, v, a, c_v, c_a):
    """Block (a): one self-attention over every video and audio token of the window, frame-major."""
    frames, num_patches = v.shape[1:3]
    shift_v, scale_v, gate_v = adaln(c_v, 3, self.dtype, self.kernels, "video_joint_modulation")
    shift_a, scale_a, gate_a = adaln(c_a, 3, self.dtype, self.kernels, "audio_joint_modulation")
    norm = lambda x: layer_norm(self.dtype)(x)
    tokens = jnp.concatenate([modulate(norm(v), shift_v, scale_v), modulate(norm(a), shift_a, scale_a)], axis=2)
    per_frame = tokens.shape[2]
    mask = frame_causal_mask(frames, per_frame) if self.causal else None
    h = Attention(self.num_heads, self.dtype, self.kernels, name="joint_attn")(
        einops.rearrange(tokens, "b t n d -> b (t n) d"), mask=mask)
    h = einops.rearrange(h, "b (t n) d -> b t n d", t=frames)
    return v + gate_v * h[:, :, :num_patches], a + gate_a * h[:, :, num_patches:]


class FLAV(nn.Module):
  """The FLAV network. Attribute names follow the official constructor where they exist.

  Attributes:
    latent_size: H = W of the video input (latent or pixel grid).
    patch_size: p; the video is cut into (H/p)(W/p) patches per frame.
    in_channels: C of the video input.
    hidden_size, depth, num_heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
    class_dropout_prob: probability of replacing a label by the null label while training.
    label_dropout: "per_branch" (as the official model: the video and the audio label embeddings each drop their
      label in a draw of their own) or "shared" (one draw drops both).
    num_classes: 0 for an unconditional model; otherwise labels are 0..num_classes-1, null = num_classes.
    predict_frames: T, the window length (position embeddings are learned per frame).
    n_mels: N mel bins; audio_columns: F mel columns per video frame (10).
    causal_attn: causal temporal, audio and joint attention.
    block_type: "c" (released), "b" or "a".
    remat: gradient checkpointing of each block; remat_policy names a `jax.checkpoint_policies` entry.
    dtype: compute dtype (parameters stay float32).
  Kernel attributes (KERNEL_ARGS; they change no parameter and no value beyond float rounding):
    attention_impl: "xla", "cudnn", "looped", "splash", or None / "" / "auto": per attention call, cuDNN if
      cudnn_attention and the call allows it, "splash" from splash_attention_min_tokens tokens, "looped" from
      looped_attention_min_tokens tokens, XLA otherwise.
    cudnn_attention: "auto" may run cuDNN flash attention (NVIDIA GPUs).
    looped_attention_min_tokens: "auto" runs "looped" attention from this many tokens on; None: never.
    splash_attention_min_tokens: "auto" runs Pallas splash attention (TPUs) from this many tokens on; None: never.
    pallas_interpret: Pallas kernels run in interpret mode (CPU tests of the TPU kernels).
    linear_dot: the Linear layers' matmul, "xla" or "transposed_weight_grad" (the CPU's).
    chunk_tokens: attention and MLPs over many tokens run in chunks of at most this many; None: all at once.
  """
  latent_size: int = 32
  patch_size: int = 1
  in_channels: int = 4
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  class_dropout_prob: float = 0.1
  label_dropout: str = "per_branch"
  num_classes: int = 0
  predict_frames: int = 10
  n_mels: int = 256
  audio_columns: int = 10
  causal_attn: bool = False
  block_type: str = "c"
  remat: bool = False
  remat_policy: str = "nothing_saveable"
  dtype: Any = jnp.float32
  attention_impl: str | None = None
  cudnn_attention: bool = False
  looped_attention_min_tokens: int | None = None
  splash_attention_min_tokens: int | None = None
  pallas_interpret: bool = False
  linear_dot: str = "xla"
  chunk_tokens: int | None = None

  @property
  def kernels(self) -> Kernels:
    """The kernel attributes as one value, as the layers take them."""
    return Kernels(**{name: getattr(self, name) for name in KERNEL_ARGS})

  def setup(self):
    if self.block_type not in BLOCK_TYPES:
      raise ValueError(f"block_type={self.block_type!r}: expected one of {BLOCK_TYPES}")
    if self.latent_size % self.patch_size:
      raise ValueError(f"latent_size={self.latent_size} is not divisible by patch_size={self.patch_size}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
    if self.label_dropout not in LABEL_DROPOUTS:
      raise ValueError(f"label_dropout={self.label_dropout!r}: expected one of {LABEL_DROPOUTS}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy={self.remat_policy!r}: expected one of {sorted(REMAT_POLICIES)}")
    d, frames = self.hidden_size, self.predict_frames
    num_patches = (self.latent_size // self.patch_size) ** 2
    self.video_spatial_pos_embed = self.param("video_spatial_pos_embed", layers.zeros, (1, 1, num_patches, d))
    self.video_temporal_pos_embed = self.param("video_temporal_pos_embed", layers.zeros, (1, frames, 1, d))
    self.audio_spatial_pos_embed = self.param("audio_spatial_pos_embed", layers.zeros, (1, 1, self.audio_columns, d))
    self.audio_temporal_pos_embed = self.param("audio_temporal_pos_embed", layers.zeros, (1, frames, 1, d))
    kernels = self.kernels
    self.v_embedder = dense(d, self.dtype, kernels, "v_embedder")
    self.a_embedder = dense(d, self.dtype, kernels, "a_embedder")
    self.video_t_embedder = TimestepEmbedder(d, dtype=self.dtype, kernels=kernels)
    self.audio_t_embedder = TimestepEmbedder(d, dtype=self.dtype, kernels=kernels)
    if self.num_classes:
      self.video_y_embedder = nn.Embed(self.num_classes + 1, d, embedding_init=layers.normal_002)
      self.audio_y_embedder = nn.Embed(self.num_classes + 1, d, embedding_init=layers.normal_002)
    block = FLAVBlock
    if self.remat:
      block = nn.remat(FLAVBlock, policy=REMAT_POLICIES[self.remat_policy])
    self.blocks = [
        block(self.num_heads, self.mlp_ratio, self.block_type, self.causal_attn, self.dtype, kernels,
              name=f"blocks_{i}") for i in range(self.depth)]
    self.video_final_layer = FinalLayer(self.patch_size ** 2 * self.in_channels, self.dtype, kernels)
    self.audio_final_layer = FinalLayer(self.n_mels, self.dtype, kernels)

  def __call__(self, v: jax.Array, a: jax.Array, t: jax.Array, y: jax.Array | None = None, train: bool = False):
    self._check_inputs(v, a, t, y)
    p = self.patch_size
    v = einops.rearrange(v.astype(self.dtype), "b t (h p) (w q) c -> b t (h w) (p q c)", p=p, q=p)
    v = self.v_embedder(v) + self.video_spatial_pos_embed + self.video_temporal_pos_embed
    a = self.a_embedder(a.astype(self.dtype)) + self.audio_spatial_pos_embed + self.audio_temporal_pos_embed

    c_v, c_a = self.video_t_embedder(t), self.audio_t_embedder(t)
    if self.num_classes:
      y_v, y_a = self._drop_labels(y) if train else (y, y)
      c_v = c_v + self.video_y_embedder(y_v)[:, None].astype(self.dtype)
      c_a = c_a + self.audio_y_embedder(y_a)[:, None].astype(self.dtype)

    for block in self.blocks:
      v, a = block(v, a, c_v, c_a)

    v = einops.rearrange(self.video_final_layer(v, c_v), "b t (h w) (p q c) -> b t (h p) (w q) c",
                         h=self.latent_size // p, p=p, q=p)
    a = self.audio_final_layer(a, c_a)
    return v.astype(jnp.float32), a.astype(jnp.float32)

  def _drop_labels(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(video labels, audio labels) (B,): each label replaced by the null label with probability class_dropout_prob,
    drawn per branch or once for both (label_dropout), from the rng stream "dropout"."""
    if not self.class_dropout_prob:
      return y, y
    drop = lambda: jnp.where(jax.random.bernoulli(self.make_rng("dropout"), self.class_dropout_prob, y.shape),
                             self.num_classes, y)
    if self.label_dropout == "shared":
      shared = drop()
      return shared, shared
    return drop(), drop()

  def _check_inputs(self, v, a, t, y):
    size, frames = self.latent_size, self.predict_frames
    expected_v = (frames, size, size, self.in_channels)
    if v.ndim != 5 or tuple(v.shape[1:]) != expected_v:
      raise ValueError(f"video input has shape {v.shape}; expected (B, T, H, W, C) = (B, {', '.join(map(str, expected_v))})"
                       " channels-last (transpose official (B, T, C, H, W) inputs with .transpose(0, 1, 3, 4, 2))")
    expected_a = (v.shape[0], frames, self.audio_columns, self.n_mels)
    if tuple(a.shape) != expected_a:
      raise ValueError(f"audio input has shape {a.shape}; expected (B, T, F, N) = {expected_a}"
                       " (official (B, T, 1, N, F) mel becomes a[:, :, 0].transpose(0, 1, 3, 2))")
    if tuple(t.shape) != (v.shape[0], frames):
      raise ValueError(f"time input has shape {t.shape}; expected (B, T) = {(v.shape[0], frames)}, one flow time per frame")
    if self.num_classes and (y is None or tuple(y.shape) != (v.shape[0],)):
      raise ValueError(f"labels y must be (B,) = ({v.shape[0]},) ints for a model with num_classes={self.num_classes}"
                       f" (null label {self.num_classes}); got {None if y is None else y.shape}")
    if not self.num_classes and y is not None:
      raise ValueError("labels y were given to an unconditional model (num_classes=0); pass y=None")


# Official preset names "FLAV-{S,B,L,XL}/{patch}" -> constructor arguments.
_SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=20, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
PRESETS = {
    f"FLAV-{size}/{patch}": dict(args, patch_size=patch, **({"depth": 24} if (size, patch) == ("L", 1) else {}))
    for size, args in _SIZES.items() for patch in (1, 2, 4, 8)
}


def flav_from_preset(name: str, **overrides) -> FLAV:
  """FLAV from an official preset name such as "FLAV-B/1"; keyword arguments override any attribute."""
  if name not in PRESETS:
    raise ValueError(f"unknown FLAV preset {name!r}; known presets: {', '.join(PRESETS)}")
  return FLAV(**{**PRESETS[name], **overrides})


def flav_from_config(model_config, platform: Platform | None = None) -> FLAV:
  """FLAV to run on `platform` (default: JAX's default devices) from a config mapping: an optional `preset` name
  and any FLAV attribute, `dtype` as a name ("bfloat16"). The kernel attributes the mapping leaves out are those
  `platforms.kernel_args` chooses for the platform; attention_impl (default None: "auto") is the user's request."""
  kwargs = dict(model_config)
  preset = kwargs.pop("preset", None)
  if "dtype" in kwargs:
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  kwargs = {**kernel_args(platform or current_platform()), **kwargs}
  return flav_from_preset(preset, **kwargs) if preset else FLAV(**kwargs)


def for_platform(model: FLAV, platform: Platform | None = None) -> FLAV:
  """`model` with the kernels chosen for `platform` (default: JAX's default devices), e.g. for a model built with
  `FLAV(...)`, whose defaults are XLA's kernels everywhere. Same parameters, same function."""
  return model.clone(**kernel_args(platform or current_platform()))


def flav_args(model: FLAV) -> dict:
  """The FLAV attributes of `model` as plain values (dtype by name), for configs and checkpoints: all but the
  PLATFORM_ARGS, which `flav_from_config` chooses again for the devices that load them."""
  excluded = ("parent", "name", *PLATFORM_ARGS)
  args = {f: getattr(model, f) for f in FLAV.__dataclass_fields__ if f not in excluded}
  args["dtype"] = jnp.dtype(args["dtype"]).name
  return args


def dummy_inputs(model: FLAV, batch: int = 1) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
  """Zero inputs of the model's shapes: v (B, T, H, W, C), a (B, T, F, N), t (B, T) float32, y (B,) int32 or None."""
  frames, size = model.predict_frames, model.latent_size
  v = jnp.zeros((batch, frames, size, size, model.in_channels))
  a = jnp.zeros((batch, frames, model.audio_columns, model.n_mels))
  y = jnp.zeros((batch,), jnp.int32) if model.num_classes else None
  return v, a, jnp.zeros((batch, frames)), y


def init_params(model: FLAV, key_or_seed: jax.Array | int = 0) -> dict:
  """Freshly initialised params of `model` from a jax.random key or an int seed."""
  key = jax.random.key(key_or_seed) if isinstance(key_or_seed, int) else key_or_seed
  return jax.jit(model.init)(key, *dummy_inputs(model))["params"]
