"""The CPU paths compute the same function: looped attention (one sequence and head at a time) is XLA's
attention, token-wise work in chunks (`layers.in_chunks`) is the whole computation, and Linear layers whose weight
gradient multiplies a transposed input (`layers.cpu_linear_dot`) have XLA's values and gradients."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params, rel_l2, tiny_inputs
from rflav_jax.models import flav, layers


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


def test_cpu_chunks_cut_whole_sequences_into_equal_chunks_of_at_most_the_limit():
  assert layers.cpu_chunks(2, 1024) == 1  # 2048 tokens: whole
  assert layers.cpu_chunks(20, 1024) == 10  # FLAV-B/1 spatial attention, batch 2: two frames per chunk
  assert layers.cpu_chunks(20480, 1) == 10  # its MLP rows
  assert layers.cpu_chunks(2048, 10) == 16  # its temporal attention: 128 sequences of 10 per chunk
  assert layers.cpu_chunks(3, 5000) == 3  # sequences longer than the limit: one per chunk
  assert layers.cpu_chunks(7, 1000) == 7  # 7 is prime: the fewest equal chunks of <= 2048 tokens is 7
  for sequences, tokens in [(20, 1024), (2048, 10), (20480, 1), (96, 100)]:
    chunks = layers.cpu_chunks(sequences, tokens)
    assert sequences % chunks == 0
    assert sequences // chunks * tokens <= layers.CPU_CHUNK_TOKENS or sequences // chunks == 1


@pytest.mark.slow
def test_flav_in_chunks_has_the_same_parameters_outputs_and_gradients(monkeypatch):
  model = flav.FLAV(latent_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2,
                    num_classes=2, predict_frames=4, n_mels=16, causal_attn=True)
  v, a, t, y = tiny_inputs(model, jax.random.key(3))

  def run():
    params = random_params(model, jax.random.key(4))  # N(0, 0.2): zero-initialised gates would hide differences
    loss = lambda p: sum(jnp.sum(o * jnp.cos(jnp.arange(o.size).reshape(o.shape)))
                         for o in model.apply({"params": p}, v, a, t, y))
    return (flav.init_params(model, 0), jax.jit(model.apply)({"params": params}, v, a, t, y),
            jax.jit(jax.grad(loss))(params))

  monkeypatch.setattr(layers, "CPU_CHUNK_TOKENS", 10 ** 9)
  whole = run()
  # 8 tokens per chunk: spatial attention one frame (16 patches) per chunk, temporal 2 sequences, MLP 8 rows.
  monkeypatch.setattr(layers, "CPU_CHUNK_TOKENS", 8)
  assert layers.cpu_chunks(8, 16) == 8 and layers.cpu_chunks(32, 4) == 16
  chunked = run()
  assert jax.tree.structure(chunked[0]) == jax.tree.structure(whole[0])
  chex.assert_trees_all_equal(chunked[0], whole[0])
  for out_chunked, out_whole in zip(chunked[1], whole[1]):
    assert rel_l2(out_chunked, out_whole) < 1e-5  # float32 rounding; a wrong cut would be O(1)
  jax.tree.map(lambda g1, g2: np.testing.assert_array_less(rel_l2(g1, g2), 1e-4), chunked[2], whole[2])


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_cpu_linear_dot_has_xla_values_and_gradients(dtype, tolerance):
  x, w = (jax.random.normal(key, shape, dtype) for key, shape in zip(jax.random.split(jax.random.key(5)),
                                                                      [(3, 5, 8), (8, 6)]))
  plain = (((2,), (0,)), ((), ()))
  ours = lambda x, w: layers.cpu_linear_dot(x, w, plain)
  xla = lambda x, w: jax.lax.dot_general(x, w, plain)
  cosine = lambda f: lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * jnp.cos(jnp.arange(18.0).reshape(3, 1, 6)))
  assert ours(x, w).dtype == dtype
  np.testing.assert_array_equal(np.asarray(ours(x, w), np.float32), np.asarray(xla(x, w), np.float32))
  for got, want in zip(jax.grad(cosine(ours), (0, 1))(x, w), jax.grad(cosine(xla), (0, 1))(x, w)):
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    assert rel_l2(got, want) < tolerance
  # Any other contraction is lax.dot_general's own.
  other = (((0,), (1,)), ((), ()))
  y = jax.random.normal(jax.random.key(6), (4, 3), dtype)
  np.testing.assert_array_equal(layers.cpu_linear_dot(x, y, other), jax.lax.dot_general(x, y, other))


@pytest.mark.slow
def test_flav_with_transposed_weight_gradients_has_the_same_gradients_and_no_first_axis_contraction(monkeypatch):
  """The CPU's Linear layers give XLA's gradients, and no GEMM of the compiled gradient contracts over its left
  operand's first axis (the form XLA:CPU runs through Eigen instead of YNNPACK)."""
  model = flav.FLAV(latent_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2,
                    num_classes=2, predict_frames=4, n_mels=16, causal_attn=True)
  v, a, t, y = tiny_inputs(model, jax.random.key(3))
  params = random_params(model, jax.random.key(4))

  def gradients():
    loss = lambda p: sum(jnp.sum(o * jnp.cos(jnp.arange(o.size).reshape(o.shape)))
                         for o in model.apply({"params": p}, v, a, t, y))
    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    first_axis = [line for line in compiled.as_text().splitlines()
                  if " dot(" in line and "lhs_contracting_dims={0}" in line]
    return compiled(params), first_axis

  monkeypatch.setattr(layers, "CPU_TRANSPOSED_WEIGHT_GRADIENTS", False)
  want, xla_first_axis = gradients()
  monkeypatch.setattr(layers, "CPU_TRANSPOSED_WEIGHT_GRADIENTS", True)
  got, ours_first_axis = gradients()
  assert xla_first_axis and not ours_first_axis
  jax.tree.map(lambda g1, g2: np.testing.assert_array_less(rel_l2(g1, g2), 1e-5), got, want)


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_cpu_linear_dot_gradients_inside_shard_map_and_on_a_sharded_mesh_are_xlas(axis_type):
  """The sampler's guidance takes gradients inside `jax.shard_map`, where x varies over the streams and the weights
  do not; on an explicitly sharded mesh the weight gradient's contraction is over a sharded axis."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("streams",), axis_types=(getattr(jax.sharding.AxisType,
                                                                                      axis_type),))
  x = jax.device_put(jax.random.normal(jax.random.key(0), (4, 8)), jax.NamedSharding(mesh, jax.P("streams")))
  w = jax.device_put(jax.random.normal(jax.random.key(1), (8, 5)), jax.NamedSharding(mesh, jax.P()))
  plain = (((1,), (0,)), ((), ()))
  gradients = lambda dot: jax.grad(lambda x, w: jnp.sum(jnp.sin(dot(x, w, plain))), (0, 1))
  in_shard_map = lambda dot: jax.jit(jax.shard_map(gradients(dot), mesh=mesh, in_specs=(jax.P("streams"), jax.P()),
                                                   out_specs=(jax.P("streams"), jax.P())))
  want = jax.jit(gradients(jax.lax.dot_general))(x, w)
  for got in (in_shard_map(layers.cpu_linear_dot)(x, w), jax.jit(gradients(layers.cpu_linear_dot))(x, w)):
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
