r"""Train a tiny pixel-space FLAV on the built-in bouncing-ball set: on a laptop CPU, or the shipped model on a GPU.

  python -m launch.train --config=configs/train_synthetic_tiny.py:gpu --workdir=workdir/gpu   # the shipped model
  python -m launch.sample --config.checkpoint=workdir/gpu/export
  python -m launch.train --config=configs/train_synthetic_tiny.py --workdir=workdir/tiny      # CPU: a smaller model
  python -m launch.sample --config.checkpoint=workdir/tiny/export --config.model.patch_size=8 --config.model.depth=2
  python -m launch.train --config=configs/train_synthetic_tiny.py:micro --workdir=/tmp/micro  # seconds: a smoke test

Sections: model / codec / vocoder / sample / audio_scale / seed as in the sampling config it extends (the
samples written during training use them), plus data, optim, loss, ema and train.
"""
import ml_collections

from configs import synthetic_tiny


def get_config(variant: str = ""):
  """variant "" (the CPU recipe), "gpu" (the shipped model's recipe) or "micro" (a few thousand weights, for tests)."""
  config = synthetic_tiny.get_config()
  config.checkpoint = ""  # a converted folder to start from instead of fresh weights (fine-tuning)
  if variant != "gpu":
    # The CPU recipe trains the earlier shipped model's size, 8x8 patches and 2 blocks: a quarter of the shipped
    # model's tokens, so that a 2-core CPU gets through its steps in about 17 minutes (README).
    config.model.update(patch_size=8, depth=2)
  # The shipped model was trained dropping both branches' labels in one draw; the official model (FLAV's default,
  # "per_branch") draws for each branch.
  config.model.label_dropout = "shared"

  # Data: the bouncing-ball set in memory; each step sees random 10-frame windows of 16-frame clips.
  config.data = ml_collections.ConfigDict(dict(
      source="synthetic",  # "synthetic" | "synthetic_tfds" (under data_dir) | "tfds" (dataset_dir) | "latents"
      num_clips=2048, clip_frames=16, resolution=32, seed=0, data_dir="", dataset_dir="", split="train",
      latents_dir="",  # cached latents (`launch.prepare_data --sdvae`) with source="latents"
      mel_per_window=False))  # True: each window's mel from its own audio (official); False: cut from the clip's

  # AdamW as released, with a warm-up and a cosine decay for a short run. At lr 1e-3 this model
  # diverged after ~150 steps: the cross-modal modulation (each branch's MLP scaled by a linear map of the other
  # branch's mean) grew from block to block until the audio branch overflowed; 4e-4 trains stably.
  config.optim = ml_collections.ConfigDict(dict(
      lr=4e-4, schedule="cosine", warmup_steps=200, decay_steps=0, min_lr_ratio=0.05, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.02, grad_clip=1.0))
  # Rolling flow loss: share of rolling (vs pre-rolling) windows and the per-frame weighting.
  config.loss = ml_collections.ConfigDict(dict(p_rollout=0.8, weighting="logit_normal"))
  # EMA of the weights (train/state.py): "diffusers" is the official recipe's schedule; the shipped model was trained
  # with "power", 1 - (1 + n)^-power capped at `decay` ("constant": `decay` throughout).
  config.ema = ml_collections.ConfigDict(dict(schedule="power", decay=0.999, power=0.75))

  config.train = ml_collections.ConfigDict(dict(
      batch_size=8,  # global, over all devices of all hosts
      accumulate_steps=1,  # micro-batches per step (gradient accumulation)
      num_steps=3000,
      log_every=25,
      checkpoint_every=250,
      keep_checkpoints=3,  # the newest K ...
      keep_every=0,  # ... plus every M-th step (0: none)
      async_checkpoints=True,
      sample_every=0,  # steps between preview samples from the EMA weights (0: only at the end when > 0)
      sample_frames=40,
      skip_nonfinite=False,  # False: a NaN/Inf loss or gradient stops the run; True: the update is skipped
      fsdp=1,  # devices that split params and optimizer state (fully sharded data parallel)
      peak_tflops_per_device=0.0,  # for MFU; 0 leaves it out (CPUs have no meaningful peak)
      export_dtype="float16",  # storage of export/ (loads as float32); keeps the shipped folder under 20 MB
  ))
  if variant == "gpu":
    # The shipped model's recipe, for one GPU: the shipped size (synthetic_tiny.py), 8x the batch (the GPU runs
    # batch 64 about as fast as 8), a longer warm-up, twice the clips and a slower EMA for the longer run. 16000
    # steps took 245 s on one H200 (65 steps/s, 4200 samples/s), after about a minute making the 4096 clips on the
    # host and 37 s compiling.
    config.data.update(num_clips=4096)
    config.train.update(batch_size=64, num_steps=16000, log_every=100, checkpoint_every=2000)
    config.optim.update(warmup_steps=500)
    config.ema.update(decay=0.9995)
  elif variant == "micro":
    config.model.update(latent_size=16, patch_size=4, hidden_size=32, depth=1, num_heads=2, predict_frames=4)
    config.data.update(num_clips=32, clip_frames=6, resolution=16)
    config.train.update(batch_size=8, num_steps=10, log_every=1, checkpoint_every=5)
    config.optim.update(lr=1e-3, warmup_steps=0)
    config.sample.update(num_frames=6, chunk_frames=3)
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of train_synthetic_tiny: expected '', 'gpu' or 'micro'")
  return config
