"""Sampling to files: a `Generator`'s streams written as mp4, with PNG previews.

`sample(config, output_dir)` builds the Generator of config (model of config.model / config.checkpoint) and runs
`sample_with`, which the trainer also calls with its own Generator. Each writes `stream_<i>.mp4` (H.264 + AAC,
10 fps, 16 kHz) for each of the config.sample.num_streams streams, and for stream 0 `stream_0_frames.png` (a contact
sheet) and `stream_0_mel.png` (a spectrogram) of its first 2 W frames (W: the model's window). Joint generation
writes each chunk as it comes, so memory stays flat for any length.

Every input is checked before the first network call; progress is logged from the first call on, and joint
generation ends with the wall seconds of each stage (network, video decoding, vocoder, mp4 writing), which says
what limits its speed on the machine at hand. config.sample's num_streams and chunk_frames, where None, are chosen
for the machine (`rflav_jax.generator.fit_to_machine`).

A run that stops early (an error, Ctrl-C, or a SIGTERM, which `sample` turns into SystemExit(143)) leaves only whole
files: each mp4 holding at least one chunk is finished with the chunks written (a signal never splits a chunk's
writing), the others are removed, and so is an output folder the run created and left empty; the log names each.
"""
import collections
import contextlib
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from rflav_jax import storage
from rflav_jax.codecs import audio
from rflav_jax.flow.progress import CallProgress, log_frames
from rflav_jax.generator import (FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, Generator, SamplingOptions, check_label,
                                 fit_to_machine, stream_devices)
from rflav_jax.media import MediaError, NoAudioTrackError, letterbox, read_audio, read_video
from rflav_jax.media.images import contact_sheet, spectrogram_image, write_png
from rflav_jax.media.writer import Mp4Writer

_CPU_WARN_TFLOP_PER_CALL = 0.5
# The README's CPU command (FLAV-B/1, bfloat16, 26 calls) ran at 0.84 times the rate of `cpu_flop_rate`'s probe taken
# before its first call, compilation and decoding included (a 2-core AMD EPYC, nearly idle); B/1's forward pass alone
# ran at 0.57 to 1.06 (mean 0.81) times the probes taken just before and after it with the cores shared (load 13).
_RUN_SHARE_OF_PROBE = 0.8


def sample(config, output_dir: str | os.PathLike) -> list[epath.Path]:
  """Generates config.sample.num_frames frames per stream into output_dir; returns the mp4 paths.

  config.sample.condition selects joint generation ("", streamed chunk by chunk), video for the audio of
  config.sample.condition_file ("audio") or audio for its video ("video"), with gradient guidance of scale
  config.sample.condition_guidance in config.sample.condition_mode ("official" or "independent", see
  `flow.steps.Conditioning`); the given modality is written unchanged beside the generated one.
  """
  config = _fitted(config)
  given = _read_inputs(config.sample)
  generator = Generator.from_config(config, progress=CallProgress())
  with _StopSignals() as stop:
    return _write(generator, config, output_dir, given, stop)


def sample_with(generator: Generator, config, output_dir: str | os.PathLike) -> list[epath.Path]:
  """`sample` with a given Generator (e.g. the trainer's, holding its EMA weights); reads config.sample's
  num_streams, num_frames, label and condition fields and config.seed. Signals keep their handlers."""
  config = _fitted(config)
  return _write(generator, config, output_dir, _read_inputs(config.sample), _NO_STOP_SIGNALS)


def _fitted(config):
  """config with config.sample's fields left None chosen for the machine (fit_to_machine); logs the choice."""
  fitted = config.copy_and_resolve_references()
  fitted.sample = fit_to_machine(config.sample)
  chosen = [f"{name}={fitted.sample[name]}" for name in ("num_streams", "chunk_frames") if config.sample[name] is None]
  if chosen:
    logging.info("config.sample.%s: fitted to this %s machine (set them on the command line to choose)",
                 ", ".join(chosen), jax.default_backend())
  return fitted


def check_options(opts) -> None:
  """ValueError naming the first config.sample field (opts) out of its range; the files are not read."""
  opts = fit_to_machine(opts)
  for name in ("num_streams", "num_frames"):
    if opts[name] < 1:
      raise ValueError(f"config.sample.{name}={opts[name]} must be a positive int")
  SamplingOptions.from_config(opts)
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


