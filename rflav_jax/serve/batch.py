"""Many live streams rolled in one sampler call; streams join and leave, and change class or guidance, between chunks.

A `BatchSampler` keeps each stream's window apart. `roll` stacks the windows of the streams it is given into one
batch (B, W, ...), runs chunk_frames frames of the rolling program on it and hands each stream its window back.
Labels and guidance scales are inputs of the compiled program, so a change of class or guidance takes effect at the
next chunk and compiles nothing; each batch size compiles its `program` once (`warm` does that ahead of time). Every
stream draws its own noise from its own key, so a stream started from (label, seed) makes the frames of
`Generator.stream([label], seed=seed)` with that guidance scale, alone or in any batch.

The streams run on the Generator's first device.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rflav_jax.flow.guidance import model_velocity, per_stream_guidance
from rflav_jax.flow.sampling import RollingSampler, Window
from rflav_jax.generator import Generator


@dataclasses.dataclass
class StreamState:
  """One stream of a batch: its class and guidance scale (the next chunk uses them), window and noise draws.

  window: (1, W, ...) on the device; key: (1,) the key of its fresh frames; frames: frames emitted so far.
  """
  label: int
  guidance: float
  window: Window
  key: jax.Array
  frames: int = 0


class BatchSampler:
  """The rolling programs of one Generator for batches of live streams, chunk_frames frames per call."""

  def __init__(self, generator: Generator, chunk_frames: int):
    if chunk_frames < 1:
      raise ValueError(f"chunk_frames={chunk_frames} must be a positive int")
    self.generator, self.chunk_frames = generator, chunk_frames
    model, options = generator.model, generator.options
    sampler = lambda velocity: RollingSampler(velocity, options.steps_per_frame, stochasticity=options.stochasticity,
                                              devices=generator.devices[:1])
    self._plain = sampler(model_velocity(model, generator.params))
    self._guided = sampler(per_stream_guidance(model, generator.params)) if model.num_classes else None
    self.compiled: set[tuple[int, bool]] = set()  # the `program`s that have run

  def start(self, label: int, seed: int, guidance: float) -> StreamState:
    """A new stream, pre-rolled (W S network calls) from the starting noise of `seed`."""
    start, key = self.generator.starting_noise(seed, 1)
    stream = StreamState(label, guidance, window=None, key=jax.random.split(key, 1))
    sampler = self._sampler([stream])
    stream.window = jax.block_until_ready(sampler.start(sampler.with_noise_keys(start, key), self._labels([stream])))
    return stream

  def roll(self, streams: list[StreamState]) -> tuple[np.ndarray, np.ndarray]:
    """The next chunk of every stream: video (B, n, h, w, c) and mel (B, n, 10, N) in the model's space, on the
    host; each stream's window moves on."""
    sampler, n = self._sampler(streams), self.chunk_frames
    window = jax.tree.map(lambda *parts: jnp.concatenate(parts), *(s.window for s in streams))
    fresh = [sampler.fresh_frames(s.key, s.frames, n, window.v.shape[2:], window.a.shape[2:]) for s in streams]
    incoming = Window(*(jnp.concatenate(parts, axis=1) for parts in zip(*fresh)))
    window, frames_v, frames_a = sampler.roll(window, incoming, self._labels(streams))
    for b, stream in enumerate(streams):
      stream.window = jax.tree.map(lambda x: x[b:b + 1], window)
      stream.frames += n
    self.compiled.add(self.program([s.guidance for s in streams]))
    return jax.device_get((frames_v, frames_a))

  def program(self, guidances: list[float]) -> tuple[int, bool]:
    """(batch size, guided): the rolling program that streams of these guidance scales run together. A batch is
    guided (two network windows per stream) when any of its streams is."""
    return len(guidances), self._guided is not None and any(g != 1.0 for g in guidances)

  def warm(self, program: tuple[int, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Compiles a `program` by running it once on noise, and the pre-roll of a stream of its guidance; returns
    the frames of that run, as `roll` does."""
    batch, guided = program
    guidance = 2.0 if guided else 1.0
    self.start(0, 0, guidance)
    start, key = self.generator.starting_noise(0, batch)
    window = self._plain.with_noise_keys(start, key)
    return self.roll([StreamState(0, guidance, jax.tree.map(lambda x: x[b:b + 1], window),
                                  jax.random.split(key, 1)) for b in range(batch)])

  def _sampler(self, streams: list[StreamState]) -> RollingSampler:
    return self._guided if self.program([s.guidance for s in streams])[1] else self._plain

  def _labels(self, streams: list[StreamState]):
    """What the velocity function gets: labels (B,), with guidance scales (B,) for a guided batch; None for an
    unconditional model."""
    if self._guided is None:
      return None
    labels = np.array([s.label for s in streams], np.int32)
    guided = self.program([s.guidance for s in streams])[1]
    return (labels, np.array([s.guidance for s in streams], np.float32)) if guided else labels
