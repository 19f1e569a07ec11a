"""Kernel choice and the CPU kernels. The builder picks cuDNN, looped attention, the transposed-weight-gradient
matmul and chunking only on the platforms they apply to; and those kernels compute the same function: looped
attention (one sequence and head at a time) is XLA's attention, token-wise work in chunks (`layers.in_chunks`) is
the whole computation, and Linear layers whose weight gradient multiplies a transposed input
(`layers.transposed_weight_grad_dot`) have XLA's values and gradients."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params, rel_l2, tiny_inputs
from rflav_jax.models import flav, layers, platforms
from rflav_jax.models.platforms import Platform, current_platform
from rflav_jax.models.splash import splash_attention

CPU, GPU_WITH_CUDNN, TPU = Platform("cpu"), Platform("gpu", cudnn_attention=True), Platform("tpu")
SMALL = dict(latent_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=2,
             predict_frames=4, n_mels=16, causal_attn=True)


def test_builder_runs_cudnn_or_looped_attention_only_where_it_applies():
  cpu, gpu = (flav.flav_from_config(SMALL, platform) for platform in (CPU, GPU_WITH_CUDNN))
  assert (cpu.linear_dot, cpu.chunk_tokens, cpu.cudnn_attention) == ("transposed_weight_grad", 2048, False)
  assert (gpu.linear_dot, gpu.chunk_tokens, gpu.looped_attention_min_tokens) == ("xla", None, None)
  choose = gpu.kernels.attention  # (compute dtype, head dim, tokens, masked)
  assert choose(jnp.bfloat16, 64, 10, False) == choose(jnp.bfloat16, 64, 1024, False) == "cudnn"
  assert choose(jnp.float16, 64, 11, True) == "xla"  # a mask needs an even token count
  assert choose(jnp.float32, 64, 1024, False) == "xla"  # float32 (the parity tests) stays on XLA; no loop on GPUs
  assert choose(jnp.bfloat16, 12, 10, False) == choose(jnp.bfloat16, 256, 10, False) == "xla"  # head dim: 8k up to 128
  choose = cpu.kernels.attention  # long sequences run looped
  assert choose(jnp.bfloat16, 64, 10, False) == choose(jnp.float32, 64, 255, True) == "xla"
  assert choose(jnp.float32, 64, 256, True) == choose(jnp.bfloat16, 64, 1024, False) == "looped"
  assert flav.flav_from_config(SMALL, Platform("gpu")).kernels == layers.Kernels()  # no cuDNN: XLA's kernels
  tpu = flav.flav_from_config(SMALL, TPU).kernels  # splash attention for long sequences, XLA's otherwise
  assert tpu == layers.Kernels(splash_attention_min_tokens=platforms.TPU_SPLASH_MIN_TOKENS)
  assert tpu.attention(jnp.float32, 64, 1024, False) == tpu.attention(jnp.bfloat16, 64, 10340, True) == "splash"
  assert tpu.attention(jnp.bfloat16, 64, 10, False) == tpu.attention(jnp.bfloat16, 64, 100, False) == "xla"
  assert flav.FLAV(**SMALL).kernels == layers.Kernels()  # built directly: XLA's kernels everywhere
  # The config's attention_impl ("auto", None and "" alike by default) and any kernel attribute it sets are kept.
  for impl in (None, "", "auto"):
    auto = flav.flav_from_config({**SMALL, "attention_impl": impl}, CPU).kernels
    assert auto.attention(jnp.float32, 8, 300, False) == "looped"
  for impl in ("xla", "cudnn", "looped", "splash"):
    for platform in (CPU, GPU_WITH_CUDNN, TPU):
      model = flav.flav_from_config({"preset": "FLAV-S/2", "attention_impl": impl}, platform)
      assert model.hidden_size == 384 and model.kernels.attention(jnp.bfloat16, 64, 300, False) == impl
  assert flav.flav_from_config({**SMALL, "chunk_tokens": None}, CPU).chunk_tokens is None
  with pytest.raises(ValueError, match="flash"):
    flav.flav_from_config({**SMALL, "attention_impl": "flash"}, CPU).kernels


def test_platform_choices_are_not_stored_and_follow_the_model_to_other_devices():
  cpu = flav.flav_from_config(SMALL, CPU)
  stored = flav.flav_args(cpu)
  assert not set(stored) & set(flav.PLATFORM_ARGS) and stored["attention_impl"] is None
  gpu = flav.flav_from_config(stored, GPU_WITH_CUDNN)
  assert flav.flav_args(gpu) == stored and gpu.kernels == flav.for_platform(cpu, GPU_WITH_CUDNN).kernels
  assert flav.for_platform(flav.FLAV(**SMALL), CPU).kernels == cpu.kernels
  assert flav.for_platform(gpu, CPU).kernels == cpu.kernels
  here = current_platform()  # the default: JAX's default devices
  assert here.name == jax.default_backend()
  assert flav.flav_from_config(SMALL).kernels == flav.for_platform(flav.FLAV(), here).kernels


def test_bad_kernel_attributes_are_named():
  for bad, match in [(dict(attention_impl="flash"), "attention implementation 'flash'"),
                     (dict(linear_dot="cpu"), "linear_dot='cpu'"), (dict(chunk_tokens=0), "chunk_tokens=0"),
                     (dict(looped_attention_min_tokens=-1), "looped_attention_min_tokens=-1"),
                     (dict(splash_attention_min_tokens=0), "splash_attention_min_tokens=0")]:
    with pytest.raises(ValueError, match=match):
      layers.Kernels(**bad)


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


def xla_attention(is_causal, mask):
  return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, mask=mask, implementation="xla")


def values_and_gradients(attend, q, k, v):
  """attend(q, k, v) and the gradients of a loss that weighs every output differently."""
  weights = jax.random.normal(jax.random.key(5), q.shape)
  loss = lambda *x: jnp.sum(attend(*x) * weights)
  return jax.jit(attend)(q, k, v), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("is_causal, masked", [pytest.param(*case, marks=pytest.mark.slow)
                                               for case in [(False, False), (True, False), (False, True)]] +
                         [(True, True)])
def test_splash_attention_matches_xla_values_and_gradients(is_causal, masked):
  """The Pallas TPU kernel in interpret mode on the CPU; 200 tokens, which it pads to two 128-token blocks."""
  q, k, v = qkv(seed=int(is_causal) + 2 * int(masked), shape=(2, 200, 2, 16))
  n = q.shape[1]
  mask = np.asarray(jax.random.bernoulli(jax.random.key(9), 0.7, (n, n))) | np.eye(n, dtype=bool) if masked else None
  splash = lambda q, k, v: splash_attention(q, k, v, is_causal=is_causal, mask=mask, interpret=True)
  (got, got_grads), (want, want_grads) = (values_and_gradients(f, q, k, v)
                                          for f in (splash, xla_attention(is_causal, mask)))
  assert rel_l2(got, want) < 1e-5
  for got_grad, want_grad in zip(got_grads, want_grads):
    assert rel_l2(got_grad, want_grad) < 1e-5


def test_splash_attention_refuses_a_traced_mask():
  q, k, v = qkv(seed=0, shape=(1, 8, 1, 8))
  traced_mask = lambda q: splash_attention(q, k, v, mask=jnp.ones((8, 8), bool) & (q[0, :, 0, :1] > -9), interpret=True)
  with pytest.raises(ValueError, match="concrete mask"):
    jax.jit(traced_mask)(q)


@pytest.mark.slow
@pytest.mark.parametrize("block_type", ["c", "a"])
def test_flav_with_splash_attention_has_xlas_outputs_and_gradients(block_type):
  """Every attention of a causal FLAV through the interpreted kernel: spatial, causal temporal and audio attention
  (block "c"), and the frame-causal mask of the joint attention (block "a")."""
  xla_model = flav.FLAV(**SMALL, block_type=block_type)
  splash_model = xla_model.clone(attention_impl="auto", splash_attention_min_tokens=1, pallas_interpret=True)
  assert splash_model.kernels.attention(jnp.float32, 16, 4, True) == "splash"
  v, a, t, y = tiny_inputs(xla_model, jax.random.key(3))
  params = random_params(xla_model, jax.random.key(4))

  def run(model):
    outputs = lambda p: model.apply({"params": p}, v, a, t, y)
    loss = lambda p: sum(jnp.sum(o * jnp.cos(jnp.arange(o.size).reshape(o.shape))) for o in outputs(p))
    return jax.jit(outputs)(params), jax.jit(jax.grad(loss))(params)

  (got, got_grads), (want, want_grads) = run(splash_model), run(xla_model)
  for got_out, want_out in zip(got, want):
    assert rel_l2(got_out, want_out) < 1e-5
  jax.tree.map(lambda g1, g2: np.testing.assert_array_less(rel_l2(g1, g2), 1e-5), got_grads, want_grads)


def test_looped_attention_in_bfloat16_stays_within_its_rounding():
  q, k, v = qkv(seed=7, dtype=jnp.bfloat16)
  exact = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), implementation="xla")
  out = layers.looped_attention(q, k, v)
  assert out.dtype == jnp.bfloat16 and rel_l2(out.astype(jnp.float32), exact) < 1e-2


def test_attention_module_gives_the_same_output_with_either_implementation():
  x = jax.random.normal(jax.random.key(1), (2, 300, 32))  # 300 tokens: "auto" on a CPU picks "looped"
  module = layers.Attention(num_heads=4)
  params = module.init(jax.random.key(0), x)
  cpu = flav.for_platform(flav.FLAV(), CPU).kernels
  outputs = {impl: layers.Attention(4, kernels=dataclasses.replace(cpu, attention_impl=impl)).apply(params, x)
             for impl in ("auto", "looped", "xla")}
  assert cpu.attention(jnp.float32, 8, 300, False) == "looped"
  np.testing.assert_array_equal(outputs["auto"], outputs["looped"])
  assert rel_l2(outputs["looped"], outputs["xla"]) < 1e-6


def test_chunks_cut_whole_sequences_into_equal_chunks_of_at_most_the_limit():
  chunks = layers.Kernels(chunk_tokens=2048).chunks  # the CPU's limit
  assert flav.flav_from_config(SMALL, CPU).chunk_tokens == 2048
  assert chunks(2, 1024) == 1  # 2048 tokens: whole
  assert chunks(20, 1024) == 10  # FLAV-B/1 spatial attention, batch 2: two frames per chunk
  assert chunks(20480, 1) == 10  # its MLP rows
  assert chunks(2048, 10) == 16  # its temporal attention: 128 sequences of 10 per chunk
  assert chunks(3, 5000) == 3  # sequences longer than the limit: one per chunk
  assert chunks(7, 1000) == 7  # 7 is prime: the fewest equal chunks of <= 2048 tokens is 7
  for sequences, tokens in [(20, 1024), (2048, 10), (20480, 1), (96, 100)]:
    assert sequences % chunks(sequences, tokens) == 0
    assert sequences // chunks(sequences, tokens) * tokens <= 2048 or sequences // chunks(sequences, tokens) == 1
  assert layers.Kernels().chunks(20480, 1) == 1  # no chunk_tokens: whole


@pytest.mark.slow
def test_flav_in_chunks_has_the_same_parameters_outputs_and_gradients():
  whole_model = flav.FLAV(**SMALL)
  v, a, t, y = tiny_inputs(whole_model, jax.random.key(3))

  def run(model):
    params = random_params(model, jax.random.key(4))  # N(0, 0.2): zero-initialised gates would hide differences
    loss = lambda p: sum(jnp.sum(o * jnp.cos(jnp.arange(o.size).reshape(o.shape)))
                         for o in model.apply({"params": p}, v, a, t, y))
    return (flav.init_params(model, 0), jax.jit(model.apply)({"params": params}, v, a, t, y),
            jax.jit(jax.grad(loss))(params))

  whole = run(whole_model)
  # 8 tokens per chunk: spatial attention one frame (16 patches) per chunk, temporal 2 sequences, MLP 8 rows.
  chunked_model = whole_model.clone(chunk_tokens=8)
  assert chunked_model.kernels.chunks(8, 16) == 8 and chunked_model.kernels.chunks(32, 4) == 16
  chunked = run(chunked_model)
  assert jax.tree.structure(chunked[0]) == jax.tree.structure(whole[0])
  chex.assert_trees_all_equal(chunked[0], whole[0])
  for out_chunked, out_whole in zip(chunked[1], whole[1]):
    assert rel_l2(out_chunked, out_whole) < 1e-5  # float32 rounding; a wrong cut would be O(1)
  jax.tree.map(lambda g1, g2: np.testing.assert_array_less(rel_l2(g1, g2), 1e-4), chunked[2], whole[2])


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-6), (jnp.bfloat16, 1e-2)])
def test_transposed_weight_grad_dot_has_xla_values_and_gradients(dtype, tolerance):
  x, w = (jax.random.normal(key, shape, dtype) for key, shape in zip(jax.random.split(jax.random.key(5)),
                                                                      [(3, 5, 8), (8, 6)]))
  plain = (((2,), (0,)), ((), ()))
  ours = lambda x, w: layers.transposed_weight_grad_dot(x, w, plain)
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
  np.testing.assert_array_equal(layers.transposed_weight_grad_dot(x, y, other), jax.lax.dot_general(x, y, other))


@pytest.mark.slow
def test_flav_with_transposed_weight_gradients_has_the_same_gradients_and_no_first_axis_contraction():
  """The CPU's Linear layers give XLA's gradients, and no GEMM of the compiled gradient contracts over its left
  operand's first axis (the form XLA:CPU runs through Eigen instead of YNNPACK)."""
  xla_model = flav.FLAV(**SMALL)
  v, a, t, y = tiny_inputs(xla_model, jax.random.key(3))
  params = random_params(xla_model, jax.random.key(4))

  def gradients(model):
    loss = lambda p: sum(jnp.sum(o * jnp.cos(jnp.arange(o.size).reshape(o.shape)))
                         for o in model.apply({"params": p}, v, a, t, y))
    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    first_axis = [line for line in compiled.as_text().splitlines()
                  if " dot(" in line and "lhs_contracting_dims={0}" in line]
    return compiled(params), first_axis

  want, xla_first_axis = gradients(xla_model)
  got, ours_first_axis = gradients(xla_model.clone(linear_dot="transposed_weight_grad"))
  assert xla_first_axis and not ours_first_axis
  jax.tree.map(lambda g1, g2: np.testing.assert_array_less(rel_l2(g1, g2), 1e-5), got, want)


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_transposed_weight_grad_dot_gradients_inside_shard_map_and_on_a_sharded_mesh_are_xlas(axis_type):
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
  ours = layers.transposed_weight_grad_dot
  for got in (in_shard_map(ours)(x, w), jax.jit(gradients(ours))(x, w)):
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
