"""Live streaming: endless audio-video generated in real time, watched in a browser or any player over HTTP.

`live_generator` sets a Generator up for short chunks; `hub.StreamHub` runs the streams of all viewers (batched,
shared, bounded); `app` serves them with aiohttp; `benchmark` measures the sustained frames/s per stream.
"""
import dataclasses

from rflav_jax.generator import Generator


def live_generator(config, griffin_lim_iters: int) -> Generator:
  """The Generator of a sampling config, for live streams: a Griffin-Lim vocoder (used when the config has no
  HiFi-GAN) runs griffin_lim_iters iterations per chunk and carries its phase from chunk to chunk, so that short
  chunks join seamlessly (`audio.GriffinLimStream`)."""
  generator = Generator.from_config(config)
  vocoder = generator.vocoder
  if vocoder.hifigan is None:
    vocoder = dataclasses.replace(vocoder, griffin_lim_iters=griffin_lim_iters, griffin_lim_streaming=True)
  return Generator(generator.model, generator.params, generator.codec, vocoder, generator.options,
                   devices=generator.devices)
