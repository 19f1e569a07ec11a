"""Official FLAV (PyTorch) state dicts -> `rflav_jax.models.flav.FLAV` params.

Every Flax parameter path has one official name, derived by `official_name`; e.g.
("blocks_3", "video_temporal_attn", "qkv", "kernel") <- "blocks.3.video_temporal_attn.qkv.weight" (transposed).
"""
import re
from typing import Any, Mapping

import numpy as np

from rflav_jax.build import abstract_params
from rflav_jax.convert import param_mapping
from rflav_jax.convert.param_mapping import CONV, IDENTITY, LINEAR, Layout, Source
from rflav_jax.models.flav import FLAV

# Arguments of the official FLAV constructor (and of a release's config.json) -> FLAV attributes.
OFFICIAL_ARGS = {
    "latent_size": "latent_size", "patch_size": "patch_size", "in_channels": "in_channels",
    "hidden_size": "hidden_size", "depth": "depth", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio",
    "class_dropout_prob": "class_dropout_prob", "num_classes": "num_classes",
    "predict_frames": "predict_frames", "n_mels": "n_mels", "causal_attn": "causal_attn",
    "grad_ckpt": "remat",
}
# Accepted for compatibility; they do not change the weights or the forward pass.
IGNORED_ARGS = ("audio_fr",)
# Official Sequential indices: adaLN / modulation linears follow a SiLU, the average projections come first.
_SEQUENTIAL_INDEX = {"video_adaLN_modulation": "1", "audio_adaLN_modulation": "1", "adaLN_modulation": "1",
                     "video_scale": "1", "audio_scale": "1", "v_avg_proj": "0", "a_avg_proj": "0"}
_RENAMES = {"fc1": "mlp.0", "fc2": "mlp.2"}  # inside the time embedders only


def official_name(path: tuple[str, ...]) -> str:
  """Official parameter name of a Flax FLAV parameter path."""
  parts = []
  for i, part in enumerate(path):
    if part.startswith("blocks_"):
      part = "blocks." + part[len("blocks_"):]
    elif part in _SEQUENTIAL_INDEX:
      part = f"{part}.{_SEQUENTIAL_INDEX[part]}"
    elif part in _RENAMES and path[i - 1].endswith("t_embedder"):
      part = _RENAMES[part]
    elif part == "v_embedder":
      part = "v_embedder.proj"
    elif part == "kernel":
      part = "weight"
    elif part == "embedding":
      part = "embedding_table.weight"
    parts.append(part)
  return ".".join(parts)


def _patch_embed_layout(patch_size: int, in_channels: int) -> Layout:
  """Conv2d (D, C, p, p) with stride p == Dense over (p, p, C)-ordered patches: kernel (p*p*C, D)."""
  return Layout(lambda w: CONV.forward(w).reshape(-1, w.shape[0]),
                lambda s: (s[1], in_channels, patch_size, patch_size))


def model_from_official_args(**official_kwargs) -> FLAV:
  """FLAV from the official constructor arguments, plus any FLAV attribute (dtype, block_type, ...)."""
  unknown = sorted(set(official_kwargs) - set(OFFICIAL_ARGS) - set(IGNORED_ARGS) - set(FLAV.__dataclass_fields__))
  if unknown:
    raise ValueError(f"unknown FLAV constructor argument(s) {unknown}; official arguments are {sorted(OFFICIAL_ARGS)}")
  latent_size = official_kwargs.get("latent_size")
  if isinstance(latent_size, (list, tuple)):
    if len(set(latent_size)) != 1:
      raise ValueError(f"latent_size={latent_size}: only square latents are supported")
    official_kwargs["latent_size"] = latent_size[0]
  kwargs = {OFFICIAL_ARGS.get(k, k): v for k, v in official_kwargs.items() if k not in IGNORED_ARGS}
  return FLAV(**kwargs)


def flav_from_official(state_dict: Mapping[str, np.ndarray], **official_kwargs) -> tuple[FLAV, dict]:
  """Builds FLAV from official constructor arguments and loads an official state dict into it.

  Returns (model, params) for `model.apply({"params": params}, v (B, T, H, W, C), a (B, T, 10, N), t (B, T), y (B,))`.
  Raises ConversionError listing every missing, unexpected or mis-shaped tensor.
  """
  model = model_from_official_args(**official_kwargs)
  shapes = param_mapping.param_shapes(abstract_params(model))
  patch_embed = _patch_embed_layout(model.patch_size, model.in_channels)
  sources = {}
  for path in shapes:
    if path[0] == "v_embedder" and path[-1] == "kernel":
      layout = patch_embed
    elif path[-1] == "kernel":
      layout = LINEAR
    else:
      layout = IDENTITY
    sources[path] = Source([official_name(path)], layout)
  hint = ("Check that the config matches the checkpoint: num_classes (label tables present?), hidden_size, depth, "
          "patch_size, in_channels, latent_size, predict_frames and n_mels.")
  params = param_mapping.fill_params(state_dict, sources, shapes, "FLAV checkpoint", hint)
  return model, params


def select_state_dict(checkpoint: Any, use_ema: bool = True) -> dict:
  """The FLAV state dict inside a loaded checkpoint: the file itself, or its "ema" / "model" entry."""
  if isinstance(checkpoint, Mapping) and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
    state_dict = dict(checkpoint)
  else:
    keys = ("ema", "model") if use_ema else ("model", "ema")
    entry = next((k for k in keys if isinstance(checkpoint, Mapping) and k in checkpoint), None)
    if entry is None:
      found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
      raise ValueError(f"checkpoint holds {found}: expected a state dict or a dict with an 'ema' or 'model' entry")
    state_dict = dict(checkpoint[entry])
  return {re.sub(r"^(module|_orig_mod)\.", "", k): v for k, v in state_dict.items()}

