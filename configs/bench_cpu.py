"""Benchmark settings small enough for a CPU: a FLAV-S width at depth 2 on 16x16x4 latents, fp32.

  python -m launch.benchmark --config=configs/bench_cpu.py
"""
import ml_collections

from configs import bench_b1


def get_config():
  config = bench_b1.get_config()
  config.model = ml_collections.ConfigDict(dict(
      latent_size=16, patch_size=2, in_channels=4, hidden_size=384, depth=2, num_heads=6, num_classes=0,
      predict_frames=10, n_mels=256, causal_attn=True, block_type="c", dtype="float32"))
  config.update(forward_batch=2, train_batch=2, streams=2, rolling_frames=10, iters=3)
  return config
