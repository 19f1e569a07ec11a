"""End-to-end generation: FLAV + rolling sampler + video codec + vocoder -> mp4 files streamed to disk.

`sample(config, output_dir)` writes `stream_<i>.mp4` (H.264 + AAC, 10 fps, 16 kHz) for each of the
config.sample.num_streams independent streams, and for stream 0 `stream_0_frames.png` (a contact sheet of
its first frames) and `stream_0_mel.png` (its generated spectrogram). The window stays on the devices; each chunk of
frames is decoded, vocoded and appended to the files at once, so memory does not grow with the length.
"""
import dataclasses
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rflav_jax.codecs import audio
from rflav_jax.codecs.hifigan import vocode_stream
from rflav_jax.codecs.pixel import PixelCodec
from rflav_jax.codecs.sdvae import SdVaeCodec
from rflav_jax.convert import release
from rflav_jax.flow.guidance import classifier_free_guidance, model_velocity
from rflav_jax.flow.sampling import RollingSampler, generate_audio_from_video, generate_video_from_audio
from rflav_jax.media.images import contact_sheet, spectrogram_image, write_png
from rflav_jax.media.reader import read_clip
from rflav_jax.media.writer import Mp4Writer
from rflav_jax.models.flav import FLAV, PRESETS, flav_args, flav_from_config

FPS, SAMPLE_RATE = 10, 16000
# Model settings that do not change the weights: a config may set them freely over a checkpoint's.
_RUNTIME_ARGS = ("dtype", "attention_impl", "remat", "remat_policy", "class_dropout_prob")


def build_model(config) -> tuple[FLAV, dict]:
  """The model of config.model with the weights of config.checkpoint, or freshly initialised from config.seed."""
  if not config.checkpoint:
    model = flav_from_config(config.model)
    v, a, t = (jnp.zeros((1, model.predict_frames, *shape)) for shape in (
        (model.latent_size, model.latent_size, model.in_channels), (model.audio_columns, model.n_mels), ()))
    y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    return model, jax.jit(model.init)(jax.random.key(config.seed), v, a, t, y)["params"]
  runtime = {k: v for k, v in config.model.items() if k in _RUNTIME_ARGS}
  model, params = release.load_flav(config.checkpoint, **runtime)
  check_config_matches(config.model, model)
  return model, params


def check_config_matches(model_config, model: FLAV) -> None:
  """Raises ValueError naming every config.model value that contradicts the checkpoint's model."""
  wanted = dict(model_config)
  wanted.update(PRESETS.get(wanted.pop("preset", None), {}))
  have = flav_args(model)
  wrong = [f"config.model.{k}={v!r} but the checkpoint has {have[k]!r}" for k, v in sorted(wanted.items())
           if k not in _RUNTIME_ARGS and k in have and have[k] != v]
  if wrong:
    raise ValueError("the config contradicts the checkpoint:\n  " + "\n  ".join(wrong) +
                     "\nFix the config (or drop those fields: the checkpoint's config.py defines the model).")


def build_video_codec(codec_config, model: FLAV):
  """PixelCodec, or SdVaeCodec from a converted SD-VAE folder."""
  if codec_config.kind == "pixel":
    return PixelCodec(model.in_channels)
  if codec_config.kind == "sdvae":
    if not codec_config.checkpoint:
      raise ValueError("config.codec.kind='sdvae' needs config.codec.checkpoint: a folder from "
                       "`python -m launch.convert --kind=sdvae`")
    return SdVaeCodec(*release.load_sdvae(codec_config.checkpoint))
  raise ValueError(f"config.codec.kind={codec_config.kind!r}: expected 'pixel' or 'sdvae'")


