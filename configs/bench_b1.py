"""Benchmark FLAV-B/1 as released (4x32x32 latents, window 10, causal) with the settings of RFLAV.md section 6.

  python -m launch.benchmark --config=configs/bench_b1.py                            # bf16 compute
  python -m launch.benchmark --config=configs/bench_b1.py --config.model.dtype=float32
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      preset="FLAV-B/1", latent_size=32, in_channels=4, num_classes=10, predict_frames=10, n_mels=256,
      causal_attn=True, block_type="c", dtype="bfloat16", attention_impl=None, remat=False,
      remat_policy="nothing_saveable"))
  config.forward_batch = 16
  config.train_batch = 8
  config.streams = 4
  config.steps_per_frame = 2
  config.rolling_frames = 20
  config.clip_frames = 16
  config.iters = 10
  config.repeats = 3
  return config
