"""The CPU shape on which the official code's speed was measured, with its figures.

hidden 256, depth 4, 4 heads, patch 2, 4x16x16 latents, window 10, 256 mels, causal, unconditional, float32;
rolling with 2 streams, training at batch 4.

  python -m launch.benchmark --config=configs/bench_cpu_official.py --only=rolling,train --compare
"""
import ml_collections

from configs import bench_cpu


def get_config():
  config = bench_cpu.get_config()
  config.model.update(hidden_size=256, depth=4, num_heads=4)
  # 10 steps per timing (the official side-by-side harness times 20): shorter timings swing more on 2 cores.
  config.update(forward_batch=4, train_batch=4, streams=2, iters=10)
  config.reference = ml_collections.ConfigDict({
      "float32": dict(source="official code on the same 2-core AMD EPYC, best of 3 alternating rounds: rolling torch "
                             "2.11 2026-11-27, training torch 2.14.1 2026-11-29",
                      rolling=8.9, train=5.9),
  })
  return config
