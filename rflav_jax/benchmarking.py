"""Speed measurements of FLAV on the available devices, measured as the official code's speed was.

Each measurement compiles first, runs `warmup` untimed iterations, then times `iters` iterations ending in
`block_until_ready` with a `Timer`, and reports the median of `repeats` such timings (`measure` adds all of them, as
repeat_seconds, for comparisons that take the best or the spread). FLOPs are counted analytically
(`rflav_jax.models.flops`; XLA's cost analysis leaves out library GEMMs on GPUs). `measure` adds to any
measurement the time spent tracing, lowering and compiling its programs, and its peak memory, and with
`profile_dir` a profile of the timed calls (`rflav_jax.profiling`), traced after the timing.
"""
import contextlib
import statistics
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rflav_jax import profiling
from rflav_jax.build import build_video_codec
from rflav_jax.codecs.pixel import PixelCodec
from rflav_jax.codecs.vocoder import MelVocoder
from rflav_jax.flow.guidance import model_velocity
from rflav_jax.flow.sampling import RollingSampler, Window
from rflav_jax.generator import Generator, SamplingOptions
from rflav_jax.models.flav import FLAV
from rflav_jax.models.flops import forward_flops, train_step_flops
from rflav_jax.train import input as train_input, optimizer as train_optimizer, parallel
from rflav_jax.train.state import create_train_state, ema_decay_fn
from rflav_jax.train.step import COMPILER_OPTIONS, make_train_step

# The headline figure of each measurement and its name in a reference (config.reference.<dtype>).
HEADLINE = {"forward": "samples_per_s", "rolling": "frames_per_s", "clip": "frames_per_s", "train": "samples_per_s",
            "matmul": "tflop_per_s", "input": "batches_per_s"}
# jax.monitoring duration events of making a program -> our field.
_COMPILE_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
                   "/jax/core/compile/backend_compile_duration": "compile_s"}
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
# Calls traced by a profile at most: enough for the shares, and a B/1 training trace stays a few MB.
PROFILED_CALLS = 3


class Timer:
  """Times program loops; `last` holds (run, iters, seconds per call of each repeat) of the last one timed, which
  `measure` reports and profiles (a measurement times one program loop)."""

  def __init__(self):
    self.last: tuple[Callable[[], object], int, list[float]] | None = None

  def median_seconds(self, run: Callable[[], object], iters: int, warmup: int, repeats: int) -> float:
    """Median over `repeats` of the wall time of `iters` calls of run(), per call."""
    for _ in range(warmup):
      jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(iters):
        out = run()
      jax.block_until_ready(out)
      times.append((time.perf_counter() - start) / iters)
    self.last = (run, iters, times)
    return statistics.median(times)


def _inputs(model: FLAV, batch: int, key):
  k1, k2, k3 = jax.random.split(key, 3)
  frames, size = model.predict_frames, model.latent_size
  v = jax.random.normal(k1, (batch, frames, size, size, model.in_channels))
  a = jax.random.normal(k2, (batch, frames, model.audio_columns, model.n_mels))
  t = jax.random.uniform(k3, (batch, frames))
  y = jnp.zeros((batch,), jnp.int32) if model.num_classes else None
  return v, a, t, y


def init_params(model: FLAV, seed: int = 0):
  return jax.jit(model.init)(jax.random.key(seed), *_inputs(model, 1, jax.random.key(seed)))["params"]


def _program_gb(compiled) -> float | None:
  """Memory a compiled program needs (arguments, outputs and temporaries, XLA's static analysis), GB.

  XLA:CPU's `peak_memory_in_bytes` counts the arguments alone, so the figure is the larger of it and the sum of
  arguments, outputs not aliased to them, and temporaries.
  """
  a = compiled.memory_analysis()
  if a is None:
    return None
  total = a.argument_size_in_bytes + a.output_size_in_bytes - a.alias_size_in_bytes + a.temp_size_in_bytes
  return max(a.peak_memory_in_bytes, total) / 1e9


