"""Building blocks of FLAV: attention, MLP, adaLN modulation, time and label embedders.

All modules keep float32 parameters and compute in `dtype`. Token tensors are (..., N, D): any leading
batch dimensions, N tokens of width D. Which kernels the modules run (attention, the Linear layers' matmul, token
chunking) is set by their `kernels` attribute alone (see `Kernels`).
"""
import dataclasses
from typing import Any

import einops
import jax
import jax.numpy as jnp
from flax import linen as nn

from rflav_jax.models.splash import splash_attention

Dtype = Any

xavier = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros
normal_002 = nn.initializers.normal(stddev=0.02)

# Flow time t in [0, 1] is embedded as the official code's diffusion-style step 1 + 999 t.
T_RF_OFFSET, T_RF_SCALE = 1.0, 999.0


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation x * (1 + scale) + shift (shift/scale broadcast over x's token axis)."""
  return x * (1 + scale) + shift


def layer_norm(dtype: Dtype) -> nn.LayerNorm:
  """LayerNorm without affine parameters, eps 1e-6 (statistics in float32)."""
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype)


# Implementations accepted by `Kernels.attention_impl`; None, "" and "auto" choose per call (`Kernels.attention`).
ATTENTION_IMPLS = (None, "", "auto", "xla", "cudnn", "looped", "splash")
# Matmuls accepted by `Kernels.linear_dot`.
LINEAR_DOTS = ("xla", "transposed_weight_grad")
# cuDNN flash attention: half-precision inputs, head dim a multiple of 8 up to 128 (256 from Hopper on).
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
_CUDNN_MAX_HEAD_DIM = 128


