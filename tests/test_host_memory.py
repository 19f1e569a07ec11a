"""rflav_jax.host_memory: when glibc's allocator is set to keep freed memory, and what that does to XLA on CPUs."""
import pathlib
import platform
import subprocess
import sys

import pytest

from rflav_jax import host_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting applies to glibc only")

# Runs a jitted program with 32 MB of temporaries 9 times; prints the fewest minor page faults any call took.
_FAULTS_PER_CALL = """
import resource
from rflav_jax import host_memory
print(host_memory.keep_freed_memory())
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.sin(x) * 2.0).T @ jnp.cos(x))
x = jnp.ones((2048, 2048))
f(x).block_until_ready()
faults = []
for _ in range(9):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults))
"""


def _python(args: list[str], setting: str, check: bool = True) -> subprocess.CompletedProcess:
  """`python ARGS` in the repository root, CPU only, with RFLAV_KEEP_FREED_MEMORY=setting and nothing else inherited."""
  env = {host_memory.ENV: setting, "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
  return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, check=check,
                        cwd=pathlib.Path(__file__).resolve().parents[1])


def _faults_per_call(setting: str) -> tuple[bool, float]:
  applied, faults = _python(["-c", _FAULTS_PER_CALL], setting).stdout.split()
  return applied == "True", float(faults)


@pytest.mark.slow
@glibc_only
def test_kept_memory_stops_xla_from_faulting_its_buffers_in_at_every_call():
  applied_off, faults_off = _faults_per_call("0")
  applied_on, faults_on = _faults_per_call("1")
  assert (applied_off, applied_on) == (False, True)
  # 32 MB of temporaries and a 16 MB result are 12288 pages of 4 KB: with glibc's default every call maps at least
  # the temporaries anew (8193 to 13531 faults per call measured); with memory kept, once the heap has grown, most
  # calls fault no page at all (an occasional call still grows the heap by 4096 or 8192 pages).
  assert faults_off > 8000, faults_off
  assert faults_on < faults_off / 10, (faults_on, faults_off)


def test_off_switch_and_bad_values(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, "0")
  assert host_memory.keep_freed_memory() is False
  monkeypatch.setenv(host_memory.ENV, "yes")
  with pytest.raises(ValueError, match="RFLAV_KEEP_FREED_MEMORY='yes': expected 0 .off., 1 .on. or unset"):
    host_memory.keep_freed_memory()


@pytest.mark.parametrize("platforms, accelerator",
                         [("cpu", False), ("cuda", True), ("tpu,cpu", True), ("cpu,cuda", False)])
def test_accelerator_is_read_from_jax_platforms(monkeypatch, platforms, accelerator):
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory.accelerator_may_be_used() is accelerator


@glibc_only
def test_unset_applies_only_to_cpu_runs(monkeypatch):
  monkeypatch.delenv(host_memory.ENV, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert host_memory.keep_freed_memory() is False


def test_launchers_apply_it_before_main_and_report_a_bad_value_in_one_line():
  out = _python(["-m", "launch.benchmark", "--config=configs/bench_cpu.py:short", "--only=matmul"], "yes", check=False)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      "error: RFLAV_KEEP_FREED_MEMORY='yes': expected 0 (off), 1 (on) or unset (on for CPU-only runs)")
  assert "matmul" not in out.stdout
