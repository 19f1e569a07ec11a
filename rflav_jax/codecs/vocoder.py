"""Generated mel frames -> waveform, streamed: HiFi-GAN (exact joins) or Griffin-Lim (a fallback without weights).

The model's mel frames (B, n, F, N) are in its own scale (the normalised mel times audio_scale, see
`rflav_jax.codecs.audio`); a `MelVocoder` undoes that scale and turns a stream of such chunks into
float32 waveform pieces (B, samples) in [-1, 1] at 16 kHz, 160 samples per mel column.
"""
import dataclasses
from typing import Iterable, Iterator

import numpy as np

from rflav_jax.codecs import audio
from rflav_jax.codecs.hifigan import HifiGanGenerator, vocode_stream


@dataclasses.dataclass
class MelVocoder:
  """Vocodes the mel stream of a model with n_mels bins.

  Attributes:
    n_mels: N, the model's mel bins.
    audio_scale: the mel multiplier the model was trained with (e.g. audio.AIST_AUDIO_SCALE).
    hifigan: (HifiGanGenerator, params), or None for Griffin-Lim.
    griffin_lim_iters: Griffin-Lim iterations per chunk.
    griffin_lim_streaming: carry each stream's Griffin-Lim phase from chunk to chunk (`audio.GriffinLimStream`):
      seamless joins, for any chunk size, at the price of a lag of a few mel columns; False vocodes each chunk on
      its own.
  """
  n_mels: int
  audio_scale: float
  hifigan: tuple[HifiGanGenerator, dict] | None = None
  griffin_lim_iters: int = 32
  griffin_lim_streaming: bool = False

  def __post_init__(self):
    if self.hifigan is not None:
      vocoder, hop = self.hifigan[0].config, audio.MelParams().hop_length
      if (vocoder.num_mels, vocoder.hop_length) != (self.n_mels, hop):
        raise ValueError(f"the HiFi-GAN vocoder takes {vocoder.num_mels} mel bins with hop {vocoder.hop_length}; the "
                         f"model makes {self.n_mels} bins at hop {hop} (16 kHz, 10 fps): use a vocoder trained for it")

  def stream(self, mel_chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Mel chunks (B, n_i, F, N) -> waveform pieces (B, samples); with HiFi-GAN they lag by its context.

    Concatenated, the pieces cover every mel column once. HiFi-GAN joins are exact; Griffin-Lim vocodes
    each chunk on its own, so its joins may be audible, unless griffin_lim_streaming (seamless, lagging).
    """
    log_mels = (audio.log_mel_from_mel(audio.mel_from_frames(m), self.audio_scale) for m in mel_chunks)
    if self.hifigan is not None:
      yield from vocode_stream(*self.hifigan, log_mels)
    elif self.griffin_lim_streaming:
      streams = None
      for log_mel in log_mels:
        streams = streams or [audio.GriffinLimStream(self.griffin_lim_iters) for _ in log_mel]
        yield np.stack([stream.push(m) for stream, m in zip(streams, log_mel)])
      if streams:
        yield np.stack([stream.flush() for stream in streams])
    else:
      for log_mel in log_mels:
        yield np.stack([audio.griffin_lim(m, n_iter=self.griffin_lim_iters) for m in log_mel])