def forward(model: FLAV, params, batch: int, iters: int, warmup: int = 2, repeats: int = 3,
            timer: Timer | None = None) -> dict:
  """One forward pass on a full window: seconds, samples/s and achieved TFLOP/s (analytic and XLA's count)."""
  inputs = _inputs(model, batch, jax.random.key(1))
  compiled = jax.jit(model.apply).lower({"params": params}, *inputs).compile()
  seconds = (timer or Timer()).median_seconds(lambda: compiled({"params": params}, *inputs), iters, warmup, repeats)
  return {"batch": batch, "seconds": seconds, "samples_per_s": batch / seconds,
          "tflop_per_sample": forward_flops(model) / 1e12, "tflop_per_s": batch * forward_flops(model) / seconds / 1e12,
          "xla_tflop_per_sample": flops(compiled) / batch / 1e12, "program_gb": _program_gb(compiled)}


def rolling(model: FLAV, params, streams: int, steps_per_frame: int, frames: int, repeats: int = 3,
            timer: Timer | None = None) -> dict:
  """Steady-state rolling generation (after pre-roll): frames/s summed over streams.

  Also first_frame_s: from a cold `RollingSampler.stream` to the first frame on the host (compilation of
  the pre-roll, noise and one-frame programs included unless done before in this process).
  """
  sampler = RollingSampler(model_velocity(model, params), steps_per_frame)
  v, a, _, y = _inputs(model, streams, jax.random.key(2))
  start = time.perf_counter()
  next(sampler.stream(v, a, jax.random.key(6), chunk_frames=1, labels=y))
  first_frame_s = time.perf_counter() - start
  window = sampler.start(Window(v, a), y)
  noise = Window(jnp.zeros((frames, *v.shape[:1], *v.shape[2:])), jnp.zeros((frames, *a.shape[:1], *a.shape[2:])))
  seconds = (timer or Timer()).median_seconds(lambda: sampler.roll(window, noise, y), 1, 1, repeats)
  frames_per_s = streams * frames / seconds
  return {"streams": streams, "frames": frames, "frames_per_s": frames_per_s, "first_frame_s": first_frame_s,
          "tflop_per_s": frames_per_s * steps_per_frame * forward_flops(model) / 1e12}


def clip(model: FLAV, params, streams: int, steps_per_frame: int, frames: int, repeats: int = 3,
         timer: Timer | None = None) -> dict:
  """A clip of `frames` frames per stream from pure noise, end to end through a `Generator`: noise drawn,
  pre-rolled, rolled in one chunk and decoded to uint8 frames on the host (the pixel codec: the model's own frames;
  no vocoder). frames/s summed over streams."""
  generator = Generator(model, params, PixelCodec(model.in_channels), MelVocoder(model.n_mels, 1.0),
                        SamplingOptions(steps_per_frame=steps_per_frame, chunk_frames=frames))
  labels = np.zeros(streams, np.int32)  # class 0, or an unconditional model's null label
  run = lambda: next(generator.stream(labels, frames, vocode=False)).video
  seconds = (timer or Timer()).median_seconds(run, 1, 1, repeats)
  calls = generator.num_calls(frames)
  return {"streams": streams, "frames": frames, "frames_per_s": streams * frames / seconds, "network_calls": calls,
          "tflop_per_s": calls * generator.flops_per_call(streams) / seconds / 1e12}


def train_step(model: FLAV, params, batch: int, iters: int, warmup: int = 2, repeats: int = 3,
               accumulate_steps: int = 1, timer: Timer | None = None) -> dict:
  """The trainer's update (rflav_jax.train.step) with the released recipe: samples/s, TFLOP/s.

  accumulate_steps: micro-batches of batch / accumulate_steps whose gradients are averaged (the trainer's
  config.train.accumulate_steps): the same update, with the activation memory of one micro-batch.
  """
  if accumulate_steps < 1 or batch % accumulate_steps:
    raise ValueError(f"train_accumulate_steps={accumulate_steps} must divide the training batch {batch}")
  recipe = ml_collections.ConfigDict(dict(
      optim=dict(lr=1e-4, schedule="constant", warmup_steps=0, decay_steps=0, min_lr_ratio=0.0, b1=0.9, b2=0.999,
                 eps=1e-8, weight_decay=0.02, grad_clip=1.0),
      loss=dict(p_rollout=0.8, weighting="logit_normal"), ema=dict(schedule="diffusers", decay=0.9999)))
  optimizer = train_optimizer.make_optimizer(recipe.optim, num_steps=1)
  step = jax.jit(make_train_step(model, optimizer, train_optimizer.learning_rate_schedule(recipe.optim, 1),
                                 recipe.loss, ema_decay_fn(recipe.ema), accumulate_steps), donate_argnums=0,
                 compiler_options=COMPILER_OPTIONS)
  v, a, _, y = _inputs(model, batch, jax.random.key(4))
  data = {"video": v, "mel": a, "label": jnp.zeros((batch,), jnp.int32) if y is None else y}
  state = [jax.jit(create_train_state, static_argnums=1)(params, optimizer, jax.random.PRNGKey(5))]
  compiled = step.lower(state[0], data).compile()

  def run():
    state[0], metrics = compiled(state[0], data)
    return metrics["loss"]

  seconds = (timer or Timer()).median_seconds(run, iters, warmup, repeats)
  return {"batch": batch, "accumulate_steps": accumulate_steps, "steps_per_s": 1 / seconds, "remat": model.remat,
          "remat_policy": model.remat_policy if model.remat else None, "samples_per_s": batch / seconds,
          "tflop_per_s": train_step_flops(model, batch) / seconds / 1e12, "program_gb": _program_gb(compiled)}


