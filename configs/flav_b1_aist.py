"""FLAV-B/1 as released for AIST++ (10 dance genres): SD-VAE latents 4x32x32, window 10, HiFi-GAN vocoder.

Convert the downloaded releases first (README, "Use the released checkpoints"), then:
  python -m launch.sample --config=configs/flav_b1_aist.py --config.checkpoint=converted/aist/flav \
      --config.codec.checkpoint=converted/sdvae --config.vocoder.checkpoint=converted/aist/vocoder --output_dir=out
and score the samples against the real test clips as the paper does (config.eval, synthetic_tiny's: 2048 clips):
  python -m launch.evaluate --config=configs/flav_b1_aist.py --mode=av_metrics --config.eval.real_dir=/data/aist/test \
      --config.eval.generated_dir=out --config.eval.audioclip_weights=AudioCLIP-Full-Training.pt --output=report.json
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import synthetic_tiny


def get_config():
  config = synthetic_tiny.get_config()
  config.model = ml_collections.ConfigDict(dict(
      preset="FLAV-B/1", latent_size=32, in_channels=4, num_classes=10, class_dropout_prob=0.1, predict_frames=10,
      n_mels=256, causal_attn=True, block_type="c", dtype="bfloat16"))
  config.checkpoint = ""  # the converted release folder: --config.checkpoint=converted/aist/flav
  config.audio_scale = 3.5009668382765917
  config.codec = ml_collections.ConfigDict(dict(kind="sdvae", checkpoint=""))
  config.vocoder = ml_collections.ConfigDict(dict(kind="hifigan", checkpoint="", griffin_lim_iters=32))
  config.sample.update(num_frames=240, guidance_scale=1.0, stochasticity=0.0,  # plain Euler steps, as released
                       eval_labels=(0,))  # sample-metrics.py's default --classes
  # Unset: chosen for the machine (rflav_jax.generator.fit_to_machine): on a CPU 1 stream, elsewhere 4; chunks of
  # num_frames frames, at most 20. --config.sample.num_streams / chunk_frames set them.
  config.sample.update(num_streams=placeholder(int), chunk_frames=placeholder(int))
  return config
