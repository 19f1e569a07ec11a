"""The benchmark's FLOP accounting and command line (speed itself is never asserted)."""
import json
import pathlib
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from rflav_jax import benchmarking
from rflav_jax.convert.flav import abstract_params
from rflav_jax.models import flops
from rflav_jax.models.flav import FLAV, flav_from_preset

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_flav_b1_window_costs_the_published_flops():
  # The published figure: one forward pass of FLAV-B/1 on a 10-frame window is 2.73 TFLOP per sample.
  model = flav_from_preset("FLAV-B/1", num_classes=10, causal_attn=True)
  assert abs(flops.forward_flops(model) / 1e12 - 2.73) / 2.73 < 0.01
  assert flops.train_step_flops(model, 8) == 8 * 3 * flops.forward_flops(model)
  assert flops.train_step_flops(model.clone(remat=True), 8) == 8 * 4 * flops.forward_flops(model)


@pytest.mark.slow
@pytest.mark.parametrize("block_type, num_classes", [("c", 0), ("a", 0), ("b", 3)])
def test_analytic_flops_agree_with_xla_cost_analysis(block_type, num_classes):
  # XLA's CPU cost analysis counts every operation; the analytic count leaves out the elementwise work. XLA's
  # batched attention: the looped one's lax.map body would be counted once, not once per (sequence, head).
  model = FLAV(latent_size=16, patch_size=2, in_channels=4, hidden_size=128, depth=2, num_heads=2,
               num_classes=num_classes, predict_frames=10, n_mels=256, causal_attn=True, block_type=block_type,
               attention_impl="xla")
  inputs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in ((1, 10, 16, 16, 4), (1, 10, 10, 256), (1, 10))]
  inputs.append(jax.ShapeDtypeStruct((1,), jnp.int32) if num_classes else None)
  compiled = jax.jit(model.apply).lower({"params": abstract_params(model)}, *inputs).compile()
  xla_flops = benchmarking.flops(compiled)
  assert 0.97 * xla_flops < flops.forward_flops(model) <= xla_flops


def test_comparison_sets_figures_beside_the_reference():
  results = [{"measure": "rolling", "frames_per_s": 30.0}, {"measure": "train", "remat": True, "samples_per_s": 7.0,
                                                             "peak_gb": 6.0}]
  table = benchmarking.comparison(results, {"source": "official", "rolling": 15.0, "train_remat": 14.0,
                                            "train_remat_peak_gb": 12.0})
  assert table.splitlines()[0] == "reference: official"
  assert table.splitlines()[2].split() == ["rolling", "frames_per_s", "30", "15", "2.00x"]
  assert table.splitlines()[3].split() == ["train_remat", "samples_per_s", "7", "14", "0.50x"]
  assert table.splitlines()[4].split() == ["train_remat", "peak_gb", "6", "12", "0.50x"]


@pytest.mark.slow
def test_training_in_micro_batches_needs_less_memory():
  # The same update as 4 accumulated micro-batches keeps one micro-batch's activations: XLA's static need falls.
  # A narrow model on many tokens, so that the activations outweigh the state (0.32x measured).
  model = FLAV(latent_size=16, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, predict_frames=4,
               n_mels=32)
  params = benchmarking.init_params(model)
  whole, micro = (benchmarking.train_step(model, params, 8, iters=1, warmup=0, repeats=1, accumulate_steps=k)
                  for k in (1, 4))
  assert (whole["accumulate_steps"], micro["accumulate_steps"]) == (1, 4)
  assert micro["program_gb"] < 0.5 * whole["program_gb"], (micro["program_gb"], whole["program_gb"])
  with pytest.raises(ValueError, match="train_accumulate_steps=3 must divide the training batch 8"):
    benchmarking.train_step(model, params, 8, iters=1, accumulate_steps=3)


