r"""Measures FLAV speed on this machine's devices: forward, rolling generation, clip generation, train step.

  python -m launch.benchmark --config=configs/bench_cpu.py
  python -m launch.benchmark --config=configs/bench_b1.py --config.model.dtype=bfloat16 --output=bench.json

Prints one JSON line per measurement and writes them all to --output; record results with the machine in
docs/PERFORMANCE.md.
"""
import json

import jax
from absl import flags
from ml_collections import config_flags

from rflav_jax import benchmarking
from rflav_jax import cli
from rflav_jax.models.flav import flav_from_config

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_cpu.py", "Benchmark config file.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the results.")
_ONLY = flags.DEFINE_list("only", ["forward", "rolling", "clip", "train"], "Measurements to run.")


def main(argv):
  del argv
  config = _CONFIG.value
  model = flav_from_config(config.model)
  params = benchmarking.init_params(model)
  measurements = {
      "forward": lambda: benchmarking.forward(model, params, config.forward_batch, config.iters, repeats=config.repeats),
      "rolling": lambda: benchmarking.rolling(model, params, config.streams, config.steps_per_frame,
                                              config.rolling_frames, repeats=config.repeats),
      "clip": lambda: benchmarking.clip(model, params, config.streams, config.steps_per_frame, config.clip_frames,
                                        repeats=config.repeats),
      "train": lambda: benchmarking.train_step(model, params, config.train_batch, config.iters, repeats=config.repeats),
  }
  device = jax.devices()[0]
  results = []
  for name in _ONLY.value:
    result = {"measure": name, "device": device.device_kind, "devices": jax.device_count(),
              "dtype": config.model.dtype, **measurements[name]()}
    print(json.dumps(result), flush=True)
    results.append(result)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
