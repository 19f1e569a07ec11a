"""rflav_jax.profiling: traces of real programs read back, and the kinds of GPU kernels by their names."""
import gzip
import json

import jax
import jax.numpy as jnp
import pytest

from rflav_jax import profiling


def _profile(fn, *args, folder):
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  profiling.capture(lambda: compiled(*args), 3, str(folder))
  return profiling.summarize(str(folder))


def test_a_matmul_program_is_summed_as_matmul_and_a_transpose_as_copy(tmp_path):
  x = jnp.ones((512, 512))
  gemm = _profile(lambda a: a @ a, x, folder=tmp_path / "gemm")
  assert gemm["kinds"]["matmul"] > 0.9 * gemm["total_ms"] > 0
  assert sum(gemm["kinds"].values()) == pytest.approx(gemm["total_ms"])
  assert gemm["top"][0][1] == "matmul" and gemm["top"][0][3] == 3  # one GEMM per call, 3 calls
  transpose = _profile(lambda a: a.T.copy() * 2, jnp.ones((2048, 1024)), folder=tmp_path / "transpose")
  assert transpose["kinds"]["copy"] + transpose["kinds"]["elementwise"] > 0.9 * transpose["total_ms"] > 0
  report = profiling.report(gemm)
  assert report.splitlines()[2].split()[0] == "matmul" and "calls" in report


def test_gpu_traces_sum_the_stream_kernels_by_kind(tmp_path):
  # The layout of a GPU Perfetto trace: a device process whose stream lines hold the kernels, beside derived lines
  # (here "XLA Ops") and host events that must not be counted again.
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #13(Compute)"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "XLA Ops"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
  kernels = {"cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0": ("attention", 40.0),
             "nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNN": ("matmul", 30.0),
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64": ("matmul", 10.0),
             "gemm_fusion_dot_12_impl": ("matmul", 5.0),
             "transpose_copy_fusion_3": ("copy", 6.0),
             "input_reduce_fusion_2": ("reduction", 4.0),
             "loop_multiply_add_fusion_9": ("elementwise", 3.0),
             "redzone_checker": ("other", 2.0)}
  spans = [{"ph": "X", "pid": 1, "tid": 7, "name": name, "dur": ms * 1e3} for name, (_, ms) in kernels.items()]
  spans += [{"ph": "X", "pid": 1, "tid": 8, "name": "fusion.3", "dur": 9e6},
            {"ph": "X", "pid": 2, "tid": 1, "name": "ThunkExecutor", "dur": 9e6, "args": {"hlo_op": "fusion.3"}}]
  trace = tmp_path / "plugins" / "profile" / "run" / "perfetto_trace.json.gz"
  trace.parent.mkdir(parents=True)
  with gzip.open(trace, "wt") as f:
    json.dump({"traceEvents": meta + spans}, f)
  summary = profiling.summarize(str(tmp_path))
  assert summary["total_ms"] == pytest.approx(100.0)
  expected = {k: sum(ms for kind, ms in kernels.values() if kind == k) for k in profiling.KINDS}
  assert summary["kinds"] == pytest.approx(expected)
  assert [row[0] for row in summary["top"][:2]] == [next(iter(kernels)), "nvjet_tst_192x192_64x4_2x1_v_bz_coopA_TNN"]


def test_summarize_names_the_missing_trace(tmp_path):
  with pytest.raises(FileNotFoundError, match="no perfetto_trace.json.gz under"):
    profiling.summarize(str(tmp_path))
