"""Official HiFi-GAN generator weights (`vocoder.pt` + config.json) -> Flax `HifiGanGenerator` params.

Released generators store each conv with weight normalisation: `<conv>.weight_g` (out, 1, 1) and
`<conv>.weight_v`, or in newer torch `<conv>.parametrizations.weight.original0` / `original1`. The plain
kernel is g * v / ||v||, the norm taken over all axes but the first (torch's weight_norm, dim=0).
Flax paths mirror the official names with "_<index>" for ".<index>":
("resblocks_3", "convs1_2", "kernel") <- "resblocks.3.convs1.2.weight".
"""
import pathlib
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from rflav_jax.build import abstract_params
from rflav_jax.codecs.hifigan import HifiGanConfig, HifiGanGenerator
from rflav_jax.convert import param_mapping
from rflav_jax.convert.checkpoint_io import read_release
from rflav_jax.convert.param_mapping import CONV, IDENTITY, Layout, Source

# (magnitude, direction) suffixes of weight-normalised tensors, old and new torch naming.
_WEIGHT_NORM_SUFFIXES = ((".weight_g", ".weight_v"),
                         (".parametrizations.weight.original0", ".parametrizations.weight.original1"))
# torch ConvTranspose1d weight (in, out, k) -> the flipped correlation kernel (k, in, out) of UpsampleConv.
TRANSPOSED_CONV = Layout(lambda w: np.flip(w, -1).transpose(2, 0, 1), lambda s: (s[1], s[2], s[0]))


def fold_weight_norm(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Replaces every (magnitude, direction) pair by `<conv>.weight` = g * v / ||v||; other tensors pass.

  A lone half of a pair is kept under its own name, so the converter reports it as unexpected.
  """
  folded = dict(state_dict)
  for g_suffix, v_suffix in _WEIGHT_NORM_SUFFIXES:
    for g_name in [n for n in state_dict if n.endswith(g_suffix)]:
      base = g_name[: -len(g_suffix)]
      if base + v_suffix not in state_dict:
        continue
      g = np.asarray(folded.pop(g_name), np.float64)
      v = np.asarray(folded.pop(base + v_suffix), np.float64)
      norm = np.sqrt(np.sum(v ** 2, axis=tuple(range(1, v.ndim)), keepdims=True))
      folded[base + ".weight"] = (g * v / norm).astype(np.float32)
  return folded


def official_name(path: tuple[str, ...]) -> str:
  """Official (weight-norm-folded) name of a Flax generator parameter path."""
  *modules, leaf = path
  prefix = ".".join(re.sub(r"_(\d+)$", r".\1", m) for m in modules)
  return f"{prefix}.{'bias' if leaf == 'bias' else 'weight'}"


def select_generator(checkpoint: Any) -> Mapping[str, np.ndarray]:
  """The generator state dict: a vocoder.pt dict's "generator" entry, or the checkpoint itself."""
  if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("generator"), Mapping):
    return checkpoint["generator"]
  if isinstance(checkpoint, Mapping) and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
    return checkpoint
  found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
  raise ValueError(f"vocoder checkpoint holds {found}; expected a generator state dict or a dict with a "
                   "'generator' entry (the released vocoder.pt / g_* files).")


def hifigan_from_official(state_dict: Mapping[str, Any], config: Mapping[str, Any],
                          dtype=jnp.float32) -> tuple[HifiGanGenerator, dict]:
  """Builds the generator from the vocoder config.json dict and loads official weights into it.

  `state_dict` is the released vocoder.pt dict (with a "generator" entry) or the bare generator state dict.
  Returns (model, params) with `model.apply({"params": params}, log_mel (B, frames, N)) -> (B, samples)`.
  Raises ConversionError listing every missing, unexpected or mis-shaped tensor.
  """
  model = HifiGanGenerator(HifiGanConfig.from_dict(config), dtype)
  shapes = param_mapping.param_shapes(abstract_params(model))
  sources = {}
  for path in shapes:
    if path[-1] == "bias":
      layout = IDENTITY
    elif path[0].startswith("ups_"):
      layout = TRANSPOSED_CONV
    else:
      layout = CONV
    sources[path] = Source([official_name(path)], layout)
  hint = ("Check the vocoder config against the checkpoint: num_mels, upsample_rates / upsample_kernel_sizes, "
          "upsample_initial_channel, resblock ('1' or '2') and resblock kernel / dilation sizes.")
  params = param_mapping.fill_params(fold_weight_norm(select_generator(state_dict)), sources, shapes,
                                     "HiFi-GAN generator state dict", hint)
  return model, params


def hifigan_from_folder(folder: str | pathlib.Path, weights: str | None = None,
                        dtype=jnp.float32) -> tuple[HifiGanGenerator, dict]:
  """(model, params) from a vocoder folder: config.json + the generator checkpoint (e.g. vocoder.pt)."""
  state_dict, config, _ = read_release(folder, weights, "vocoder folder: config.json + vocoder.pt")
  return hifigan_from_official(state_dict, config, dtype)
