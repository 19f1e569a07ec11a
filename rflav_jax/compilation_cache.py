"""JAX's persistent compilation cache: a later run of the same programs loads them instead of compiling.

Call `enable` before the first compilation of the process (JAX opens the cache on first use).
"""
import os

import jax

DEFAULT_DIR = "~/.cache/rflav_jax/xla"


def enable(path: str | None = DEFAULT_DIR) -> str | None:
  """Stores every compiled program in the folder `path` ("~" expanded, created); None or "" leaves it off.

  Every program is cached however fast it compiled. Returns the absolute folder, or None when off.
  """
  if not path:
    return None
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
