"""FLAV-B/1 as released for AIST++ (10 dance genres): SD-VAE latents 4x32x32, window 10, HiFi-GAN vocoder.

Convert the three released folders first (see README), then:
  python -m launch.sample --config=configs/flav_b1_aist.py --config.checkpoint=converted/flav_aist \
      --config.codec.checkpoint=converted/sdvae --config.vocoder.checkpoint=converted/vocoder --output_dir=out
and score the samples against the real test clips as the paper does (config.eval, synthetic_tiny's: 2048 clips):
  python -m launch.evaluate --config=configs/flav_b1_aist.py --mode=av_metrics --config.eval.real_dir=/data/aist/test \
      --config.eval.generated_dir=out --config.eval.audioclip_weights=AudioCLIP-Full-Training.pt --output=report.json
"""
import ml_collections

from configs import synthetic_tiny


def get_config():
  config = synthetic_tiny.get_config()
  config.model = ml_collections.ConfigDict(dict(
      preset="FLAV-B/1", latent_size=32, in_channels=4, num_classes=10, class_dropout_prob=0.1, predict_frames=10,
      n_mels=256, causal_attn=True, block_type="c", dtype="bfloat16"))
  config.checkpoint = ""  # the converted release folder: --config.checkpoint=converted/flav_aist
  config.audio_scale = 3.5009668382765917
  config.codec = ml_collections.ConfigDict(dict(kind="sdvae", checkpoint=""))
  config.vocoder = ml_collections.ConfigDict(dict(kind="hifigan", checkpoint="", griffin_lim_iters=32))
  config.sample.update(num_streams=4, num_frames=240, chunk_frames=20, guidance_scale=1.0,
                       stochasticity=0.0,  # plain Euler steps, as the official sampler
                       eval_labels=(0,))  # sample-metrics.py's default --classes
  return config