@dataclasses.dataclass(frozen=True)
class Kernels:
  """Which kernels the layers run. The defaults are XLA's attention and matmul, with no chunking.

  attention_impl: "xla", "cudnn" (both `jax.nn.dot_product_attention`; cuDNN's is fused, on NVIDIA GPUs),
    "looped" (`looped_attention`), "splash" (`splash.splash_attention`, the Pallas TPU flash kernel), or None /
    "" / "auto": chosen per call by `attention` from the next three fields and the call's dtype and shapes.
  cudnn_attention: whether "auto" may run cuDNN flash attention (the devices are NVIDIA GPUs that have it).
  looped_attention_min_tokens: "auto" runs "looped" for sequences of at least this many tokens; None: never.
  splash_attention_min_tokens: "auto" runs "splash" for sequences of at least this many tokens; None: never.
  pallas_interpret: run Pallas kernels ("splash") in interpret mode, on any backend (tests on CPUs).
  linear_dot: the Linear layers' matmul: "xla" (`lax.dot_general`) or "transposed_weight_grad"
    (`transposed_weight_grad_dot`: the same values, a weight gradient from a transposed copy of the input).
  chunk_tokens: token-wise work runs in chunks of at most this many tokens (see `chunks`); None: all at once.
  """
  attention_impl: str | None = None
  cudnn_attention: bool = False
  looped_attention_min_tokens: int | None = None
  splash_attention_min_tokens: int | None = None
  pallas_interpret: bool = False
  linear_dot: str = "xla"
  chunk_tokens: int | None = None

  def __post_init__(self):
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention implementation {self.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
    if self.linear_dot not in LINEAR_DOTS:
      raise ValueError(f"linear_dot={self.linear_dot!r}: expected one of {LINEAR_DOTS}")
    for name in ("looped_attention_min_tokens", "splash_attention_min_tokens", "chunk_tokens"):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{name}={value!r}: expected a positive number of tokens, or None")

  def attention(self, dtype: Dtype, head_dim: int, tokens: int, masked: bool) -> str:
    """The implementation of one attention over `tokens` tokens: "xla", "cudnn", "looped" or "splash".

    "xla", "cudnn", "looped" and "splash" are kept as requested. None, "" and "auto" pick cuDNN flash attention
    (no attention matrix in memory) when cudnn_attention is set and cuDNN supports the call: bf16/fp16 compute,
    head_dim a multiple of 8 up to 128, and with an explicit mask (which cuDNN takes as a bias) an even token
    count; else "splash" (no attention matrix in memory either, any dtype and mask) for at least
    splash_attention_min_tokens tokens; else "looped" for at least looped_attention_min_tokens tokens; XLA
    otherwise. "looped" and "splash" compute the same function as XLA's (float32 rounding apart).
    """
    if self.attention_impl in ("xla", "cudnn", "looped", "splash"):
      return self.attention_impl
    supported = (jnp.dtype(dtype) in _CUDNN_DTYPES and head_dim % 8 == 0 and head_dim <= _CUDNN_MAX_HEAD_DIM
                 and not (masked and tokens % 2))
    if supported and self.cudnn_attention:
      return "cudnn"
    if self.splash_attention_min_tokens is not None and tokens >= self.splash_attention_min_tokens:
      return "splash"
    looped = self.looped_attention_min_tokens is not None and tokens >= self.looped_attention_min_tokens
    return "looped" if looped else "xla"

  def chunks(self, sequences: int, tokens: int) -> int:
    """How many equal chunks of whole sequences to compute `sequences` sequences of `tokens` tokens in.

    1 without chunk_tokens or for at most 2 * chunk_tokens tokens in all; else the fewest chunks of at most
    chunk_tokens tokens (or of one sequence, for longer sequences) that divide the sequences evenly.
    """
    if self.chunk_tokens is None or sequences * tokens <= 2 * self.chunk_tokens:
      return 1
    chunks = -(-sequences // max(1, self.chunk_tokens // tokens))
    while sequences % chunks:
      chunks += 1
    return chunks


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x (..., K) @ w (K, N) -> (..., N), whose weight gradient multiplies a transposed copy of x."""
  return x @ w


def _matmul_fwd(x, w):
  return x @ w, (x, w)


def _matmul_bwd(residuals, dy):
  x, w = residuals
  rows = x.reshape(-1, x.shape[-1])
  # The barrier keeps the transpose: XLA would fold it into the GEMM as a contraction over x's first axis, which
  # XLA:CPU runs through Eigen beside (and slowed by) the other GEMMs instead of through YNNPACK.
  # XLA still fuses x's cheap producer (LayerNorm and modulation) into the copy, which then recomputes it.
  dw = jax.lax.optimization_barrier(rows.T) @ dy.reshape(-1, dy.shape[-1])
  return dy @ w.T, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _sharded_in_its_type(x: jax.Array) -> bool:
  """Whether x's type names mesh axes: inside `jax.shard_map` (manual axes) or on an explicitly sharded mesh."""
  mesh = getattr(jax.typeof(x).sharding, "mesh", None)
  return any(axis_type != jax.sharding.AxisType.Auto for axis_type in getattr(mesh, "axis_types", ()))


def transposed_weight_grad_dot(x, w, dimension_numbers, precision=None, preferred_element_type=None):
  """`nn.Dense`'s dot_general for CPUs: x @ w as XLA computes it, with the weight gradient (K, N) = x^T dy from a
  transposed copy of x (rows, K) -> (K, rows). Measured on a FLAV training step on 2 CPU cores: 11% faster, since
  every GEMM of the step then runs through YNNPACK. Any other contraction, precision or result type goes to
  `lax.dot_general` unchanged, and so does x sharded in its type: inside `jax.shard_map` (the sampler's, which
  takes no weight gradient) the weights' gradient would need a sum over the manual axes, and on an explicitly
  sharded mesh an output sharding; the trainer's mesh is automatic."""
  plain = dimension_numbers == (((x.ndim - 1,), (0,)), ((), ())) and w.ndim == 2
  if not plain or precision is not None or preferred_element_type is not None or _sharded_in_its_type(x):
    return jax.lax.dot_general(x, w, dimension_numbers, precision, preferred_element_type=preferred_element_type)
  return _matmul(x, w)


def dense(features: int, dtype: Dtype, kernels: Kernels, name: str, init=xavier) -> nn.Dense:
  """Linear layer with zero bias; `init` for the kernel (Xavier-uniform by default); kernels.linear_dot's matmul."""
  dot = transposed_weight_grad_dot if kernels.linear_dot == "transposed_weight_grad" else None
  return nn.Dense(features, dtype=dtype, kernel_init=init, bias_init=zeros, name=name, dot_general=dot)


def adaln(c: jax.Array, chunks: int, dtype: Dtype, kernels: Kernels, name: str) -> list[jax.Array]:
  """Zero-initialised Linear(SiLU(c)) split into `chunks` arrays of c's width: (B, T, D) -> chunks x (B, T, 1, D)."""
  out = dense(chunks * c.shape[-1], dtype, kernels, name, init=zeros)(nn.silu(c))
  return jnp.split(out[..., None, :], chunks, axis=-1)


def looped_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, is_causal: bool = False,
                     mask: jax.Array | None = None) -> jax.Array:
  """Softmax attention (B, N, heads, d) -> (B, N, heads, d), one (sequence, head) pair at a time (`lax.map`).

  The same function as `jax.nn.dot_product_attention(..., implementation="xla")`: float32 logits scaled by
  d^-1/2, masked entries set to a large negative number, float32 softmax. XLA's batched form writes all
  B x heads x N^2 logits to memory; on CPUs that traffic, not the arithmetic, sets its speed for long
  sequences, while one pair's N x N logits stay in cache. mask: bool (N, N), True where attention is allowed.
  """
  b, n, heads, d = q.shape
  allowed = mask
  if is_causal:
    causal = jnp.tril(jnp.ones((n, n), bool))
    allowed = causal if allowed is None else allowed & causal

  def one(qkv):
    q1, k1, v1 = qkv  # (N, d)
    logits = jnp.matmul(q1, k1.T, preferred_element_type=jnp.float32) * d ** -0.5
    if allowed is not None:
      logits = jnp.where(allowed, logits, 0.7 * jnp.finfo(jnp.float32).min)
    return jnp.matmul(jax.nn.softmax(logits, axis=-1).astype(v1.dtype), v1)

  heads_first = lambda x: einops.rearrange(x, "b n h d -> (b h) n d")
  out = jax.lax.map(one, (heads_first(q), heads_first(k), heads_first(v)))
  return einops.rearrange(out, "(b h) n d -> b n h d", b=b)


def in_chunks(fn, module: nn.Module, x: jax.Array, chunks: int) -> jax.Array:
  """fn(module, x) computed on `chunks` equal parts of x's leading axis in turn, concatenated.

  The parts run one after another in a loop (`nn.scan` sharing the module's parameters), so the result,
  the parameters and their names are those of fn(module, x); only the memory traffic changes.
  """
  if chunks == 1:
    return fn(module, x)
  body = lambda mdl, carry, part: (carry, fn(mdl, part))
  scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, length=chunks)
  _, out = scan(module, None, einops.rearrange(x, "(c s) ... -> c s ...", c=chunks))
  return einops.rearrange(out, "c s ... -> (c s) ...")


