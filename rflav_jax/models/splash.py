"""Softmax attention through the Pallas TPU splash (flash) attention kernel: no attention matrix in memory.

`splash_attention` computes what `jax.nn.dot_product_attention(..., implementation="xla")` computes, for any token
count: the tokens are padded to whole kernel blocks, and the padded keys are masked out of every real query's
softmax. The kernel takes a static block-sparse mask, so an explicit mask must be a concrete array (numpy, or a
jax array outside any trace), not a traced value.

Under `jax.jit` with a mesh set (`jax.set_mesh`), the kernel runs on each device's share of the sequences
(`jax.shard_map` over the mesh's automatic axes): XLA cannot split a Pallas call by itself. Inside `jax.shard_map`
(manual axes) it runs on the local sequences as they are.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

BLOCK = 128  # the kernel's query and key block (its default), tokens


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, is_causal: bool = False,
                     mask: np.ndarray | jax.Array | None = None, interpret: bool = False) -> jax.Array:
  """Softmax attention (S, N, heads, d) -> (S, N, heads, d) with logits scaled by d^-1/2.

  mask: bool (N, N), True where attention is allowed (combined with is_causal). interpret: run the kernel in
  Pallas interpret mode (any backend, e.g. CPU tests) instead of compiling it for a TPU.
  """
  _, n, heads, d = q.shape
  if mask is not None:
    try:
      mask = np.asarray(mask, bool)
    except jax.errors.TracerArrayConversionError as error:
      raise ValueError("splash attention needs a concrete mask (numpy or a jax array built outside jit); this one "
                       "is traced: build it with numpy, or use attention_impl='xla'") from error
    if mask.shape != (n, n):
      raise ValueError(f"attention mask of shape {mask.shape} for {n} tokens; expected ({n}, {n})")
  kernel = _kernel(heads, n, is_causal, None if mask is None else _Hashable(mask), interpret)
  padded = -(-n // BLOCK) * BLOCK
  heads_first = lambda x: jnp.pad(x, ((0, 0), (0, padded - n), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  local = lambda q, k, v: jax.vmap(kernel)(heads_first(q * d ** -0.5), heads_first(k), heads_first(v))
  out = _over_the_mesh(local)(q, k, v)  # (S, heads, padded, d)
  return out.transpose(0, 2, 1, 3)[:, :n].astype(q.dtype)


class _Hashable:
  """A bool mask as an lru_cache key (by value)."""

  def __init__(self, array: np.ndarray):
    self.array = array
    self._key = (array.shape, np.packbits(array).tobytes())

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _Hashable) and self._key == other._key


@functools.lru_cache(maxsize=32)
def _kernel(heads: int, n: int, is_causal: bool, mask: _Hashable | None, interpret: bool):
  """The splash kernel over one sequence, (heads, padded, d) -> (heads, padded, d), for this mask.

  Real queries attend to the allowed real keys; padded queries attend to every real key (their outputs are
  dropped, but must stay finite so that they add nothing to the keys' gradients).
  """
  allowed = np.ones((n, n), bool) if mask is None else mask.array.copy()
  if is_causal:
    allowed &= np.tri(n, dtype=bool)
  padded = -(-n // BLOCK) * BLOCK
  full = np.zeros((padded, padded), bool)
  full[:n, :n] = allowed
  full[n:, :n] = True
  heads_mask = mask_lib.MultiHeadMask([mask_lib.NumpyMask(full)] * heads)
  with jax.ensure_compile_time_eval():  # the kernel's mask tables as concrete arrays, reusable by every trace
    return kernel_lib.make_splash_mha(heads_mask, head_shards=1, q_seq_shards=1, interpret=interpret)


def _over_the_mesh(local):
  """`local` over each device's sequences when a mesh with automatic axes is set; `local` itself otherwise."""
  mesh = jax.sharding.get_abstract_mesh()
  auto = tuple(name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind == jax.sharding.AxisType.Auto)
  if not auto or np.prod([mesh.shape[name] for name in auto]) == 1:
    return local
  spec = jax.P(auto)
  return jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec, axis_names=set(auto), check_vma=False)
