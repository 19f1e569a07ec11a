"""A tiny pixel-space FLAV on the built-in 32x32 bouncing-ball set: runs anywhere in minutes, on a laptop CPU too.

  python -m launch.sample --config=configs/synthetic_tiny.py --output_dir=/tmp/rflav_demo
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # The transformer: 32x32 RGB pixels in 8x8 patches, a 10-frame window, 256 mel bins (the real front end).
  config.model = ml_collections.ConfigDict(dict(
      latent_size=32, patch_size=8, in_channels=3, hidden_size=128, depth=4, num_heads=4, mlp_ratio=4.0,
      num_classes=3, class_dropout_prob=0.1, predict_frames=10, n_mels=256, causal_attn=True, block_type="c",
      dtype="float32"))
  config.checkpoint = ""  # a folder from launch.convert (or training); empty: freshly initialised weights
  config.seed = 0
  config.compilation_cache_dir = "~/.cache/rflav_jax/xla"  # JAX's persistent cache: a second run compiles nothing
  config.audio_scale = 1.0  # mel multiplier the model was trained with (codecs.audio.AIST_AUDIO_SCALE, ...)
  config.codec = ml_collections.ConfigDict(dict(kind="pixel", checkpoint=""))  # or kind="sdvae" + converted folder
  config.vocoder = ml_collections.ConfigDict(dict(kind="griffin_lim", checkpoint="", griffin_lim_iters=32))
  config.sample = ml_collections.ConfigDict(dict(
      num_streams=1, num_frames=40, chunk_frames=10, steps_per_frame=2, guidance_scale=1.0, label=0,
      # "" joint generation; "audio": video for the audio of condition_file; "video": audio for its video
      condition="", condition_file="", condition_guidance=1.0))
  return config
