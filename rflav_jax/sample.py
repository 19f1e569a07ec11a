"""The generation loop: FLAV + rolling sampler + video codec + vocoder -> mp4 files streamed to disk.

`sample(config, output_dir)` builds the model of config.model / config.checkpoint and runs `sample_with`,
which the trainer also calls with in-memory weights. Each writes `stream_<i>.mp4` (H.264 + AAC, 10 fps,
16 kHz) for each of the config.sample.num_streams streams, and for stream 0 `stream_0_frames.png` (a contact
sheet) and `stream_0_mel.png` (a spectrogram) of its first 2 W frames (W: the model's window). Joint
generation decodes, vocodes and appends each chunk at once, so memory stays flat for any length.

Every input is checked before the first network call; progress is logged from the first call on, and joint
generation ends with the wall seconds of each stage (network, video decoding, vocoder, mp4 writing), which says
what limits its speed on the machine at hand.
"""
import collections
import contextlib
import math
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rflav_jax import storage
from rflav_jax.build import build_flav, build_video_codec, build_vocoder
from rflav_jax.codecs import audio
from rflav_jax.codecs.pixel import to_uint8
from rflav_jax.flow.guidance import velocity_for_label
from rflav_jax.flow.progress import CallProgress, counted, log_frames
from rflav_jax.flow.sampling import (RollingSampler, check_stochasticity, generate_audio_from_video,
                                     generate_video_from_audio)
from rflav_jax.media import MediaError, NoAudioTrackError, letterbox, read_audio, read_video
from rflav_jax.media.align import FrameAligner
from rflav_jax.media.images import contact_sheet, spectrogram_image, write_png
from rflav_jax.media.writer import Mp4Writer
from rflav_jax.models.flav import FLAV

FPS, SAMPLE_RATE = 10, 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
# Measured: a 2-core CPU runs the FLAV-B/1 forward at 0.155 TFLOP/s in bf16, 0.168 in float32 (docs/PERFORMANCE.md);
# assumed to scale with cores.
_CPU_TFLOP_PER_S_PER_CORE = 0.077
_CPU_WARN_TFLOP_PER_CALL = 0.5