@dataclasses.dataclass
class _Vocoder:
  """Turns generated mel chunks (B, n, F, N) (model scale) into waveform pieces (B, samples) in [-1, 1]."""
  config: object
  audio_scale: float
  n_mels: int

  def __post_init__(self):
    self._hifigan = None
    if self.config.kind == "hifigan":
      if not self.config.checkpoint:
        raise ValueError("config.vocoder.kind='hifigan' needs config.vocoder.checkpoint: a folder from "
                         "`python -m launch.convert --kind=vocoder`")
      self._hifigan = release.load_vocoder(self.config.checkpoint)
      vocoder = self._hifigan[0].config
      hop = SAMPLE_RATE // FPS // audio.COLUMNS_PER_FRAME
      if (vocoder.num_mels, vocoder.hop_length) != (self.n_mels, hop):
        raise ValueError(f"the vocoder in {self.config.checkpoint} takes {vocoder.num_mels} mel bins with hop "
                         f"{vocoder.hop_length}; the model makes {self.n_mels} bins at hop {hop} (16 kHz, 10 fps)")
    elif self.config.kind != "griffin_lim":
      raise ValueError(f"config.vocoder.kind={self.config.kind!r}: expected 'griffin_lim' or 'hifigan'")

  def stream(self, mel_chunks):
    """Yields waveform pieces; with HiFi-GAN they lag the mel by its context (joins are exact)."""
    log_mels = (audio.log_mel_from_mel(audio.mel_from_frames(m), self.audio_scale) for m in mel_chunks)
    if self._hifigan is not None:
      yield from vocode_stream(*self._hifigan, log_mels)
      return
    for log_mel in log_mels:  # Griffin-Lim per chunk: a fallback without weights, joins may be audible
      yield np.stack([audio.griffin_lim(m, n_iter=self.config.griffin_lim_iters) for m in log_mel])


def _to_uint8(frames: np.ndarray) -> np.ndarray:
  return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _velocity_and_labels(model: FLAV, params, opts, batch: int):
  """The velocity function (classifier-free guided when asked) and the (B,) labels, or None, of config.sample."""
  if not model.num_classes:
    return model_velocity(model, params), None
  if not 0 <= opts.label <= model.num_classes:
    raise ValueError(f"config.sample.label={opts.label}: expected 0..{model.num_classes} ({model.num_classes} = null)")
  labels = jnp.full((batch,), opts.label, jnp.int32)
  if opts.guidance_scale != 1.0:
    return classifier_free_guidance(model, params, opts.guidance_scale), labels
  return model_velocity(model, params), labels


def _write_previews(output_dir: pathlib.Path, frames: np.ndarray, mel: np.ndarray, columns: int) -> None:
  """stream_0_frames.png (contact sheet of uint8 frames (T, H, W, 3)) and stream_0_mel.png (mel (T, F, N))."""
  write_png(output_dir / "stream_0_frames.png", contact_sheet(frames, columns=columns))
  write_png(output_dir / "stream_0_mel.png", spectrogram_image(audio.mel_from_frames(mel)))


