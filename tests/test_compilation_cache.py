"""JAX's persistent compilation cache: enable() stores a compiled program, and a second process loads it."""
import subprocess
import sys

from rflav_jax import compilation_cache

PROGRAM = """
import sys, jax, jax.numpy as jnp
from rflav_jax import compilation_cache
print(compilation_cache.enable(sys.argv[1]))
jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
"""


def test_a_program_compiled_once_is_stored_and_found_again(tmp_path):
  folder = tmp_path / "cache" / "xla"
  run = lambda: subprocess.run([sys.executable, "-c", PROGRAM, str(folder)], capture_output=True, text=True, timeout=120)
  first = run()
  assert first.returncode == 0, first.stderr[-2000:]
  assert first.stdout.strip() == str(folder)  # created, absolute
  stored = sorted(p.name for p in folder.iterdir())
  assert stored, "nothing was cached"
  assert run().returncode == 0 and sorted(p.name for p in folder.iterdir()) == stored  # found, not stored again


def test_an_empty_folder_leaves_the_cache_off():
  assert compilation_cache.enable("") is None and compilation_cache.enable(None) is None
