"""Benchmark settings small enough for a CPU: a FLAV-S-like width at depth 2 on 16x16x4 latents."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(
      latent_size=16, patch_size=2, in_channels=4, hidden_size=384, depth=2, num_heads=6, num_classes=0,
      predict_frames=10, n_mels=256, causal_attn=True, block_type="c", dtype="float32"))
  config.forward_batch = 2
  config.train_batch = 2
  config.streams = 2
  config.steps_per_frame = 2
  config.rolling_frames = 10
  config.clip_frames = 16
  config.iters = 3
  config.repeats = 3
  return config
