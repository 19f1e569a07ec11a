"""The looped attention (one sequence and head at a time, the CPU path for long sequences) is XLA's attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import rel_l2
from rflav_jax.models import layers


def qkv(seed, shape=(3, 40, 2, 16), dtype=jnp.float32):
  return [jax.random.normal(key, shape, dtype) for key in jax.random.split(jax.random.key(seed), 3)]


@pytest.mark.parametrize("is_causal, masked", [(False, False), (True, False), (False, True), (True, True)])
def test_looped_attention_matches_xla_values_and_gradients(is_causal, masked):
  q, k, v = qkv(seed=int(is_causal) + 2 * int(masked))
  n = q.shape[1]
  mask = jax.random.bernoulli(jax.random.key(9), 0.7, (n, n)) | jnp.eye(n, dtype=bool) if masked else None

  def attend(implementation):
    if implementation == "looped":
      return lambda q, k, v: layers.looped_attention(q, k, v, is_causal=is_causal, mask=mask)
    return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, mask=mask, implementation="xla")

  looped, xla = attend("looped"), attend("xla")
  assert rel_l2(looped(q, k, v), xla(q, k, v)) < 1e-6
  weights = jax.random.normal(jax.random.key(5), q.shape)  # a loss that weighs every output differently
  grads = [jax.grad(lambda *x, f=f: jnp.sum(f(*x) * weights), argnums=(0, 1, 2))(q, k, v) for f in (looped, xla)]
  for looped_grad, xla_grad in zip(*grads):
    assert rel_l2(looped_grad, xla_grad) < 1e-5


def test_looped_attention_in_bfloat16_stays_within_its_rounding():
  q, k, v = qkv(seed=7, dtype=jnp.bfloat16)
  exact = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), implementation="xla")
  out = layers.looped_attention(q, k, v)
  assert out.dtype == jnp.bfloat16 and rel_l2(out.astype(jnp.float32), exact) < 1e-2


def test_attention_module_gives_the_same_output_with_either_implementation():
  x = jax.random.normal(jax.random.key(1), (2, 300, 32))  # 300 tokens: "auto" on a CPU picks "looped"
  module = layers.Attention(num_heads=4)
  params = module.init(jax.random.key(0), x)
  outputs = {impl: layers.Attention(num_heads=4, implementation=impl).apply(params, x)
             for impl in ("auto", "looped", "xla")}
  assert layers.attention_implementation("auto", jnp.float32, 8, 300, False) == "looped"
  np.testing.assert_array_equal(outputs["auto"], outputs["looped"])
  assert rel_l2(outputs["looped"], outputs["xla"]) < 1e-6
