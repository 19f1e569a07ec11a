"""Shared test helpers: where the golden fixtures and media live, and relative errors."""
import os
import pathlib

import numpy as np
import pytest

from rflav_jax import host_memory

# As the launchers do (rflav_jax.cli.run): keep freed memory, before the tests start JAX's CPU threads.
host_memory.keep_freed_memory()

SHARED = pathlib.Path(os.environ.get("RFLAV_SHARED", pathlib.Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures"
MEDIA = SHARED / "media"


def rel_l2(actual, expected) -> float:
  """Relative L2 error ||actual - expected|| / ||expected|| in float64."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def load_fixture(name: str) -> dict:
  """Loads ../shared/fixtures/<name> into a dict; skips with a clear message when absent."""
  path = FIXTURES / name
  if not path.exists():
    pytest.skip(f"golden fixture {path} not found: set RFLAV_SHARED to the shared/ folder")
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def media_file(name: str) -> pathlib.Path:
  """Path of a real mp4 in ../shared/media; skips with a clear message when absent."""
  path = MEDIA / name
  if not path.exists():
    pytest.skip(f"media file {path} not found: set RFLAV_SHARED to the shared/ folder")
  return path