def input_batches(config, model: FLAV, batch: int) -> Iterator[dict]:
  """The trainer's input of config.data (with config.codec and config.audio_scale, as in a training config) for
  `model`'s window, `batch` examples a step, prefetched to all devices as global batches (rflav_jax.train.input)."""
  train_config = ml_collections.ConfigDict({"data": config.data, "codec": config.codec,
                                            "audio_scale": config.audio_scale, "train": {"batch_size": batch}})
  codec = build_video_codec(config.codec, model)
  host_batches = train_input.host_batches(train_config, model, train_input.data_source(config.data), codec, 0)
  return train_input.prefetch_to_devices(host_batches, parallel.make_mesh(1))


def input_pipeline(batches: Iterator[dict], batch: int, iters: int, warmup: int = 2, repeats: int = 3,
                   timer: Timer | None = None) -> dict:
  """The input alone, as fast as it goes: global batches taken from `batches` (e.g. `input_batches`), batches/s and
  samples/s, to set beside the training step's steps/s."""
  seconds = (timer or Timer()).median_seconds(lambda: next(batches), iters, warmup, repeats)
  return {"batch": batch, "batches_per_s": 1 / seconds, "samples_per_s": batch / seconds}


def matmul(dtype, size: int, iters: int, warmup: int = 2, repeats: int = 3, timer: Timer | None = None) -> dict:
  """A size^3 matmul in `dtype`: the achieved TFLOP/s, a measured ceiling for MFU."""
  x = jax.random.normal(jax.random.key(7), (size, size), dtype)
  compiled = jax.jit(jnp.matmul).lower(x, x).compile()
  seconds = (timer or Timer()).median_seconds(lambda: compiled(x, x), iters, warmup, repeats)
  return {"size": size, "tflop_per_s": 2 * size ** 3 / seconds / 1e12}


