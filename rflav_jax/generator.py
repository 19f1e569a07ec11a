"""One object that generates: FLAV + weights + video codec + vocoder + sampling options -> decoded audio-video.

`Generator.stream` yields jointly generated streams chunk by chunk, any length in constant memory;
`continue_from` rolls streams on from the first window of real clips; `video_for` and `audio_for` generate one
modality for a given other one. Decoded frames: video uint8 (B, n, H, W, 3) at 10 fps; mel (B, n, 10, N)
normalised to [-1, 1] (`rflav_jax.codecs.audio`; the model works on it times the vocoder's audio_scale); waveform
float32 (B, n * 1600) in [-1, 1] at 16 kHz, aligned with the video frame by frame.

labels (B,): one class per stream, in 0..num_classes, num_classes being the null label (no class); an
unconditional model (num_classes = 0) takes 0s. Every random draw comes from `seed`: jax.random.key(seed) splits
into (video window, mel window, stream) keys for `stream` and `continue_from`, into (generated window, rest) keys
for `video_for` / `audio_for`; the starting noise windows are drawn in `_noise_window`.
"""
import contextlib
import dataclasses
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rflav_jax.codecs.pixel import VideoCodec, to_uint8
from rflav_jax.codecs.vocoder import MelVocoder
from rflav_jax.build import build, build_video_codec, build_vocoder
from rflav_jax.flow import schedule
from rflav_jax.flow.guidance import classifier_free_guidance, model_velocity
from rflav_jax.flow.progress import CallProgress
from rflav_jax.flow.sampling import OFFICIAL_GUIDANCE_SCALE, Conditioning, RollingSampler, Window, check_stochasticity
from rflav_jax.flow.steps import check_condition_mode
from rflav_jax.media.align import FrameAligner
from rflav_jax.models.flav import FLAV
from rflav_jax.models.flops import forward_flops

FPS, SAMPLE_RATE = 10, 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
MODES = ("stream", "continue_from", "video_for", "audio_for")
# Stages a `clock` passed to `stream` / `continue_from` times.
NETWORK, VIDEO_DECODING = "network (compilation included)", "video decoding"

Clock = Callable[[str], ContextManager]  # clock(stage) times the block it wraps as that stage


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """How a Generator samples; config.sample holds fields of the same names.

  steps_per_frame: S, Euler steps per emitted frame (network calls per frame and stream).
  stochasticity: share of each frame's noise drawn afresh after every step (0: plain Euler as released).
  guidance_scale: classifier-free guidance of a class-conditional model (1: none).
  condition_guidance: weight of the gradient guidance of `video_for` / `audio_for` (0: none; 100: the official).
  condition_mode: how that guidance is formed (`flow.steps.Conditioning`): "official" (the official sampler's:
    objective averaged over the streams, fresh noise for the given audio at each rolling step) or "independent"
    (each given frame's noise held, streams guided independently).
  chunk_frames: frames per compiled call of `stream` / `continue_from`, and per chunk they yield.
  """
  steps_per_frame: int = 2
  stochasticity: float = 0.0
  guidance_scale: float = 1.0
  condition_guidance: float = OFFICIAL_GUIDANCE_SCALE
  condition_mode: str = "official"
  chunk_frames: int = 20

  def __post_init__(self):
    for name in ("steps_per_frame", "chunk_frames"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name}={getattr(self, name)} must be a positive int")
    check_stochasticity(self.stochasticity)
    if self.condition_guidance < 0:
      raise ValueError(f"condition_guidance={self.condition_guidance} must be >= 0 (0: no gradient guidance)")
    check_condition_mode(self.condition_mode, "condition_mode")

  @classmethod
  def from_config(cls, sample_config) -> "SamplingOptions":
    """The options of config.sample; a bad value is named as its config field."""
    try:
      return cls(**{field.name: sample_config[field.name] for field in dataclasses.fields(cls)})
    except ValueError as error:
      raise ValueError(f"config.sample.{error}") from None