def sample(config, output_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """Generates config.sample.num_frames frames per stream into output_dir; returns the mp4 paths.

  config.sample.condition selects joint generation ("", streamed chunk by chunk), video for the audio of
  config.sample.condition_file ("audio") or audio for its video ("video"), with gradient guidance of scale
  config.sample.condition_guidance; the given modality is written unchanged beside the generated one.
  """
  given = _read_inputs(config.sample)
  model, params = build_flav(config.model, config.checkpoint, config.seed)
  return _sample(model, params, config, output_dir, given)


def sample_with(model: FLAV, params, config, output_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """`sample` with a given model and params (e.g. a trainer's EMA weights); config.model and config.checkpoint
  are not read. Uses config.codec, config.vocoder, config.sample, config.audio_scale and config.seed."""
  return _sample(model, params, config, output_dir, _read_inputs(config.sample))


def check_options(opts) -> None:
  """ValueError naming the first config.sample field (opts) out of its range; the files are not read."""
  for name in ("num_streams", "num_frames", "chunk_frames", "steps_per_frame"):
    if opts[name] < 1:
      raise ValueError(f"config.sample.{name}={opts[name]} must be a positive int")
  check_stochasticity(opts.stochasticity, "config.sample.stochasticity")
  if opts.condition not in ("", "audio", "video"):
    raise ValueError(f"config.sample.condition={opts.condition!r}: expected '' (joint), 'audio' or 'video'")


def _read_inputs(opts) -> np.ndarray | None:
  """Checks config.sample; returns the given modality of condition_file (None for joint generation).

  audio: int16-scale waveform (frames * 1600,) at 16 kHz; video: uint8 frames (frames, H, W, 3) at 10 fps.
  """
  check_options(opts)
  if not opts.condition:
    return None
  where = f"config.sample.condition={opts.condition!r} takes the {opts.condition} of config.sample.condition_file"
  if not opts.condition_file:
    raise ValueError(f"{where}; set it to a media file")
  try:
    if opts.condition == "audio":
      given = read_audio(opts.condition_file, SAMPLE_RATE)
      given = given[:len(given) // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME]
    else:
      given = read_video(opts.condition_file, FPS)
  except NoAudioTrackError as e:
    raise ValueError(f"{where}, but {e.path} has no audio track; pass a file with sound, or set "
                     "config.sample.condition='video' to generate its audio") from e
  except MediaError as e:
    raise ValueError(f"{where}, but {e.path} {e.problem}") from e
  frames = len(given) // SAMPLES_PER_FRAME if opts.condition == "audio" else len(given)
  if frames < opts.num_frames:
    raise ValueError(f"{opts.condition_file} has {frames} frames of {opts.condition} at {FPS} fps; set "
                     f"config.sample.num_frames <= {frames}")
  return given


def stream_devices(num_streams: int, devices=None) -> list:
  """The most of `devices` (default: the local ones) whose number divides num_streams, so each gets as many."""
  devices = list(jax.local_devices() if devices is None else devices)
  return devices[:max(k for k in range(1, len(devices) + 1) if num_streams % k == 0)]


def approx_tflop_per_call(model: FLAV) -> float:
  """Rough TFLOP of one network call on one window: dense layers and spatial attention (FLAV-B/1: 2.7)."""
  width, ratio, frames = model.hidden_size, model.mlp_ratio, model.predict_frames
  patches = (model.latent_size // model.patch_size) ** 2
  dense = 2 * width**2 * frames * (patches * (8 + 2 * ratio) + model.audio_columns * (4 + 2 * ratio))
  return model.depth * (dense + 4 * frames * patches**2 * width) / 1e12


def cpu_warning(model: FLAV, windows_per_call: int, calls: int, cores: int) -> str | None:
  """A warning for a CPU run of large network calls, with roughly how long it takes; None for small ones."""
  per_call = approx_tflop_per_call(model) * windows_per_call
  if per_call < _CPU_WARN_TFLOP_PER_CALL:
    return None
  minutes = per_call * calls / (_CPU_TFLOP_PER_S_PER_CORE * cores) / 60
  warning = (f"sampling on the CPU: {calls} network calls of about {per_call:.1f} TFLOP each take roughly "
             f"{minutes:.0f} min on {cores} cores; a GPU does this in seconds to minutes")
  if jnp.dtype(model.dtype) != jnp.float32:  # measured on 2 cores: B/1 forward 32.4 s in float32, 35.2 s in bf16
    warning += (f"; on CPUs --config.model.dtype=float32 is no slower than {jnp.dtype(model.dtype).name} "
                "and gives the official numbers exactly")
  return warning


def _velocity_and_labels(model: FLAV, params, opts):
  """The velocity function (classifier-free guided when asked) and the (B,) labels, or None, of config.sample."""
  if model.num_classes and not 0 <= opts.label <= model.num_classes:
    raise ValueError(f"config.sample.label={opts.label}: the model has classes 0..{model.num_classes - 1} "
                     f"(and {model.num_classes}, the null label)")
  label = opts.label if model.num_classes else None
  return velocity_for_label(model, params, label, opts.guidance_scale, opts.num_streams)


def _sample(model: FLAV, params, config, output_dir, given: np.ndarray | None) -> list[pathlib.Path]:
  opts = config.sample
  velocity, labels = _velocity_and_labels(model, params, opts)
  codec = build_video_codec(config.codec, model)
  vocoder = build_vocoder(config.vocoder, config.audio_scale, model.n_mels)
  output_dir = storage.as_path(output_dir)  # a local folder or a URL (gs://...)
  output_dir.mkdir(parents=True, exist_ok=True)
  paths = [output_dir / f"stream_{i}.mp4" for i in range(opts.num_streams)]

  devices = stream_devices(opts.num_streams)
  window, steps = model.predict_frames, opts.steps_per_frame
  if given is None:  # the stream rolls whole chunks
    rolled = math.ceil(opts.num_frames / opts.chunk_frames) * opts.chunk_frames
  else:  # the last frame is appended without rolling
    rolled = opts.num_frames - 1
  calls = (window + rolled) * steps
  windows_per_call = opts.num_streams * (2 if opts.guidance_scale != 1.0 and labels is not None else 1)
  warning = cpu_warning(model, windows_per_call, calls, os.cpu_count() or 1)
  if jax.default_backend() == "cpu" and warning:
    logging.warning(warning)
  logging.info("sampling %d stream(s) x %d frames on %d of %d %s devices: %d network calls", opts.num_streams,
               opts.num_frames, len(devices), jax.local_device_count(), jax.default_backend(), calls)
  with CallProgress(calls, window * steps, len(devices)):
    args = (model, counted(velocity), labels, codec, vocoder, config, paths, devices)
    previews = _sample_joint(*args) if given is None else _sample_conditional(*args, given)
  write_png(output_dir / "stream_0_frames.png", contact_sheet(previews[0], columns=window))
  write_png(output_dir / "stream_0_mel.png", spectrogram_image(audio.mel_from_frames(previews[1])))
  return paths


class StageClock:
  """Wall seconds spent per named stage; `with clock("network"): ...` adds to that stage."""

  def __init__(self):
    self.seconds = collections.Counter()

  @contextlib.contextmanager
  def __call__(self, stage: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[stage] += time.perf_counter() - start

  def report(self, total_s: float) -> str:
    parts = ", ".join(f"{stage} {s:.1f} s ({100 * s / total_s:.0f}%)" for stage, s in self.seconds.items())
    return f"{parts}; {total_s:.1f} s in all"


def _sample_joint(model: FLAV, velocity, labels, codec, vocoder, config, paths, devices):
  """Joint generation streamed to the mp4 files chunk by chunk; returns stream 0's first 2 W frames and mels."""
  opts = config.sample
  batch, window, total = opts.num_streams, model.predict_frames, opts.num_frames
  sampler = RollingSampler(velocity, opts.steps_per_frame, stochasticity=opts.stochasticity, devices=devices)
  key_v, key_a, key_stream = jax.random.split(jax.random.key(config.seed), 3)
  init_v = jax.random.normal(key_v, (batch, window, model.latent_size, model.latent_size, model.in_channels))
  init_a = jax.random.normal(key_a, (batch, window, model.audio_columns, model.n_mels))
  chunks = sampler.stream(init_v, init_a, key_stream, opts.chunk_frames, labels)
  aligner = FrameAligner(batch, SAMPLES_PER_FRAME)
  preview_video, preview_mel = [], []
  start, done = time.perf_counter(), 0
  clock = StageClock()

  def mel_chunks():
    nonlocal done
    while done < total:
      with clock("network (compilation included)"):
        frames_v, frames_a = jax.block_until_ready(next(chunks))
      take = min(opts.chunk_frames, total - done)
      with clock("video decoding"):
        video = to_uint8(codec.decode(frames_v[:, :take]))
      aligner.push_video(video)
      if len(preview_video) < 2 * window:
        preview_video.extend(video[0, :2 * window - len(preview_video)])
        preview_mel.extend(frames_a[0, :len(preview_video) - len(preview_mel)])
      done += take
      log_frames(done, total, batch, time.perf_counter() - start)
      yield frames_a[:, :take]

  writers = [Mp4Writer(p, fps=FPS, sample_rate=SAMPLE_RATE) for p in paths]
  try:
    for wav in vocoder.stream(mel_chunks()):  # vocoder time: what the loop spends outside the other stages
      aligner.push_audio(wav)
      video, wav = aligner.pop()
      with clock("mp4 writing"):
        if video.shape[1]:
          for b, writer in enumerate(writers):
            writer.write(video[b], wav[b])
  finally:
    with clock("mp4 writing"):
      for writer in writers:
        writer.close()
  total_s = time.perf_counter() - start
  clock.seconds["vocoder"] = total_s - sum(clock.seconds.values())
  logging.info("stages: %s", clock.report(total_s))
  return np.stack(preview_video), np.stack(preview_mel)


def _sample_conditional(model: FLAV, velocity, labels, codec, vocoder, config, paths, devices, given: np.ndarray):
  """One modality generated for the given other one (whole clip in memory); returns the previews as joint does."""
  opts = config.sample
  batch, window, num_frames = opts.num_streams, model.predict_frames, opts.num_frames
  key_init, key = jax.random.split(jax.random.key(config.seed))
  repeat = lambda x: np.repeat(np.asarray(x)[None], batch, axis=0)
  kwargs = dict(guidance_scale=opts.condition_guidance, key=key, labels=labels, stochasticity=opts.stochasticity,
                devices=devices)
  if opts.condition == "audio":
    mel = config.audio_scale * audio.frames_from_mel(audio.mel_from_waveform(given))
    init_v = jax.random.normal(key_init, (batch, window, model.latent_size, model.latent_size, model.in_channels))
    generated = generate_video_from_audio(velocity, init_v, repeat(mel[:num_frames + window]), num_frames,
                                          opts.steps_per_frame, **kwargs)
    video, wav = to_uint8(codec.decode(np.asarray(generated))), repeat(given[:num_frames * SAMPLES_PER_FRAME] / 32768)
  else:
    frames = letterbox(given[:num_frames + window], model.latent_size * codec.downsample_factor)
    init_a = jax.random.normal(key_init, (batch, window, model.audio_columns, model.n_mels))
    mel = np.asarray(generate_audio_from_video(velocity, init_a, repeat(codec.encode(frames)), num_frames,
                                               opts.steps_per_frame, **kwargs))
    video, wav, mel = repeat(frames[:num_frames]), np.concatenate(list(vocoder.stream([mel])), axis=1), mel[0]
  for b, path in enumerate(paths):
    with Mp4Writer(path, fps=FPS, sample_rate=SAMPLE_RATE) as writer:
      writer.write(video[b], wav[b])
  return video[0, :2 * window], mel[:2 * window]
