"""glibc's allocator set up for XLA on CPUs: freed memory stays with the process instead of going back to the OS.

XLA's CPU runtime allocates the buffers of a program anew at every call and frees them after it. glibc gives
large blocks back to the kernel on free (per-thread heaps are trimmed, big blocks are unmapped), so each call
page-faults its whole working set in again, and the kernel zeroes every page first. On the CPU benchmark shape
(configs/bench_cpu_official.py, 2 cores) that cost 0.31 s of kernel time per 0.9 s training step. With one
arena that neither trims below 2 GB nor maps blocks of its own, the pages stay mapped and are reused: kernel
time fell to under 0.02 s per step and the step to about 0.8 s.

The launchers call `keep_freed_memory()` first (through `rflav_jax.cli.run`), before JAX starts the threads of its
CPU client, since a thread keeps the arena it got first. It does nothing when JAX may run on an accelerator
(a GPU or TPU plugin is installed, or JAX_PLATFORMS names another platform first): there the arrays live on the
device, and one arena could make the host's input threads wait on each other (not measured).
Set RFLAV_KEEP_FREED_MEMORY=0 to turn it off; RFLAV_KEEP_FREED_MEMORY=1 forces it on.
"""
import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# Free memory at the top of the heap is given back only above this (the largest value mallopt takes).
_TRIM_THRESHOLD_BYTES = 2**31 - 1
ENV = "RFLAV_KEEP_FREED_MEMORY"


def accelerator_may_be_used() -> bool:
  """Whether JAX could pick a GPU or TPU in this process: JAX_PLATFORMS names one first, or a plugin is installed."""
  requested = os.environ.get("JAX_PLATFORMS", "").strip()
  if requested:
    return requested.split(",")[0].strip() != "cpu"
  if importlib.util.find_spec("libtpu") is not None or importlib.metadata.entry_points(group="jax_plugins"):
    return True
  plugins = importlib.util.find_spec("jax_plugins")
  return plugins is not None and any(pkgutil.iter_modules(plugins.submodule_search_locations or []))


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory (one arena, no trimming under 2 GB, no mmap) for CPU runs.

  Returns whether the setting was applied: only with glibc, only when JAX will run on the CPU (see the module
  docstring) or RFLAV_KEEP_FREED_MEMORY=1, never with RFLAV_KEEP_FREED_MEMORY=0. Call it before JAX's first
  computation; later calls change nothing for threads that already allocated.
  """
  choice = os.environ.get(ENV, "").strip()
  if choice not in ("", "0", "1"):
    raise ValueError(f"{ENV}={choice!r}: expected 0 (off), 1 (on) or unset (on for CPU-only runs)")
  if choice == "0" or platform.libc_ver()[0] != "glibc":
    return False
  if choice == "" and accelerator_may_be_used():
    return False
  libc = ctypes.CDLL("libc.so.6")
  return all(libc.mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)))
