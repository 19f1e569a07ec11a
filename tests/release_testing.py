"""Folders laid out as the releases on the Hugging Face hub, holding random weights under the official names.

  MaverickAlex/R-FLAV-B-1-AIST, -LS: FLAV (config.json + model.safetensors or a .pt training checkpoint) at the top,
      the HiFi-GAN in vocoder/ (config.json + vocoder.pt, weight-normalised convs);
  stabilityai/sd-vae-ft-ema: the diffusers AutoencoderKL at the top (config.json + diffusion_pytorch_model
      .safetensors and .bin, the older attention names).
Each folder also holds what `hf download --local-dir` leaves beside the weights (README.md, .gitattributes,
.cache/huggingface/). The writers return the Flax params whose official form they wrote, for round trips.
"""
import json
import pathlib

import jax
import numpy as np
import torch
from safetensors.numpy import save_file

from rflav_jax.build import abstract_params
from rflav_jax.codecs.hifigan import HifiGanConfig, HifiGanGenerator
from rflav_jax.codecs.sdvae import AutoencoderKL, VaeConfig
from rflav_jax.convert import flav, hifigan, sdvae
from rflav_jax.convert.flav import model_from_official_args

# Small stand-ins of the three releases that fit together: FLAV latents 4x8x8 <-> an SD-VAE with one downsampling
# (16x16 frames); 16 mel bins <-> a HiFi-GAN of hop 160 (16 kHz, 10 fps, 10 mel columns per frame).
SMALL_FLAV = dict(latent_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, mlp_ratio=4.0,
                  class_dropout_prob=0.1, num_classes=10, predict_frames=10, n_mels=16, causal_attn=True,
                  grad_ckpt=False, audio_fr=16000)
SMALL_VOCODER = dict(num_mels=16, upsample_rates=[8, 5, 4], upsample_kernel_sizes=[16, 10, 8],
                     upsample_initial_channel=16, resblock="1", resblock_kernel_sizes=[3],
                     resblock_dilation_sizes=[[1, 3, 5]], sampling_rate=16000, hop_size=160, segment_size=8192)
SMALL_VAE = dict(_class_name="AutoencoderKL", in_channels=3, out_channels=3,
                 down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                 block_out_channels=[32, 64], layers_per_block=1, latent_channels=4, norm_num_groups=16,
                 act_fn="silu", sample_size=16)
# What `hf download --local-dir` writes beside a repository's files.
_HUB_FILES = {"README.md": "---\nlicense: mit\n---\n", ".gitattributes": "*.pt filter=lfs\n",
              ".cache/huggingface/download/config.json.metadata": "0123abcd\n"}


def random_params(model, seed: int) -> dict:
  """Random float32 params of a FLAV, AutoencoderKL or HifiGanGenerator (N(0, 0.05^2) in every entry)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), abstract_params(model))


def official_flav(params, patch_size: int, in_channels: int) -> dict[str, np.ndarray]:
  """FLAV params -> the official state dict: Linear (out, in), the patch embedding a Conv2d (D, C, p, p)."""
  state = {}
  for path, w in _flat(params):
    if path[0] == "v_embedder" and path[-1] == "kernel":
      w = np.moveaxis(w.reshape(patch_size, patch_size, in_channels, -1), (-1, -2), (0, 1))
    elif path[-1] == "kernel":
      w = w.T
    state[flav.official_name(path)] = w
  return state


def official_hifigan(params) -> dict[str, np.ndarray]:
  """HiFi-GAN params -> the official generator state dict, every conv weight-normalised (weight_g, weight_v)."""
  state = {}
  for path, w in _flat(params):
    name = hifigan.official_name(path)
    if path[-1] != "kernel":
      state[name] = w
      continue
    if path[0].startswith("ups_"):  # ConvTranspose1d (in, out, k), applied as a flipped correlation
      w = np.flip(w.transpose(1, 2, 0), -1)
    else:  # Conv1d (out, in, k)
      w = np.moveaxis(w, (-1, -2), (0, 1))
    w = np.ascontiguousarray(w)
    state[name + "_g"] = np.sqrt(np.sum(w.astype(np.float64) ** 2, axis=(1, 2), keepdims=True)).astype(np.float32)
    state[name + "_v"] = w
  return state


def diffusers_vae(params) -> dict[str, np.ndarray]:
  """SD-VAE params -> a diffusers state dict with the older attention names (query, key, value, proj_attn)."""
  state = {}
  for path, w in _flat(params):
    if path[-1] == "kernel":
      w = np.moveaxis(w, (-1, -2), (0, 1)) if w.ndim == 4 else w.T
    state[sdvae.diffusers_names(path)[-1]] = np.ascontiguousarray(w)
  return state


def write_flav_release(folder, num_classes: int, weights: str = "safetensors", seed: int = 0,
                       flav_config: dict = SMALL_FLAV, vocoder_config: dict = SMALL_VOCODER, flav_params=None,
                       vocoder_params=None) -> tuple[dict, dict]:
  """An R-FLAV-B-1 repository: FLAV at the top (weights "safetensors": model.safetensors, "pt": a training
  checkpoint {"model", "ema", "opt"} with DDP names), HiFi-GAN in vocoder/; returns (FLAV params, vocoder params).

  The params are random unless given (e.g. a stand-in's, rflav_jax.standins, whose initialisers keep B/1 finite).
  """
  folder = pathlib.Path(folder)
  config = {**flav_config, "num_classes": num_classes}
  if flav_params is None:
    flav_params = random_params(model_from_official_args(**config), seed)
  state = official_flav(flav_params, config["patch_size"], config["in_channels"])
  _write_hub_files(folder, config)
  if weights == "safetensors":
    save_file(state, str(folder / "model.safetensors"))
  else:
    ema = {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}
    torch.save({"model": {k: v * 0 for k, v in ema.items()}, "ema": ema, "opt": {}}, folder / "R-FLAV-B-1.pt")
  if vocoder_params is None:
    vocoder_params = random_params(HifiGanGenerator(HifiGanConfig.from_dict(vocoder_config)), seed + 1)
  _write_hub_files(folder / "vocoder", vocoder_config, readme=False)
  generator = {k: torch.from_numpy(v) for k, v in official_hifigan(vocoder_params).items()}
  torch.save({"generator": generator}, folder / "vocoder" / "vocoder.pt")
  return flav_params, vocoder_params


def write_vae_release(folder, seed: int = 0, config: dict = SMALL_VAE, params=None) -> dict:
  """The sd-vae-ft-ema repository: the AutoencoderKL at the top in safetensors and .bin; returns its params (random
  unless given)."""
  folder = pathlib.Path(folder)
  if params is None:
    params = random_params(AutoencoderKL(VaeConfig.from_diffusers(config)), seed)
  state = diffusers_vae(params)
  _write_hub_files(folder, config)
  save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, folder / "diffusion_pytorch_model.bin")
  return params


def _write_hub_files(folder: pathlib.Path, config: dict, readme: bool = True) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config, indent=2))
  for name, text in _HUB_FILES.items() if readme else ():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def _flat(params):
  return [(tuple(k.key for k in path), np.asarray(w)) for path, w in jax.tree_util.tree_flatten_with_path(params)[0]]
