r"""The paper's FLAV-B/1 recipe on AIST++ or Landscape: SD-VAE latents, window 10, bf16, remat.

  python -m launch.prepare_data --source_dir=/data/aist --data_dir=/data/tfds --labelled --resolution=256
  python -m launch.convert --kind=sdvae --checkpoint_dir=releases/sd-vae-ft-ema --output_dir=converted/sdvae
  python -m launch.train --config=configs/train_flav_b1.py:aist --workdir=runs/aist \
      --config.data.dataset_dir=/data/tfds/av_folder/aist_r256_fps10_t50_labelled/1.1.0 \
      --config.codec.checkpoint=converted/sdvae
  # or encode every clip once with the SD-VAE (all devices; run it on every host of a pod) and train with no VAE:
  python -m launch.prepare_data --dataset_dir=/data/tfds/av_folder/aist_r256_fps10_t50_labelled/1.1.0 \
      --sdvae=converted/sdvae --latents_dir=/data/latents/aist_r256
  python -m launch.train --config=configs/train_flav_b1.py:aist --workdir=runs/aist \
      --config.data.source=latents --config.data.latents_dir=/data/latents/aist_r256 \
      --config.codec.checkpoint=converted/sdvae

`:landscape` trains the unconditional Landscape model. Samples written during training use Griffin-Lim unless
--config.vocoder.checkpoint names a converted HiFi-GAN (then set --config.vocoder.kind=hifigan).

As the official training script, by default: clips stored at 50 frames and every 10-frame window of them drawn at
training time (stride 1); AdamW at a constant 1e-4, weight decay 0.02, gradient norm clipped at 1; diffusers' EMA
schedule capped at 0.9999; labels dropped with probability 0.1 in a draw per branch; each window's mel computed
from the window's own audio; 400k steps. Options that deviate from it: config.ema.schedule="power",
config.model.label_dropout="shared", config.data.mel_per_window=False (the window's mel cut from its clip's).

Batch: the official command (its README) runs `accelerate launch --num_processes=N train.py --batch-size 16`,
16 windows per GPU and so a global batch of 16 N; the number of GPUs of the paper's runs is not in the official
repository. config.train.batch_size is the global batch: 16 here, the official per-device batch on one device;
set it to 16 x devices to keep the official 16 per device (e.g. --config.train.batch_size=128 on 8 GPUs).
"""
from configs import flav_b1_aist, flav_b1_landscape, train_synthetic_tiny

RELEASED = {"aist": flav_b1_aist, "landscape": flav_b1_landscape}


def get_config(dataset: str = "aist"):
  if dataset not in RELEASED:
    raise ValueError(f"unknown dataset {dataset!r} for train_flav_b1: expected one of {sorted(RELEASED)}")
  config = train_synthetic_tiny.get_config()
  released = RELEASED[dataset].get_config()
  for field in ("model", "codec", "vocoder", "sample", "audio_scale"):
    config[field] = released[field]
  config.model.update(remat=True, remat_policy="nothing_saveable")  # gradient checkpointing, as released
  config.vocoder.kind = "griffin_lim"
  config.sample.update(num_streams=1, num_frames=40)

  # A folder written by launch.prepare_data (see above); each window's mel from its own audio, as the official code.
  config.data.update(source="tfds", dataset_dir="", mel_per_window=True)
  config.optim.update(lr=1e-4, schedule="constant", warmup_steps=0, weight_decay=0.02, grad_clip=1.0)
  config.ema.update(schedule="diffusers", decay=0.9999)  # EMAModel(power=3/4) without use_ema_warmup, as released
  config.train.update(batch_size=16,  # global: the official 16 per device, on one device (see above)
                      num_steps=400_000, log_every=100, checkpoint_every=5_000, keep_checkpoints=3, keep_every=50_000,
                      sample_every=10_000, sample_frames=40,
                      peak_tflops_per_device=989.0,  # H100 SXM dense bf16 (spec); set your accelerator's
                      export_dtype="float32")
  return config