def flops(compiled) -> float:
  """FLOPs of a lowered or compiled jax program, from XLA's cost analysis."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get("flops", 0.0))


def _union_seconds(spans: list[tuple[float, float]]) -> float:
  """Length of the union of (start, end) intervals (nested programs are traced inside their caller)."""
  total, reach = 0.0, float("-inf")
  for start, end in sorted(spans):
    total += max(0.0, end - max(start, reach))
    reach = max(reach, end)
  return total


@contextlib.contextmanager
def compile_log():
  """Yields a dict filled on exit with what making programs cost inside the block.

  trace_s, lower_s, compile_s: wall seconds tracing to jaxprs, lowering to StableHLO, and compiling (or
  loading from the persistent cache); programs: {name: compile seconds} per program compiled, a repeated
  name suffixed "#k"; cache_hits: programs loaded from the persistent compilation cache.
  """
  spans = {field: [] for field in _COMPILE_EVENTS.values()}
  log = {"programs": {}, "cache_hits": 0}

  def on_span(event, start, end, **kwargs):
    if event in _COMPILE_EVENTS:
      spans[_COMPILE_EVENTS[event]].append((start, end))
    if _COMPILE_EVENTS.get(event) == "compile_s":
      name = kwargs.get("fun_name", "?")
      count = sum(n == name or n.startswith(name + "#") for n in log["programs"])
      log["programs"][f"{name}#{count + 1}" if count else name] = end - start

  def on_event(event, **kwargs):
    log["cache_hits"] += event == _CACHE_HIT_EVENT

  jax.monitoring.register_event_time_span_listener(on_span)
  jax.monitoring.register_event_listener(on_event)
  try:
    yield log
  finally:
    jax.monitoring.unregister_event_time_span_listener(on_span)
    jax.monitoring.unregister_event_listener(on_event)
    log.update({field: _union_seconds(s) for field, s in spans.items()})


def _host_memory_kb(field: str) -> int | None:
  """A field of /proc/self/status in kB ("VmRSS", "VmHWM"), None off Linux."""
  try:
    with open("/proc/self/status") as f:
      return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
  except (OSError, StopIteration):
    return None


@contextlib.contextmanager
def peak_memory():
  """Yields a dict filled on exit with peak_gb and peak_memory (what peak_gb measures).

  Devices with memory statistics (GPUs): the device's peak bytes in use since the process started (run a
  measurement alone with --only for its own peak). Otherwise (CPU) the process's peak resident memory
  during the block (Linux, reset on entry through /proc/self/clear_refs), and peak_delta_gb above the
  memory resident on entry.
  """
  info = {}
  device = jax.local_devices()[0]
  rss = None
  if device.memory_stats() is None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
      f.write("5")  # resets the peak resident set size (VmHWM)
    rss = _host_memory_kb("VmRSS")
  yield info
  stats = device.memory_stats()
  if stats is not None:
    info.update(peak_gb=stats.get("peak_bytes_in_use", 0) / 1e9,
                peak_memory="device peak bytes in use since the process started")
  elif rss is not None and (peak := _host_memory_kb("VmHWM")) is not None:
    info.update(peak_gb=peak * 1024 / 1e9, peak_delta_gb=(peak - rss) * 1024 / 1e9,
                peak_memory="host process peak resident memory during the measurement")
  else:
    info.update(peak_gb=None, peak_memory="unavailable")


def measure(run: Callable[[Timer], dict], profile_dir: str | None = None) -> dict:
  """run(timer)'s result with the cost of making its programs (`compile_log`) and its peak memory (`peak_memory`);
  run times its program loop with the Timer it is given.

  repeat_seconds: the seconds per call of each timed repeat, in order (their median gives the headline figure).
  profile_dir: after timing, the timed calls (PROFILED_CALLS at most) run again under `jax.profiler` into this
  folder, and the result gains "profile", `profiling.summarize` of that trace (the timing itself is not
  profiled), or "profile_error" where no profile could be taken (the measured figures are kept).
  """
  timer = Timer()
  with compile_log() as compiles, peak_memory() as memory:
    result = run(timer)
  if timer.last:
    timed_run, iters, result["repeat_seconds"] = timer.last
  if profile_dir is not None:
    try:
      if timer.last:
        profiling.capture(timed_run, min(iters, PROFILED_CALLS), profile_dir)
      result["profile"] = profiling.summarize(profile_dir)
    except Exception as error:  # pylint: disable=broad-except  # a profiler that fails must not lose the figures
      result["profile_error"] = f"{type(error).__name__}: {error}"
  return {**result, **compiles, **memory}


def comparison(results: list[dict], reference) -> str:
  """A table of each measurement's headline figure (and training's peak memory) beside the reference's.

  reference: {"source": text, "<measure>": figure, "<measure>_peak_gb": GB}; training with remat reads
  "train_remat" and "train_remat_peak_gb".
  """
  rows = [("measure", "figure", "ours", "reference", "ours / reference")]
  for result in results:
    name = result["measure"] + ("_remat" if result.get("remat") else "")
    for figure, key in ((HEADLINE[result["measure"]], name), ("peak_gb", f"{name}_peak_gb")):
      ours, theirs = result.get(figure), reference.get(key)
      if ours is None or (figure == "peak_gb" and theirs is None):
        continue
      ratio = f"{ours / theirs:.2f}x" if theirs else "-"
      rows.append((name, figure, f"{ours:.4g}", "-" if theirs is None else f"{theirs:.4g}", ratio))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
  return "\n".join([f"reference: {reference.get('source', 'none given')}", *lines])
