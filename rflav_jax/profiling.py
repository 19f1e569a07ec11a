"""Where a program's time goes: a `jax.profiler` trace of compiled calls, summed by kind of operation.

`capture(run, calls, folder)` traces `calls` calls of run() into folder (TensorBoard's profile and a Perfetto
JSON trace); `summarize(folder)` reads the Perfetto trace back and sums the time of XLA's operations by kind:
  attention    fused attention kernels (cuDNN flash attention on GPUs),
  matmul       GEMMs (cuBLAS, Triton GEMM fusions; YNNPACK dots on CPUs),
  copy         copies, transposes, concatenations, slices, memory copies and sets,
  reduction    reduce fusions (LayerNorm and softmax statistics, loss means, gradient sums),
  elementwise  the other fusions,
  other        everything else.
On GPUs the sums are of the kernels on the device's streams (device time); on CPUs of the operations the
runtime ran on all its threads (thread time: on 2 cores up to twice the wall time). On CPUs a dot that XLA runs
through Eigen instead of YNNPACK (e.g. one contracting over its operands' first axes) is asynchronous: its event
spans only the dispatch, and its time shows up in the operations that ran beside it.
"""
import collections
import gzip
import json
import pathlib
from typing import Callable

import jax

KINDS = ("attention", "matmul", "copy", "reduction", "elementwise", "other")
# Lower-case fragments of an operation's or kernel's name, tried in KINDS order.
_FRAGMENTS = {
    "attention": ("fmha", "sdpa", "flash", "cudnn"),
    "matmul": ("gemm", "dot", "xmma", "nvjet", "cutlass", "cublas", "ynn", "matmul"),
    "copy": ("copy", "transpose", "concatenate", "slice", "memcpy", "memset", "pad"),
    "reduction": ("reduce",),
    "elementwise": ("fusion", "loop_"),
}
# CPU runtime operations whose events enclose the events of the operations they run.
_CONTAINERS = ("while", "conditional", "call")


def kind(name: str) -> str:
  """The kind (one of KINDS) of an operation or kernel name."""
  lowered = name.lower()
  return next((k for k, fragments in _FRAGMENTS.items() if any(f in lowered for f in fragments)), "other")


def capture(run: Callable[[], object], calls: int, folder: str) -> None:
  """Traces `calls` calls of run() (compiled beforehand, or compilation is traced too) into folder."""
  with jax.profiler.trace(folder, create_perfetto_trace=True):
    out = None
    for _ in range(calls):
      out = run()
    jax.block_until_ready(out)


def _operation_events(events: list[dict]) -> list[tuple[str, float]]:
  """(name, microseconds) of each operation: device stream kernels where the trace has a device, else the
  runtime's operation events (those naming an `hlo_op`) less the ones that enclose others."""
  processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  spans = [e for e in events if e.get("ph") == "X" and not e.get("name", "").startswith("end: ")]
  devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
  if devices:
    on_device = [e for e in spans if e["pid"] in devices]
    streams = [e for e in on_device if threads.get((e["pid"], e["tid"]), "").lower().startswith("stream")]
    return [(e["name"], e.get("dur", 0.0)) for e in streams or on_device]
  ops = [e for e in spans if "hlo_op" in e.get("args", {})]
  return [(e["args"]["hlo_op"], e.get("dur", 0.0)) for e in ops
          if not e["args"]["hlo_op"].split(".")[0].startswith(_CONTAINERS)]


def summarize(folder: str, top: int = 12) -> dict:
  """The newest Perfetto trace under folder, summed: {"total_ms", "kinds": {kind: ms}, "top": [[name, kind, ms,
  count], ...] (the `top` operations by time, numbered suffixes merged: fusion.12 and fusion.7 are "fusion")}."""
  traces = sorted(pathlib.Path(folder).glob("**/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not traces:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {folder}: trace with `capture` first")
  with gzip.open(traces[-1], "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  by_kind, by_name, counts = collections.Counter(), collections.Counter(), collections.Counter()
  for name, micros in _operation_events(events):
    base = name.split(".")[0]
    by_kind[kind(base)] += micros / 1e3
    by_name[base] += micros / 1e3
    counts[base] += 1
  return {"total_ms": sum(by_kind.values()), "kinds": {k: by_kind[k] for k in KINDS},
          "top": [[name, kind(name), ms, counts[name]] for name, ms in by_name.most_common(top)]}


def report(summary: dict) -> str:
  """summarize()'s result as a text table: each kind's time and share, then the top operations."""
  total = summary["total_ms"] or 1.0
  lines = [f"{'kind':<12} {'ms':>10} {'share':>6}"]
  lines += [f"{k:<12} {ms:>10.2f} {ms / total:>6.1%}" for k, ms in summary["kinds"].items()]
  lines += ["", f"{'operation':<48} {'kind':<12} {'ms':>10} {'calls':>6}"]
  lines += [f"{name[:48]:<48} {k:<12} {ms:>10.2f} {n:>6}" for name, k, ms, n in summary["top"]]
  return "\n".join(lines)