def fit_to_machine(sample_config, backend: str | None = None):
  """A copy of config.sample whose num_streams and chunk_frames, where None (a config's `placeholder(int)`), are
  chosen for the machine; values set in the config or on the command line are kept.

  num_streams: 1 on a CPU, where each stream's network calls take the cores for as long again, else 4;
  chunk_frames: num_frames, at most 20 (a longer chunk computes frames only to drop them).
  backend: jax.default_backend() unless given.
  """
  fitted = sample_config.copy_and_resolve_references()
  if fitted.get("num_streams", 1) is None:
    fitted.num_streams = 1 if (backend or jax.default_backend()) == "cpu" else 4
  if fitted.chunk_frames is None:
    fitted.chunk_frames = min(20, fitted.num_frames)
  return fitted


@dataclasses.dataclass(frozen=True)
class Chunk:
  """n decoded frames of B streams: video uint8 (B, n, H, W, 3), mel (B, n, 10, N) in [-1, 1], and wav float32
  (B, n * 1600) at 16 kHz (None when not vocoded)."""
  video: np.ndarray
  mel: np.ndarray
  wav: np.ndarray | None


def stream_devices(num_streams: int, devices: Sequence | None = None) -> list:
  """The most of `devices` (default: the local ones) whose number divides num_streams, so each gets as many."""
  devices = list(jax.local_devices() if devices is None else devices)
  return devices[:max(k for k in range(1, len(devices) + 1) if num_streams % k == 0)]


def check_label(label: int, num_classes: int, name: str = "label") -> None:
  """ValueError naming `name` unless label is a class of the model or its null label num_classes."""
  if not 0 <= label <= num_classes:
    classes = (f"the model has classes 0..{num_classes - 1} (and {num_classes}, the null label)" if num_classes
               else "the model is unconditional: its only label is 0, the null label")
    raise ValueError(f"{name}={label}: {classes}")


def _check_num_frames(num_frames: int | None) -> None:
  if num_frames is not None and num_frames < 1:
    raise ValueError(f"num_frames={num_frames} must be a positive int, or None for an endless stream")


def _no_clock(stage: str) -> ContextManager:
  del stage
  return contextlib.nullcontext()