def cpu_flop_rate(dtype, seconds: float = 1.0) -> float:
  """FLOP/s that sampling from a large FLAV gets from this CPU now, as loaded as it is: the rate of a
  (2048, 768) x (768, 3072) product in dtype (an MLP layer of FLAV-B/1) over about `seconds`, times the share of it
  that a B/1 run reaches (_RUN_SHARE_OF_PROBE)."""
  a = jnp.ones((2048, 768), dtype)
  b = jnp.ones((768, 3072), dtype)
  product = jax.jit(jnp.matmul)
  product(a, b).block_until_ready()  # compiled and warm
  runs, start = 0, time.perf_counter()
  while runs < 3 or time.perf_counter() - start < seconds:
    product(a, b).block_until_ready()
    runs += 1
  return _RUN_SHARE_OF_PROBE * runs * 2 * 2048 * 768 * 3072 / (time.perf_counter() - start)


def cpu_warning(flop_per_call: float, calls: int, flop_per_s: float, dtype) -> str | None:
  """A warning for a CPU run of large network calls, with how long the run takes at flop_per_s (`cpu_flop_rate`);
  None for small calls."""
  per_call = flop_per_call / 1e12
  if per_call < _CPU_WARN_TFLOP_PER_CALL:
    return None
  minutes = flop_per_call * calls / flop_per_s / 60
  warning = (f"sampling on the CPU: {calls} network calls of about {per_call:.1f} TFLOP each; at the "
             f"{flop_per_s / 1e12:.3f} TFLOP/s this CPU gives now the run takes about {minutes:.0f} min; a GPU does "
             "this in seconds to minutes")
  if jnp.dtype(dtype) != jnp.float32:  # measured on 2 cores: B/1 forward 32.4 s in float32, 35.2 s in bf16
    warning += (f"; on CPUs --config.model.dtype=float32 is no slower than {jnp.dtype(dtype).name} "
                "and gives the official numbers exactly")
  return warning


def _write(generator: Generator, config, output_dir, given: np.ndarray | None, stop) -> list[epath.Path]:
  opts, model = config.sample, generator.model
  if model.num_classes:
    check_label(opts.label, model.num_classes, "config.sample.label")
  labels = np.full(opts.num_streams, opts.label if model.num_classes else 0)  # 0: an unconditional model's null
  output_dir = storage.as_path(output_dir)  # a local folder or a URL (gs://...)
  created = [] if storage.is_remote(output_dir) else [  # deepest first
      folder for folder in (output_dir, *output_dir.parents) if not folder.exists()]
  output_dir.mkdir(parents=True, exist_ok=True)
  try:
    return _write_into(generator, config, output_dir, given, labels, stop)
  except BaseException:
    for folder in created:
      if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        logging.warning("removed %s, which this run created and left empty", folder)
    raise


def _write_into(generator: Generator, config, output_dir: epath.Path, given: np.ndarray | None, labels,
                stop) -> list[epath.Path]:
  opts, model = config.sample, generator.model
  paths = [output_dir / f"stream_{i}.mp4" for i in range(opts.num_streams)]

  mode = "stream" if given is None else {"audio": "video_for", "video": "audio_for"}[opts.condition]
  calls, flop_per_call = generator.num_calls(opts.num_frames, mode), generator.flops_per_call(opts.num_streams)
  if jax.default_backend() == "cpu" and flop_per_call >= _CPU_WARN_TFLOP_PER_CALL * 1e12:
    logging.warning(cpu_warning(flop_per_call, calls, cpu_flop_rate(model.dtype), model.dtype))
  logging.info("sampling %d stream(s) x %d frames on %d of %d %s devices: %d network calls", opts.num_streams,
               opts.num_frames, len(stream_devices(opts.num_streams, generator.devices)), jax.local_device_count(),
               jax.default_backend(), calls)
  if given is None:
    previews = _write_joint(generator, labels, opts.num_frames, config.seed, paths, stop)
  else:
    previews = _write_conditional(generator, labels, opts, config.seed, paths, given, stop)
  window = model.predict_frames
  with stop.held():
    write_png(output_dir / "stream_0_frames.png", contact_sheet(previews[0], columns=window))
    write_png(output_dir / "stream_0_mel.png", spectrogram_image(audio.mel_from_frames(previews[1])))
  return paths


class _StopSignals:
  """While a run of `sample` goes on in the main thread, SIGINT (Ctrl-C) raises KeyboardInterrupt and SIGTERM
  SystemExit(143), so that the files are finished or removed; inside `held()` both wait for the block's end."""

  def __init__(self):
    self._holding, self._pending, self._previous = False, None, {}

  def __enter__(self) -> "_StopSignals":
    if threading.current_thread() is threading.main_thread():
      self._previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  @contextlib.contextmanager
  def held(self):
    self._holding = True
    try:
      yield
    finally:
      self._holding, pending, self._pending = False, self._pending, None
    if pending is not None:
      self._stop(pending)

  def _handle(self, signum, frame) -> None:
    del frame
    if self._holding:
      self._pending = signum
    else:
      self._stop(signum)

  @staticmethod
  def _stop(signum: int):
    logging.warning("%s received: stopping", signal.Signals(signum).name)
    raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)


