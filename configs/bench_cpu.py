"""Benchmark settings small enough for a CPU: a FLAV-S width at depth 2 on 16x16x4 latents, fp32.

  python -m launch.benchmark --config=configs/bench_cpu.py
  python -m launch.benchmark --config=configs/bench_cpu.py:short    # a tiny class-conditional model, one iteration: CI

configs/bench_cpu_official.py has the shape on which the official code's CPU speed was measured.
"""
import ml_collections

from configs import bench_b1


def get_config(variant: str = ""):
  config = bench_b1.get_config()
  config.model = ml_collections.ConfigDict(dict(
      latent_size=16, patch_size=2, in_channels=4, hidden_size=384, depth=2, num_heads=6, num_classes=0,
      predict_frames=10, n_mels=256, causal_attn=True, block_type="c", dtype="float32", attention_impl="auto",
      remat=False, remat_policy="nothing_saveable"))
  config.update(forward_batch=2, train_batch=2, streams=2, rolling_frames=10, matmul_size=2048, iters=3)
  # The CI machine's ceiling (2 cores of an AMD EPYC with AVX-512): a 2048^3 float32 matmul, idle, 2026-11-27.
  config.peak_tflops = ml_collections.ConfigDict({"float32": 0.187})
  config.reference = ml_collections.ConfigDict()
  if variant == "short":
    config.model.update(latent_size=8, hidden_size=64, depth=1, num_heads=2, num_classes=2, predict_frames=4,
                        n_mels=32)
    config.update(forward_batch=1, train_batch=1, streams=1, steps_per_frame=1, rolling_frames=2, clip_frames=2,
                  matmul_size=256, iters=1, warmup=1, repeats=1)
    config.data.update(num_clips=4, clip_frames=6, resolution=32)
  elif variant:
    raise ValueError(f"configs/bench_cpu.py:{variant}: the only variant is 'short'")
  return config
