r"""Measures FLAV speed on this machine's devices: matmul ceiling, forward, rolling generation, clip, train step,
and the training input alone.

  python -m launch.benchmark --config=configs/bench_cpu.py
  python -m launch.benchmark --config=configs/bench_b1.py --config.model.dtype=bfloat16 --output=bench.json --compare
  python -m launch.benchmark --config=configs/bench_cpu.py:short    # seconds: the CI run

Prints one JSON line per measurement and writes them all to --output. Each line holds the headline
figure (the median of config.repeats timings, each of them in repeat_seconds), analytic TFLOP/s and MFU
against config.peak_tflops[dtype], peak memory, and the seconds spent tracing, lowering and compiling
every program (config.compilation_cache_dir: a persistent compilation cache, so a second run compiles
nothing). --compare prints our figures beside config.reference[dtype]. `input` times the training input of
config.data (a training config's data, codec and audio_scale fields) alone: batches/s of config.train_batch
examples, read, windowed, encoded or drawn from cached latents and placed on the devices, to set beside the
train step's steps_per_s (--only=input,train).
--profile_dir=DIR also traces each measurement's timed calls (after timing them) into DIR/<measurement> and
prints where their time went, by kind of operation (rflav_jax.profiling; TensorBoard or Perfetto open the traces).
Record results with the machine in docs/PERFORMANCE.md.
"""
import json
import os

import jax
from absl import flags

from rflav_jax import benchmarking
from rflav_jax import cli
from rflav_jax import compilation_cache
from rflav_jax import profiling
from rflav_jax import storage
from rflav_jax.models.flav import flav_from_config

_CONFIG = cli.define_config("config", "configs/bench_cpu.py", "Benchmark config file.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the results.")
_ONLY = flags.DEFINE_list("only", ["matmul", "forward", "rolling", "clip", "train"],
                          "Measurements to run (also: input).")
_COMPARE = flags.DEFINE_bool("compare", False, "Print our figures beside the config's reference figures.")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "Optional folder for a profile of each measurement.")


def main(argv):
  del argv
  cli.check_output_file("output", _OUTPUT.value)
  cli.check_local("profile_dir", _PROFILE_DIR.value)  # the report reads the traces back from local files
  cli.check_output_dir("profile_dir", _PROFILE_DIR.value)
  config = _CONFIG.value
  unknown = set(_ONLY.value) - set(benchmarking.HEADLINE)
  if unknown:
    raise ValueError(f"--only: unknown measurements {sorted(unknown)}; expected some of {list(benchmarking.HEADLINE)}")
  compilation_cache.enable(config.compilation_cache_dir)
  dtype = config.model.dtype
  model = flav_from_config(config.model)
  params = benchmarking.init_params(model)
  measurements = {  # each times its program loop with the Timer that benchmarking.measure gives it
      "matmul": lambda timer: benchmarking.matmul(dtype, config.matmul_size, config.iters, config.warmup,
                                                  config.repeats, timer),
      "forward": lambda timer: benchmarking.forward(model, params, config.forward_batch, config.iters, config.warmup,
                                                    config.repeats, timer),
      "rolling": lambda timer: benchmarking.rolling(model, params, config.streams, config.steps_per_frame,
                                                    config.rolling_frames, config.repeats, timer),
      "clip": lambda timer: benchmarking.clip(model, params, config.streams, config.steps_per_frame,
                                              config.clip_frames, config.repeats, timer),
      "train": lambda timer: benchmarking.train_step(model, params, config.train_batch, config.iters, config.warmup,
                                                     config.repeats, config.train_accumulate_steps, timer),
      "input": lambda timer: benchmarking.input_pipeline(benchmarking.input_batches(config, model, config.train_batch),
                                                         config.train_batch, config.iters, config.warmup,
                                                         config.repeats, timer),
  }
  device = jax.devices()[0]
  peak_tflops = config.peak_tflops.get(dtype)
  results = []
  for name in _ONLY.value:
    profile_dir = os.path.join(_PROFILE_DIR.value, name) if _PROFILE_DIR.value else None
    result = {"measure": name, "device": device.device_kind, "devices": jax.device_count(), "jax": jax.__version__,
              "dtype": dtype, "attention_impl": config.model.attention_impl,
              **benchmarking.measure(measurements[name], profile_dir)}
    achieved = result.get("tflop_per_s")  # the input runs no network
    result.update(peak_tflops=peak_tflops, mfu=achieved / peak_tflops if peak_tflops and achieved else None)
    print(json.dumps(result), flush=True)
    if "profile" in result:
      print(f"profile of {name} (traces in {profile_dir}):\n{profiling.report(result['profile'])}", flush=True)
    elif profile_dir:
      print(f"no profile of {name}: {result['profile_error']}", flush=True)
    results.append(result)
  if _OUTPUT.value:
    storage.write_atomically(storage.as_path(_OUTPUT.value), json.dumps(results, indent=1))
  if _COMPARE.value:
    print(benchmarking.comparison(results, config.reference.get(dtype, {})))


if __name__ == "__main__":
  cli.run(main)
