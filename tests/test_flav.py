"""FLAV network: parity with the official code, the B/1 layout, causality, block variants, options."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import data_file, load_fixture, random_params, rel_l2, tiny_inputs
from rflav_jax.convert.flav import abstract_params, flav_from_official
from rflav_jax.convert.param_mapping import ConversionError
from rflav_jax.models.flav import FLAV, PRESETS, flav_from_preset


def official_to_ours(v, a):
  """Official (B, T, C, H, W) video and (B, T, 1, N, F) mel -> channels-last (B, T, H, W, C), (B, T, F, N)."""
  return v.transpose(0, 1, 3, 4, 2), a[:, :, 0].transpose(0, 1, 3, 2)


def fixture_model(name):
  d = load_fixture(name)
  config = json.loads(str(d["config_json"]))
  state_dict = {k[len("param/"):]: v for k, v in d.items() if k.startswith("param/")}
  model, params = flav_from_official(state_dict, **config)
  v, a = official_to_ours(d["in/v"], d["in/a"])
  t = ((d["in/t"].astype(np.float64) - 1) / 999).astype(np.float32)  # official t_rf = 1 + 999 t
  y = d["in/y"] if config["num_classes"] else None
  return d, config, model, params, (v, a, t, y)


# Every CPU kernel at once: the transposed-weight-gradient matmul, looped attention, chunks of 8 tokens.
CPU_KERNELS_EVERYWHERE = dict(linear_dot="transposed_weight_grad", looped_attention_min_tokens=1, chunk_tokens=8)


@pytest.mark.parametrize("kernels", [{}, pytest.param(CPU_KERNELS_EVERYWHERE, marks=pytest.mark.slow)], ids=["xla", "cpu_kernels"])
@pytest.mark.parametrize("name", ["flav_small_cond_causal.npz", "flav_small_uncond.npz"])
def test_forward_matches_official(name, kernels):
  d, _, model, params, (v, a, t, y) = fixture_model(name)
  out_v, out_a = model.clone(**kernels).apply({"params": params}, v, a, t, y)
  expected_v, expected_a = official_to_ours(d["out/v"], d["out/a"])
  assert rel_l2(out_v, expected_v) < 1e-5
  assert rel_l2(out_a, expected_a) < 1e-5


def test_classifier_free_guidance_matches_official():
  d, config, model, params, (v, a, t, y) = fixture_model("flav_small_cond_causal.npz")
  cond = model.apply({"params": params}, v, a, t, y)
  uncond = model.apply({"params": params}, v, a, t, np.full_like(y, config["num_classes"]))
  guided = [u + 3.0 * (c - u) for c, u in zip(cond, uncond)]
  expected_v, expected_a = official_to_ours(d["out/cfg3_v"], d["out/cfg3_a"])
  assert rel_l2(guided[0], expected_v) < 1e-5
  assert rel_l2(guided[1], expected_a) < 1e-5


def b1_state_dict(num_classes):
  """Random arrays with every name and shape of the released FLAV-B/1 checkpoint."""
  entries = {}
  for line in data_file("flav_b1_state_dict.txt").read_text().splitlines():
    if not line or line.startswith("#"):
      continue
    name, shape = line.split("\t")
    shape = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    if "y_embedder" in name:
      if not num_classes:
        continue
      shape = (num_classes + 1,) + shape[1:]
    names = [name.replace("blocks.0.", f"blocks.{i}.") for i in range(12)] if name.startswith("blocks.0.") else [name]
    for n in names:
      entries[n] = shape
  rng = np.random.default_rng(0)
  return {n: rng.random(s, dtype=np.float32) for n, s in entries.items()}


B1_ARGS = dict(latent_size=32, patch_size=1, in_channels=4, hidden_size=768, depth=12, num_heads=12,
               predict_frames=10, n_mels=256, causal_attn=True, grad_ckpt=True, audio_fr=16000)


@pytest.mark.slow
@pytest.mark.parametrize("num_classes,count", [(0, 324_013_316), (10, 324_030_212)])
def test_b1_checkpoint_layout_and_parameter_count(num_classes, count):
  state_dict = b1_state_dict(num_classes)
  model, params = flav_from_official(state_dict, num_classes=num_classes, **B1_ARGS)
  assert sum(x.size for x in jax.tree.leaves(params)) == count == sum(x.size for x in state_dict.values())
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  # Spot-check layouts: Linear (out, in) -> kernel (in, out); patch conv (D, C, 1, 1) -> (C, D).
  np.testing.assert_array_equal(params["blocks_11"]["video_mlp"]["fc1"]["kernel"],
                                state_dict["blocks.11.video_mlp.fc1.weight"].T)
  np.testing.assert_array_equal(params["v_embedder"]["kernel"], state_dict["v_embedder.proj.weight"][:, :, 0, 0].T)
  assert PRESETS["FLAV-B/1"] == dict(depth=12, hidden_size=768, num_heads=12, patch_size=1)
  preset = flav_from_preset("FLAV-B/1", num_classes=num_classes, causal_attn=True)
  chex.assert_trees_all_equal_shapes(abstract_params(preset), params)


def small_official_state_dict(num_classes=3):
  d = load_fixture("flav_small_cond_causal.npz")
  state_dict = {k[len("param/"):]: v for k, v in d.items() if k.startswith("param/")}
  return state_dict, json.loads(str(d["config_json"]))


def test_missing_unexpected_and_mismatched_tensors_are_all_listed():
  state_dict, config = small_official_state_dict()
  del state_dict["blocks.1.video_mlp.fc2.bias"]
  del state_dict["audio_final_layer.linear.weight"]
  state_dict["blocks.2.video_mlp.fc1.weight"] = np.zeros((256, 64), np.float32)
  state_dict["blocks.0.video_spatial_attn.qkv.weight"] = np.zeros((191, 64), np.float32)
  with pytest.raises(ConversionError) as error:
    flav_from_official(state_dict, **config)
  message = str(error.value)
  assert "2 missing" in message and "blocks.1.video_mlp.fc2.bias" in message
  assert "audio_final_layer.linear.weight" in message
  assert "1 unexpected" in message and "blocks.2.video_mlp.fc1.weight" in message
  assert "1 shape mismatch" in message and "(191, 64)" in message and "(192, 64)" in message


def test_config_that_contradicts_checkpoint_is_explained():
  state_dict, config = small_official_state_dict()
  with pytest.raises(ConversionError, match=r"(?s)unexpected.*video_y_embedder.*num_classes"):
    flav_from_official(state_dict, **{**config, "num_classes": 0})
  with pytest.raises(ConversionError, match=r"(?s)shape mismatch.*video_temporal_pos_embed"):
    flav_from_official(state_dict, **{**config, "predict_frames": 5})
  with pytest.raises(ValueError, match="unknown FLAV constructor argument.*'hiden_size'"):
    flav_from_official(state_dict, **config, hiden_size=64)


def test_bad_input_shapes_are_explained():
  _, _, model, params, (v, a, t, y) = fixture_model("flav_small_cond_causal.npz")
  with pytest.raises(ValueError, match="video input has shape.*channels-last"):
    model.apply({"params": params}, v.transpose(0, 1, 4, 2, 3), a, t, y)
  with pytest.raises(ValueError, match="audio input has shape"):
    model.apply({"params": params}, v, a.transpose(0, 1, 3, 2), t, y)
  with pytest.raises(ValueError, match="time input has shape"):
    model.apply({"params": params}, v, a, t[:, 0], y)
  with pytest.raises(ValueError, match="labels y must be"):
    model.apply({"params": params}, v, a, t, None)


TINY = dict(latent_size=4, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=4, num_classes=2,
            predict_frames=4, n_mels=8)


@pytest.mark.slow
@pytest.mark.parametrize("block_type", ["a", "b", "c"])
def test_causal_attention_hides_future_frames(block_type):
  model = FLAV(**TINY, causal_attn=True, block_type=block_type)
  params = random_params(model, jax.random.key(0))
  v, a, t, y = tiny_inputs(model, jax.random.key(2))
  k = 1
  v2 = v.at[:, k + 1:].add(1.0)
  a2 = a.at[:, k + 1:].add(1.0)
  t2 = t.at[:, k + 1:].set(0.5)
  apply = jax.jit(model.apply)
  out1 = apply({"params": params}, v, a, t, y)
  out2 = apply({"params": params}, v2, a2, t2, y)
  for x1, x2 in zip(out1, out2):
    np.testing.assert_allclose(x1[:, :k + 1], x2[:, :k + 1], atol=1e-5)
    assert np.abs(x1[:, k + 1:] - x2[:, k + 1:]).max() > 1e-2  # the future itself does change
  # Without the causal mask the past sees the future.
  apply = jax.jit(FLAV(**TINY, causal_attn=False, block_type=block_type).apply)
  out1 = apply({"params": params}, v, a, t, y)
  out2 = apply({"params": params}, v2, a2, t2, y)
  assert np.abs(out1[0][:, :k + 1] - out2[0][:, :k + 1]).max() > 1e-3


@pytest.mark.slow
def test_blocks_a_and_b_are_finite_trainable_and_differ_from_c():
  v, a, t, y = tiny_inputs(FLAV(**TINY), jax.random.key(3))
  outputs = {}
  for block_type in "abc":
    model = FLAV(**TINY, block_type=block_type, causal_attn=True)
    params = random_params(model, jax.random.key(0))
    loss = lambda p: sum(jnp.mean(o ** 2) for o in model.apply({"params": p}, v, a, t, y))
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(value)
    chex.assert_tree_all_finite(grads)
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads)), block_type
    outputs[block_type] = (params, model.apply({"params": params}, v, a, t, y))
  # (b) and (c) share parameter names: same weights, different outputs (c adds the conditioning to the averages).
  b_out = FLAV(**TINY, block_type="b", causal_attn=True).apply({"params": outputs["c"][0]}, v, a, t, y)
  assert np.abs(b_out[0] - outputs["c"][1][0]).max() > 1e-3
  assert "joint_attn" in outputs["a"][0]["blocks_0"] and "v_avg_proj" not in outputs["a"][0]["blocks_0"]
  assert np.abs(outputs["a"][1][0] - outputs["c"][1][0]).max() > 1e-3


@pytest.mark.slow
def test_fresh_model_follows_official_initialisation():
  model = FLAV(**TINY)
  v, a, t, y = tiny_inputs(model, jax.random.key(0))
  params = model.init(jax.random.key(0), v, a, t, y)["params"]
  # adaLN-Zero: every modulation and both final linears start at zero, so the fresh model predicts zero velocity.
  for name in ("video_adaLN_modulation", "audio_adaLN_modulation", "video_scale", "audio_scale"):
    assert not np.any(params["blocks_0"][name]["kernel"])
  out_v, out_a = model.apply({"params": params}, v, a, t, y)
  assert not np.any(out_v) and not np.any(out_a)
  kernel = params["blocks_0"]["video_mlp"]["fc1"]["kernel"]
  assert np.abs(kernel).max() <= np.sqrt(6 / sum(kernel.shape)) and kernel.std() > 0.1 * np.sqrt(2 / sum(kernel.shape))
  assert 0.01 < params["video_y_embedder"]["embedding"].std() < 0.03


@pytest.mark.slow
def test_remat_and_bfloat16_options():
  model = FLAV(**TINY, causal_attn=True)
  params = random_params(model, jax.random.key(0))
  v, a, t, y = tiny_inputs(model, jax.random.key(4))

  def grads(m):
    return jax.jit(jax.grad(lambda p: sum(jnp.sum(o ** 2) for o in m.apply({"params": p}, v, a, t, y))))(params)

  reference = grads(model)
  rematted = grads(FLAV(**TINY, causal_attn=True, remat=True, remat_policy="dots_saveable"))
  for g1, g2 in zip(jax.tree.leaves(reference), jax.tree.leaves(rematted)):
    assert rel_l2(g2, g1) < 1e-5
  low = FLAV(**TINY, causal_attn=True, dtype=jnp.bfloat16).apply({"params": params}, v, a, t, y)
  high = model.apply({"params": params}, v, a, t, y)
  assert low[0].dtype == jnp.float32
  assert rel_l2(low[0], high[0]) < 5e-2
  with pytest.raises(ValueError, match="remat_policy"):
    FLAV(**TINY, remat=True, remat_policy="everything").init(jax.random.key(0), v, a, t, y)


@pytest.mark.slow
def test_label_dropout_uses_the_null_label_only_in_training():
  model = FLAV(**TINY, class_dropout_prob=0.5, label_dropout="shared")
  params = random_params(model, jax.random.key(0))
  v, a, t, _ = tiny_inputs(model, jax.random.key(5))
  v, a, t = (jnp.repeat(x[:1], 64, axis=0) for x in (v, a, t))
  y = jnp.zeros((64,), jnp.int32)
  apply = jax.jit(model.apply, static_argnames="train")
  cond = apply({"params": params}, v, a, t, y)[0]
  null = apply({"params": params}, v, a, t, jnp.full_like(y, 2))[0]
  dropped = apply({"params": params}, v, a, t, y, train=True, rngs={"dropout": jax.random.key(7)})[0]
  is_null = np.abs(dropped - null).reshape(64, -1).max(axis=1) < 1e-5
  is_cond = np.abs(dropped - cond).reshape(64, -1).max(axis=1) < 1e-5
  assert np.all(is_null ^ is_cond) and 16 < is_null.sum() < 48


@pytest.mark.slow
def test_label_dropout_per_branch_draws_each_branchs_label_on_its_own():
  """As the official model: the video and the audio label embeddings drop their label in separate draws, so all
  four combinations occur, each about a quarter of the time at probability 0.5."""
  model = FLAV(**TINY, class_dropout_prob=0.5)
  assert model.label_dropout == "per_branch"
  params = random_params(model, jax.random.key(0))
  v, a, t, _ = tiny_inputs(model, jax.random.key(5))
  v, a, t = (jnp.repeat(x[:1], 256, axis=0) for x in (v, a, t))
  y = jnp.zeros((256,), jnp.int32)
  apply = jax.jit(model.apply, static_argnames="train")
  flat = lambda outputs: np.concatenate([np.asarray(x).reshape(256, -1) for x in outputs], axis=1)

  def null_in(*branches):
    """The outputs for label 0 with the given branches' tables embedding it as the null label (2)."""
    tables = {f"{b}_y_embedder": {"embedding": jnp.asarray(params[f"{b}_y_embedder"]["embedding"]).at[0].set(
        params[f"{b}_y_embedder"]["embedding"][2])} for b in branches}
    return flat(apply({"params": {**params, **tables}}, v, a, t, y))[0]

  dropped = flat(apply({"params": params}, v, a, t, y, train=True, rngs={"dropout": jax.random.key(7)}))
  references = {"neither": null_in(), "video": null_in("video"), "audio": null_in("audio"),
                "both": null_in("video", "audio")}
  matches = {name: np.abs(dropped - ref).max(axis=1) < 1e-5 for name, ref in references.items()}
  assert np.all(sum(matches.values()) == 1)  # each example is exactly one of the four combinations
  counts = {name: int(match.sum()) for name, match in matches.items()}
  assert all(32 < count < 96 for count in counts.values()), counts
  with pytest.raises(ValueError, match="label_dropout='each'"):
    FLAV(**TINY, label_dropout="each").init(jax.random.key(0), v[:1], a[:1], t[:1], y[:1])