def test_a_profile_follows_the_timing_and_a_failed_one_keeps_the_figures(tmp_path, monkeypatch):
  matmul = lambda timer: benchmarking.matmul(jnp.float32, 256, iters=2, warmup=1, repeats=1, timer=timer)
  profiled = benchmarking.measure(matmul, str(tmp_path / "ok"))
  assert profiled["tflop_per_s"] > 0 and profiled["profile"]["top"][0][1] == "matmul"
  assert profiled["profile"]["top"][0][3] == 2  # the 2 timed calls, traced again after the timing

  def no_profiler(*args):
    raise RuntimeError("CUPTI is not available")

  monkeypatch.setattr(benchmarking.profiling, "capture", no_profiler)
  failed = benchmarking.measure(matmul, str(tmp_path / "failed"))
  assert failed["tflop_per_s"] > 0 and "profile" not in failed
  assert failed["profile_error"] == "RuntimeError: CUPTI is not available"


def test_measure_reports_every_timed_repeat_and_the_headline_is_their_median():
  result = benchmarking.measure(lambda timer: benchmarking.matmul(jnp.float32, 128, iters=2, warmup=1, repeats=3,
                                                                  timer=timer))
  assert len(result["repeat_seconds"]) == 3 and min(result["repeat_seconds"]) > 0
  assert result["tflop_per_s"] == pytest.approx(2 * 128 ** 3 / statistics.median(result["repeat_seconds"]) / 1e12)


def _benchmark(*flags):
  result = subprocess.run([sys.executable, "-m", "launch.benchmark", "--config=configs/bench_cpu.py:short", *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_benchmark_command_reports_flops_mfu_compile_times_and_memory(tmp_path):
  cache = tmp_path / "xla_cache"
  stdout = _benchmark(f"--output={tmp_path / 'bench.json'}", f"--config.compilation_cache_dir={cache}",
                      "--config.model.attention_impl=xla", "--compare")
  results = {r["measure"]: r for r in json.loads((tmp_path / "bench.json").read_text())}
  assert list(results) == ["matmul", "forward", "rolling", "clip", "train"]
  for r in results.values():
    assert r["tflop_per_s"] > 0 and r["mfu"] == pytest.approx(r["tflop_per_s"] / 0.187)
    assert r["compile_s"] > 0 and r["lower_s"] > 0 and r["programs"] and r["cache_hits"] == 0
    assert r["peak_gb"] > 0 and r["peak_memory"] and r["attention_impl"] == "xla"
    assert len(r["repeat_seconds"]) == 1  # the short config times each measurement once
  assert results["forward"]["samples_per_s"] > 0 and results["forward"]["program_gb"] > 0
  assert results["rolling"]["frames_per_s"] > 0 and results["rolling"]["first_frame_s"] > 0
  assert results["clip"]["frames_per_s"] > 0
  assert results["train"]["samples_per_s"] > 0 and results["train"]["program_gb"] > 0
  assert "reference: none given" in stdout and "ours / reference" in stdout
  # A second run of the same programs loads them from the persistent compilation cache; --profile_dir traces the
  # timed calls after timing them and says where their time went.
  stdout = _benchmark("--only=forward", f"--config.compilation_cache_dir={cache}", "--config.model.attention_impl=xla",
                      f"--profile_dir={tmp_path / 'profile'}")
  again = json.loads(next(line for line in stdout.splitlines() if line.startswith("{")))
  assert again["cache_hits"] >= 1 and again["compile_s"] < results["forward"]["compile_s"]
  assert again["profile"]["kinds"]["matmul"] > 0 and f"profile of forward (traces in {tmp_path / 'profile'}" in stdout
  assert list((tmp_path / "profile" / "forward").glob("**/perfetto_trace.json.gz"))


@pytest.mark.slow
def test_input_alone_is_timed_in_global_batches_of_the_configs_data():
  from configs import bench_cpu  # pylint: disable=g-import-not-at-top
  config = bench_cpu.get_config("short")
  model = flav_from_preset("FLAV-B/1").clone(predict_frames=4)  # the input cuts the model's window
  batches = benchmarking.input_batches(config, model, batch=2)
  first = next(batches)
  assert first["video"].shape == (2, 4, 32, 32, 3) and first["mel"].shape == (2, 4, 10, 256)
  assert isinstance(first["video"], jax.Array)
  result = benchmarking.measure(lambda timer: benchmarking.input_pipeline(batches, 2, iters=2, warmup=1, repeats=1,
                                                                          timer=timer))
  assert result["batches_per_s"] > 0 and result["samples_per_s"] == pytest.approx(2 * result["batches_per_s"])
  assert len(result["repeat_seconds"]) == 1
  batches.close()