def sample(config, output_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """Generates config.sample.num_frames frames per stream into output_dir; returns the mp4 paths.

  config.sample.condition selects joint generation ("", streamed chunk by chunk), video for the audio of
  config.sample.condition_file ("audio") or audio for its video ("video"), with gradient guidance of scale
  config.sample.condition_guidance; the given modality is written unchanged beside the generated one.
  """
  opts = config.sample
  if opts.num_frames < 1 or opts.chunk_frames < 1:
    raise ValueError(f"config.sample.num_frames={opts.num_frames} and chunk_frames={opts.chunk_frames} must be >= 1")
  if opts.condition not in ("", "audio", "video"):
    raise ValueError(f"config.sample.condition={opts.condition!r}: expected '' (joint), 'audio' or 'video'")
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  model, params = build_model(config)
  codec = build_video_codec(config.codec, model)
  vocoder = _Vocoder(config.vocoder, config.audio_scale, model.n_mels)
  paths = [output_dir / f"stream_{i}.mp4" for i in range(opts.num_streams)]
  if opts.condition:
    _sample_conditional(config, model, params, codec, vocoder, paths)
  else:
    _sample_joint(config, model, params, codec, vocoder, paths)
  return paths


def _sample_joint(config, model: FLAV, params, codec, vocoder: _Vocoder, paths: list[pathlib.Path]) -> None:
  """Joint generation streamed to the mp4 files chunk by chunk."""
  opts = config.sample
  batch, window = opts.num_streams, model.predict_frames
  velocity, labels = _velocity_and_labels(model, params, opts, batch)
  sampler = RollingSampler(velocity, opts.steps_per_frame)
  key_v, key_a, key_stream = jax.random.split(jax.random.key(config.seed), 3)
  init_v = jax.random.normal(key_v, (batch, window, model.latent_size, model.latent_size, model.in_channels))
  init_a = jax.random.normal(key_a, (batch, window, model.audio_columns, model.n_mels))
  chunks = sampler.stream(init_v, init_a, key_stream, opts.chunk_frames, labels)

  writers = [Mp4Writer(p, fps=FPS, sample_rate=SAMPLE_RATE) for p in paths]
  samples_per_frame = SAMPLE_RATE // FPS
  pending_video = np.zeros((batch, 0), np.uint8)  # frames waiting for their audio (HiFi-GAN lags by its context)
  pending_audio = np.zeros((batch, 0), np.float32)
  mels, first_frames = [], []
  start, done = time.time(), 0

  def generated_mel():
    nonlocal done, pending_video
    while done < opts.num_frames:
      frames_v, frames_a = next(chunks)
      take = min(opts.chunk_frames, opts.num_frames - done)
      video = _to_uint8(codec.decode(frames_v[:, :take]))
      pending_video = video if not pending_video.size else np.concatenate([pending_video, video], axis=1)
      if len(first_frames) < 2 * window:
        first_frames.extend(video[0])
      mels.append(frames_a[0, :take])
      done += take
      rate = done * batch / (time.time() - start)
      logging.info("frame %d/%d, %.2f frames/s, ETA %.0f s", done, opts.num_frames, rate,
                   (opts.num_frames - done) * batch / rate)
      yield frames_a[:, :take]

  try:
    for wav in vocoder.stream(generated_mel()):
      pending_audio = np.concatenate([pending_audio, wav], axis=1)
      ready = min(pending_video.shape[1], pending_audio.shape[1] // samples_per_frame)
      for b, writer in enumerate(writers):
        writer.write(pending_video[b, :ready], pending_audio[b, :ready * samples_per_frame])
      pending_video = pending_video[:, ready:]
      pending_audio = pending_audio[:, ready * samples_per_frame:]
  finally:
    for writer in writers:
      writer.close()
  _write_previews(paths[0].parent, np.stack(first_frames[:2 * window]), np.concatenate(mels), window)


def _sample_conditional(config, model: FLAV, params, codec, vocoder: _Vocoder, paths: list[pathlib.Path]) -> None:
  """One modality generated for the other one of config.sample.condition_file (whole clip in memory)."""
  opts = config.sample
  batch, window, num_frames = opts.num_streams, model.predict_frames, opts.num_frames
  clip = read_clip(opts.condition_file, fps=FPS, sample_rate=SAMPLE_RATE,
                   resolution=model.latent_size * codec.downsample_factor)
  if len(clip.video) < num_frames:
    raise ValueError(f"{opts.condition_file} has {len(clip.video)} frames at {FPS} fps; set config.sample.num_frames "
                     f"<= {len(clip.video)}")
  velocity, labels = _velocity_and_labels(model, params, opts, batch)
  key_init, key = jax.random.split(jax.random.key(config.seed))
  repeat = lambda x: np.repeat(np.asarray(x)[None], batch, axis=0)
  given_audio = clip.audio[:num_frames * SAMPLE_RATE // FPS] / 32768.0
  if opts.condition == "audio":
    mel = config.audio_scale * audio.frames_from_mel(audio.mel_from_waveform(clip.audio))
    init_v = jax.random.normal(key_init, (batch, window, model.latent_size, model.latent_size, model.in_channels))
    generated = generate_video_from_audio(velocity, init_v, repeat(mel), num_frames, opts.steps_per_frame,
                                          guidance_scale=opts.condition_guidance, key=key, labels=labels)
    video, wav, mel = _to_uint8(codec.decode(np.asarray(generated))), repeat(given_audio), mel[:num_frames]
  else:
    init_a = jax.random.normal(key_init, (batch, window, model.audio_columns, model.n_mels))
    mel = np.asarray(generate_audio_from_video(velocity, init_a, repeat(codec.encode(clip.video)), num_frames,
                                               opts.steps_per_frame, guidance_scale=opts.condition_guidance, key=key,
                                               labels=labels))
    video, wav, mel = repeat(clip.video[:num_frames]), np.concatenate(list(vocoder.stream([mel])), axis=1), mel[0]
  for b, path in enumerate(paths):
    with Mp4Writer(path, fps=FPS, sample_rate=SAMPLE_RATE) as writer:
      writer.write(video[b], wav[b])
  _write_previews(paths[0].parent, video[0, :2 * window], mel, window)