class _NoStopSignals:
  """Signals keep their handlers (the trainer's own SIGTERM handling, for one)."""

  @staticmethod
  def held():
    return contextlib.nullcontext()


_NO_STOP_SIGNALS = _NoStopSignals()


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


def _write_joint(generator: Generator, labels: np.ndarray, num_frames: int, seed: int, paths, stop):
  """Joint streams written to the mp4 files chunk by chunk; returns stream 0's first 2 W frames and mels.

  If the run stops early, each file keeps the whole chunks written to it (none: it is removed)."""
  batch, preview_frames = len(labels), 2 * generator.model.predict_frames
  preview_video, preview_mel = [], []
  start, done = time.perf_counter(), 0
  clock = StageClock()
  writers, written = [], [0] * len(paths)  # written[b]: frames of whole chunks in stream b's file
  try:
    with stop.held():
      writers.extend(Mp4Writer(p, fps=FPS, sample_rate=SAMPLE_RATE) for p in paths)
    for chunk in generator.stream(labels, num_frames, seed=seed, clock=clock):
      if done < preview_frames:
        preview_video.append(chunk.video[0])
        preview_mel.append(chunk.mel[0])
      with clock("mp4 writing"), stop.held():
        for b, writer in enumerate(writers):
          before, written[b] = written[b], 0  # 0 while the chunk is half written: a failure removes the file
          writer.write(chunk.video[b], chunk.wav[b])
          written[b] = before + chunk.video.shape[1]
      done += chunk.video.shape[1]
      log_frames(done, num_frames, batch, time.perf_counter() - start)
  except BaseException:
    with stop.held():
      _end_early(writers, written, num_frames)
    raise
  with clock("mp4 writing"), stop.held():
    for writer in writers:
      writer.close()
  total_s = time.perf_counter() - start
  clock.seconds["vocoder"] = total_s - sum(clock.seconds.values())  # what the loop spends outside the other stages
  logging.info("stages: %s", clock.report(total_s))
  return np.concatenate(preview_video)[:preview_frames], np.concatenate(preview_mel)[:preview_frames]


def _end_early(writers: list[Mp4Writer], written: list[int], num_frames: int) -> None:
  """Finishes the mp4 files of a stopped run with the whole chunks written to each (written[b] frames); removes
  those without any."""
  finished, removed = [], []
  for writer, frames in zip(writers, written):
    if frames:
      writer.close()
      finished.append(f"{writer.path} ({frames} of {num_frames} frames)")
    else:
      writer.discard()
      removed.append(writer.path)
  if finished:
    logging.warning("stopped early: finished %s, whole chunks", ", ".join(finished))
  if removed:
    logging.warning("stopped early: removed %s, which held no whole chunk", ", ".join(removed))


def _write_conditional(generator: Generator, labels: np.ndarray, opts, seed: int, paths, given: np.ndarray, stop):
  """One modality generated for the given other one (whole clip in memory); returns the previews as joint does."""
  batch, num_frames, window = len(labels), opts.num_frames, generator.model.predict_frames
  repeat = lambda x: np.repeat(np.asarray(x)[None], batch, axis=0)
  if opts.condition == "audio":
    mel = audio.frames_from_mel(audio.mel_from_waveform(given))
    video = generator.video_for(repeat(mel[:num_frames + window]), labels, num_frames, seed=seed)
    mel, wav = mel[None], repeat(given[:num_frames * SAMPLES_PER_FRAME] / 32768)  # previews: the given mel
  else:
    frames = letterbox(given[:num_frames + window], generator.model.latent_size * generator.codec.downsample_factor)
    mel, wav = generator.audio_for(repeat(frames), labels, num_frames, seed=seed)
    video = repeat(frames[:num_frames])
  for b, path in enumerate(paths):
    with stop.held():
      writer = Mp4Writer(path, fps=FPS, sample_rate=SAMPLE_RATE)
      try:
        writer.write(video[b], wav[b])
      except BaseException:
        writer.discard()
        logging.warning("writing %s failed: removed it", path)
        raise
      writer.close()
  return video[0, :2 * window], mel[0, :2 * window]
