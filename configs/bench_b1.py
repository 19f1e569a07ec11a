"""Benchmark FLAV-B/1 as released (4x32x32 latents, window 10, causal) with the settings under which the official code's speed was measured.

  python -m launch.benchmark --config=configs/bench_b1.py --compare                            # bf16 compute
  python -m launch.benchmark --config=configs/bench_b1.py --config.model.dtype=float32 --compare
  python -m launch.benchmark --config=configs/bench_b1.py --config.model.attention_impl=xla    # "auto": cuDNN on GPUs
  python -m launch.benchmark --config=configs/bench_b1.py --config.model.remat=True --only=train --compare
  python -m launch.benchmark --config=configs/bench_b1.py:h200 --compare                        # on an H200
  python -m launch.benchmark --config=configs/bench_b1.py --config.train_accumulate_steps=4 --only=train --compare

MFU divides the analytic TFLOP/s by peak_tflops[dtype]; --compare sets our figures beside reference[dtype].
"""
import ml_collections


def get_config(card: str = "h100"):
  """card: the GPU whose ceilings and official figures --compare uses, "h100" or "h200" (`bench_b1.py:h200`)."""
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      preset="FLAV-B/1", latent_size=32, in_channels=4, num_classes=10, predict_frames=10, n_mels=256,
      causal_attn=True, block_type="c", dtype="bfloat16", attention_impl="auto", remat=False,
      remat_policy="nothing_saveable"))
  config.forward_batch = 16
  config.train_batch = 8
  # Micro-batches per training step (gradient accumulation): the same update in the memory of train_batch / k.
  config.train_accumulate_steps = 1
  config.streams = 4
  config.steps_per_frame = 2
  config.rolling_frames = 20
  config.clip_frames = 16
  config.matmul_size = 8192
  config.iters = 10
  config.warmup = 2
  config.repeats = 3
  # The training input that `--only=input` times (a training config's fields, rflav_jax.train.input): by default the
  # bouncing-ball set in memory, clips of the official 50 frames, each window's mel from its own audio, pixel frames
  # (no VAE). A real dataset: source="tfds" and dataset_dir, with codec.kind="sdvae" and codec.checkpoint to encode
  # in the input, or source="latents" and latents_dir for cached latents.
  config.data = ml_collections.ConfigDict(dict(
      source="synthetic", num_clips=32, clip_frames=50, resolution=64, seed=0, data_dir="", dataset_dir="",
      latents_dir="", split="train", mel_per_window=True))
  config.codec = ml_collections.ConfigDict(dict(kind="pixel", checkpoint=""))
  config.audio_scale = 1.0
  # Persistent compilation cache folder ("" = off, so that compile times are measured cold).
  config.compilation_cache_dir = ""
  # Compute ceilings, TFLOP/s: bf16 as measured on an 8192^3 matmul (as measured beside the official code; the H100's spec sheet says
  # 989 dense); float32 runs as TF32 (jax's default matmul precision on GPUs), spec 495 dense on both cards.
  # The official PyTorch code, measured on the same cards: samples/s (forward, train), frames/s (rolling, clip), GB.
  # H200 forward figures are the published TFLOP/s over 2.7296 TFLOP per sample.
  h200_fp32 = dict(source="official code, fp32/tf32, one H200, torch 2.11", forward=31.9, rolling=15.5, clip=9.9,
                   train=9.4, train_peak_gb=87.0, train_remat=7.3, train_remat_peak_gb=15.0)
  if card == "h100":
    config.peak_tflops = ml_collections.ConfigDict({"bfloat16": 800.0, "float32": 495.0})
    config.reference = ml_collections.ConfigDict({
        "bfloat16": dict(source="official code, bf16 autocast, one H100 80GB HBM3, torch 2.11, 2026-11-27",
                         forward=56.4, rolling=26.5, clip=17.0, train=18.6, train_peak_gb=58.9, train_remat=14.0,
                         train_remat_peak_gb=11.9),
        "float32": {**h200_fp32, "source": h200_fp32["source"].replace("H200", "H200 (not an H100)")},
    })
  elif card == "h200":
    config.peak_tflops = ml_collections.ConfigDict({"bfloat16": 790.0, "float32": 495.0})
    config.reference = ml_collections.ConfigDict({
        "bfloat16": dict(source="official code, bf16 autocast, one H200, torch 2.11", forward=60.4, rolling=28.6,
                         clip=18.3, train=20.6, train_peak_gb=56.0, train_remat=15.3, train_remat_peak_gb=12.0),
        "float32": h200_fp32,
    })
  else:
    raise ValueError(f"unknown card {card!r} of bench_b1: expected 'h100' (the default) or 'h200'")
  return config
