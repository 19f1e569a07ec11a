"""FLAV-B/1 as released for Landscape (unconditional): SD-VAE latents 4x32x32, window 10, HiFi-GAN vocoder."""
from configs import flav_b1_aist


def get_config():
  config = flav_b1_aist.get_config()
  config.model.num_classes = 0
  config.audio_scale = 3.0951129410195515
  return config