class Generator:
  """Every mode of generation of one model, decoded.

  Args:
    model, params: the flow model and its weights.
    codec: the video codec: decodes the generated video, encodes a given one.
    vocoder: turns mel into waveforms; its audio_scale is the mel scale the model was trained with.
    options: SamplingOptions.
    devices: the devices streams may be split over (default: the local ones); each call uses the most of them
      whose number divides its number of streams (`stream_devices`).
    progress: an optional CallProgress that logs every network call. It is bound into the compiled programs, which
      are therefore shared by every run of this Generator (and of `with_params` copies), and only by them.
  """

  def __init__(self, model: FLAV, params, codec: VideoCodec, vocoder: MelVocoder,
               options: SamplingOptions = SamplingOptions(), *, devices: Sequence | None = None,
               progress: CallProgress | None = None):
    self.model, self.params, self.codec, self.vocoder, self.options = model, params, codec, vocoder, options
    self.devices = list(jax.local_devices() if devices is None else devices)
    self.progress = progress
    self.guided = bool(model.num_classes) and options.guidance_scale != 1.0  # classifier-free: 2 windows per call
    velocity = (classifier_free_guidance(model, params, options.guidance_scale) if self.guided
                else model_velocity(model, params))
    self._velocity = velocity if progress is None else progress.counted(velocity)
    self._samplers: dict[tuple, RollingSampler] = {}

  @classmethod
  def from_config(cls, config, model: FLAV | None = None, params=None, *, devices: Sequence | None = None,
                  progress: CallProgress | None = None) -> "Generator":
    """The Generator of a sampling config: config.sample's options (`fit_to_machine`), the model of config.model /
    config.checkpoint / config.seed (unless model and params are given), config.codec, and config.vocoder with
    config.audio_scale."""
    options = SamplingOptions.from_config(fit_to_machine(config.sample))
    if model is None:
      model, params, codec, vocoder = build(config)
    else:
      codec, vocoder = build_video_codec(config.codec, model), build_vocoder(config.vocoder, config.audio_scale,
                                                                             model.n_mels)
    return cls(model, params, codec, vocoder, options, devices=devices, progress=progress)

  def with_params(self, params) -> "Generator":
    """This Generator with other weights of the same model (e.g. newer EMA weights): the same compiled programs."""
    return Generator(self.model, params, self.codec, self.vocoder, self.options, devices=self.devices,
                     progress=self.progress)

  # --------------------------------------------------------------------------------------------------
  # Generation.

  def stream(self, labels, num_frames: int | None = None, *, seed: int = 0, vocode: bool = True,
             clock: Clock = _no_clock) -> Iterator[Chunk]:
    """Joint generation of B = len(labels) streams from pure noise: num_frames frames each (None: endless).

    Chunks come as the sampler makes them, options.chunk_frames frames each (the last cut at num_frames); a
    vocoder that lags its mel (HiFi-GAN) holds frames back until their audio is there. Memory does not grow with
    the length. vocode=False leaves out the waveforms (wav None); clock(stage) times the stages NETWORK and
    VIDEO_DECODING.
    """
    network_labels, batch = self._labels(labels)
    _check_num_frames(num_frames)
    start, key = self.starting_noise(seed, batch)
    sampler = self._sampler(batch)
    frames = sampler.stream(start.v, start.a, key, self.options.chunk_frames, network_labels)
    return self._decoded(frames, "stream", sampler, batch, num_frames, vocode, clock)

  def starting_noise(self, seed: int, batch: int) -> tuple[Window, jax.Array]:
    """The pure-noise windows that `stream` starts B streams from for `seed`, and the key of their later draws
    (fresh frames and stochastic steps, as `RollingSampler.stream` makes them)."""
    key_v, key_a, key = jax.random.split(jax.random.key(seed), 3)
    return Window(self._noise_window(key_v, "video", batch), self._noise_window(key_a, "audio", batch)), key

  def continue_from(self, video, mel, labels, num_frames: int | None = None, *, seed: int = 0, vocode: bool = True,
                    clock: Clock = _no_clock) -> Iterator[Chunk]:
    """Streams rolled on from the first W frames of real clips instead of the pre-roll; chunks as `stream`'s.

    video uint8 (B, W, H, Wd, 3) and mel (B, W, 10, N) in [-1, 1] (W: the model's window) are noised to the state
    the pre-roll leaves (frame k at flow time 1 - k / W), then rolled; so the first W frames returned still hold
    the clips, frame k to the share 1 - k / W.
    """
    network_labels, batch = self._labels(labels)
    _check_num_frames(num_frames)
    window = self.model.predict_frames
    video, mel = np.asarray(video), np.asarray(mel, np.float32)
    if video.shape[:2] != (batch, window) or mel.shape[:2] != (batch, window):
      raise ValueError(f"continue_from needs the first {window} frames of video and mel (the model's window) of "
                       f"each of the {batch} streams; got video {video.shape} and mel {mel.shape}")
    key_v, key_a, key = jax.random.split(jax.random.key(seed), 3)
    t = schedule.preroll_times(1, 1, window)  # where the pre-roll ends: frame k at 1 - k / W

    def noised(clean, noise):  # t_k clean + (1 - t_k) noise, per frame k
      t_k = t.reshape(1, window, *(1,) * (clean.ndim - 2))
      return t_k * clean + (1.0 - t_k) * noise

    start = Window(noised(jnp.asarray(self.codec.encode(video)), self._noise_window(key_v, "video", batch)),
                   noised(jnp.asarray(mel * self.vocoder.audio_scale), self._noise_window(key_a, "audio", batch)))
    sampler = self._sampler(batch)
    frames = sampler.roll_on(sampler.with_noise_keys(start, key), key, self.options.chunk_frames, network_labels)
    return self._decoded(frames, "continue_from", sampler, batch, num_frames, vocode, clock)

  def video_for(self, mel, labels, num_frames: int | None = None, *, seed: int = 0) -> np.ndarray:
    """uint8 video (B, n, H, W, 3) generated for given mel frames (B, L, 10, N) in [-1, 1], with gradient guidance.

    Video frame j is made for mel frame j; n = num_frames, default L. The window sees n + W mel frames: those past
    L are N(0, 1) frames drawn from seed, as the official code does. The guidance is options.condition_mode's, of
    weight options.condition_guidance.
    """
    scaled = np.asarray(mel, np.float32) * self.vocoder.audio_scale
    frames = self._given("audio", scaled, labels, num_frames, seed)
    return to_uint8(self.codec.decode(np.asarray(frames)))

  def audio_for(self, video, labels, num_frames: int | None = None, *, seed: int = 0,
                vocode: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(mel (B, n, 10, N) in [-1, 1], wav (B, n * 1600) or None without vocode) generated for given uint8 video
    frames (B, L, H, W, 3) at the codec's resolution; the mirror of `video_for`."""
    given = self.codec.encode(np.asarray(video))
    mel = np.asarray(self._given("video", given, labels, num_frames, seed))
    wav = np.concatenate(list(self.vocoder.stream([mel])), axis=1) if vocode else None
    return mel / self.vocoder.audio_scale, wav

  # --------------------------------------------------------------------------------------------------
  # Costs.

  def num_calls(self, num_frames: int, mode: str = "stream") -> int:
    """Network calls (each on all streams at once) for num_frames frames per stream of `mode`, a method's name."""
    if mode not in MODES:
      raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    sampler, window = self._sampler(1), self.model.predict_frames
    if mode in ("video_for", "audio_for"):
      return sampler.num_calls(num_frames, window)
    return sampler.num_calls(num_frames, window, chunk_frames=self.options.chunk_frames, preroll=mode == "stream")

  def flops_per_call(self, streams: int = 1) -> float:
    """FLOPs of one network call on `streams` streams: the forward pass on each window (two per stream with
    classifier-free guidance). The gradient guidance of `video_for` / `audio_for` adds a backward pass."""
    return streams * (2 if self.guided else 1) * forward_flops(self.model)

  @property
  def flops_per_frame(self) -> float:
    """FLOPs per frame of one stream while rolling: steps_per_frame network calls on its window."""
    return self.options.steps_per_frame * self.flops_per_call(1)

  # --------------------------------------------------------------------------------------------------
  # Parts.

  def _labels(self, labels) -> tuple[np.ndarray | None, int]:
    """(what the network gets: labels (B,) int32, or None for an unconditional model; B), after checking them."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not labels.size or not np.issubdtype(labels.dtype, np.integer):
      raise ValueError(f"labels {labels.tolist()}: expected one int class label per stream, shape (B,)")
    for b, label in enumerate(labels.tolist()):
      check_label(label, self.model.num_classes, f"labels[{b}]")
    return (labels.astype(np.int32) if self.model.num_classes else None), len(labels)

  def _sampler(self, batch: int, conditioning: Conditioning | None = None) -> RollingSampler:
    """The RollingSampler of `batch` streams (on the devices they divide evenly over) and the conditioning."""
    key = (conditioning, tuple(stream_devices(batch, self.devices)))
    if key not in self._samplers:
      self._samplers[key] = RollingSampler(self._velocity, self.options.steps_per_frame, conditioning=conditioning,
                                           stochasticity=self.options.stochasticity, devices=key[1])
    return self._samplers[key]

  def _noise_window(self, key: jax.Array, modality: str, batch: int) -> jax.Array:
    """The starting N(0, 1) window of one modality: video (B, W, h, w, c) or mel (B, W, 10, N)."""
    model = self.model
    frame = ((model.latent_size, model.latent_size, model.in_channels) if modality == "video"
             else (model.audio_columns, model.n_mels))
    return jax.random.normal(key, (batch, model.predict_frames) + frame)

  def _begin(self, mode: str, sampler: RollingSampler, num_frames: int | None) -> None:
    if self.progress is not None:
      preroll = 0 if mode == "continue_from" else sampler.plan.num_preroll_steps(self.model.predict_frames)
      total = None if num_frames is None else self.num_calls(num_frames, mode)
      self.progress.begin(total, preroll, sampler.num_devices)

  def _given(self, modality: str, given, labels, num_frames: int | None, seed: int) -> jax.Array:
    """The generated modality's frames (B, n, ...) for the given `modality`'s model-space frames (B, L), guided as
    the options say."""
    network_labels, batch = self._labels(labels)
    if len(given) != batch:
      raise ValueError(f"{len(given)} given clips for {batch} labels: pass one label per clip")
    num_frames = len(given[0]) if num_frames is None else num_frames
    key_init, key = jax.random.split(jax.random.key(seed))
    conditioning = Conditioning(modality, self.options.condition_guidance, self.options.condition_mode)
    generated = "video" if modality == "audio" else "audio"
    sampler = self._sampler(batch, conditioning)
    self._begin("video_for" if generated == "video" else "audio_for", sampler, num_frames)
    return sampler.generate_given(self._noise_window(key_init, generated, batch), given, num_frames, key=key,
                                  labels=network_labels)

  def _decoded(self, frames: Iterator, mode: str, sampler: RollingSampler, batch: int, num_frames: int | None,
               vocode: bool, clock: Clock) -> Iterator[Chunk]:
    self._begin(mode, sampler, num_frames)
    yield from self.decode(frames, batch, num_frames, vocode=vocode, clock=clock)

  def decode(self, frames: Iterable, batch: int, num_frames: int | None = None, *, vocode: bool = True,
             clock: Clock = _no_clock) -> Iterator[Chunk]:
    """Chunks of B streams' network frames, decoded (and vocoded), ending at num_frames (None: with `frames`).

    frames: (video, mel) chunks in the model's space, (B, n, h, w, c) and (B, n, 10, N), as the sampler makes them
    (`RollingSampler.roll`); the Chunks follow as `stream` describes.
    """
    frames, scale = iter(frames), self.vocoder.audio_scale

    def pictures():  # (uint8 video, mel in the model's scale) per chunk
      done = 0
      while num_frames is None or done < num_frames:
        with clock(NETWORK):
          frames_v, frames_a = next(frames, (None, None))
        if frames_v is None:
          return
        take = frames_v.shape[1] if num_frames is None else min(frames_v.shape[1], num_frames - done)
        with clock(VIDEO_DECODING):
          video = to_uint8(self.codec.decode(frames_v[:, :take]))
        done += take
        yield video, frames_a[:, :take]

    if not vocode:
      for video, mel in pictures():
        yield Chunk(video, mel / scale, None)
      return
    aligner, held = FrameAligner(batch, SAMPLES_PER_FRAME), []  # held: mel frames of the video in the aligner

    def mels():
      for video, mel in pictures():
        aligner.push_video(video)
        held.append(mel)
        yield mel

    for wav in self.vocoder.stream(mels()):
      aligner.push_audio(wav)
      video, wav = aligner.pop()
      mel = np.concatenate(held, axis=1)
      ready = video.shape[1]
      held[:] = [mel[:, ready:]]
      if ready:
        yield Chunk(video, mel[:, :ready] / scale, wav)