class Attention(nn.Module):
  """Multi-head self-attention over the token axis, many sequences a chunk at a time (`Kernels.chunks`).

  Attributes:
    num_heads: heads; the width D must divide evenly.
    dtype: compute dtype.
    kernels: the attention implementation (`Kernels.attention`), Linear matmul and chunking.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  kernels: Kernels = Kernels()

  def __call__(self, x: jax.Array, *, is_causal: bool = False, mask: jax.Array | None = None) -> jax.Array:
    """x (..., N, D) -> (..., N, D). mask: bool (N, N), True where attention is allowed."""
    *batch, n, d = x.shape
    sequences = x.reshape(-1, n, d)
    attend = lambda module, part: module.attend(part, is_causal, mask)
    return in_chunks(attend, self, sequences, self.kernels.chunks(sequences.shape[0], n)).reshape(*batch, n, d)

  @nn.compact
  def attend(self, x: jax.Array, is_causal: bool, mask: jax.Array | None) -> jax.Array:
    """x (S, N, D) -> (S, N, D): S sequences at once."""
    _, n, d = x.shape
    head_dim = d // self.num_heads
    qkv = einops.rearrange(dense(3 * d, self.dtype, self.kernels, "qkv")(x), "s n (three h d) -> s n three h d",
                           three=3, h=self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    implementation = self.kernels.attention(q.dtype, head_dim, n, mask is not None)
    if implementation == "looped":
      out = looped_attention(q, k, v, is_causal=is_causal, mask=mask)
    elif implementation == "splash":
      out = splash_attention(q, k, v, is_causal=is_causal, mask=mask, interpret=self.kernels.pallas_interpret)
    else:
      out = jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, mask=mask, implementation=implementation)
    return dense(d, self.dtype, self.kernels, "proj")(einops.rearrange(out, "s n h d -> s n (h d)"))


class Mlp(nn.Module):
  """Linear(D -> hidden), GELU (tanh approximation), Linear(hidden -> D); many tokens a chunk at a time."""
  hidden: int
  dtype: Dtype = jnp.float32
  kernels: Kernels = Kernels()

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., D) -> (..., D)."""
    rows = x.reshape(-1, x.shape[-1])
    mlp = lambda module, part: module.mlp(part)
    return in_chunks(mlp, self, rows, self.kernels.chunks(rows.shape[0], 1)).reshape(x.shape)

  @nn.compact
  def mlp(self, x: jax.Array) -> jax.Array:
    h = nn.gelu(dense(self.hidden, self.dtype, self.kernels, "fc1")(x), approximate=True)
    return dense(x.shape[-1], self.dtype, self.kernels, "fc2")(h)


def timestep_embedding(t_rf: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding (..., ) -> (..., dim): [cos(t f_i), sin(t f_i)], f_i = max_period^(-i / (dim/2))."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t_rf.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nn.Module):
  """Flow time t in [0, 1] (...) -> (..., D): sinusoid of 1 + 999 t, Linear, SiLU, Linear."""
  hidden: int
  frequency_dim: int = 256
  dtype: Dtype = jnp.float32
  kernels: Kernels = Kernels()

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    emb = timestep_embedding(T_RF_OFFSET + T_RF_SCALE * t.astype(jnp.float32), self.frequency_dim)
    h = nn.silu(dense(self.hidden, self.dtype, self.kernels, "fc1", init=normal_002)(emb))
    return dense(self.hidden, self.dtype, self.kernels, "fc2", init=normal_002)(h)


class FinalLayer(nn.Module):
  """adaLN (shift, scale) then Linear(D -> out): tokens (B, T, N, D), c (B, T, D) -> (B, T, N, out)."""
  out_features: int
  dtype: Dtype = jnp.float32
  kernels: Kernels = Kernels()

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    shift, scale = adaln(c, 2, self.dtype, self.kernels, "adaLN_modulation")
    x = modulate(layer_norm(self.dtype)(x), shift, scale)
    return dense(self.out_features, self.dtype, self.kernels, "linear", init=zeros)(x)
