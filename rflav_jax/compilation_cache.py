"""JAX's persistent compilation cache: a later run of the same programs loads them instead of compiling.

Call `enable` before the first compilation of the process (JAX opens the cache on first use).
"""
import os

import jax

from rflav_jax import storage

DEFAULT_DIR = "~/.cache/rflav_jax/xla"


def enable(path: str | None = DEFAULT_DIR) -> str | None:
  """Stores every compiled program in the folder `path`; None or "" leaves it off.

  `path` is a local folder ("~" expanded) or a URL such as gs://bucket/xla, which JAX reaches through etils.epath;
  it is created. Every program is cached however fast it compiled. Returns the absolute folder or the URL, or None
  when off.
  """
  if not path:
    return None
  folder = storage.as_path(path)
  folder.mkdir(parents=True, exist_ok=True)
  path = os.fspath(folder)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
