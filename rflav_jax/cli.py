"""Running absl launchers so that a user's mistake prints one line with its fix, not a traceback.

  from rflav_jax import cli
  ...
  if __name__ == "__main__":
    cli.run(main)

Errors meant for the user (a bad flag value, a missing or damaged file) are ValueErrors (CheckpointFormatError,
ConversionError, MediaError, ...) or OSErrors (FileNotFoundError, PermissionError, ...); `run` prints their
message as `error: <message>` on stderr and exits with status 1. `--verbose_errors` shows the traceback instead.
Any other exception is a bug and keeps its traceback.

Before `main` runs, `run` sets glibc's allocator to keep freed memory on CPU-only machines
(`rflav_jax.host_memory`): XLA's CPU programs then stop page-faulting their buffers in at every call.
"""
import sys
from typing import Callable

from absl import app
from absl import flags

from rflav_jax import host_memory

_VERBOSE_ERRORS = flags.DEFINE_bool("verbose_errors", False,
                                    "Show the traceback of an error instead of the one-line message.")
USER_ERRORS = (ValueError, OSError)


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, printing user errors (USER_ERRORS) as one `error: ...` line and exiting with status 1."""

  def guarded(argv):
    try:
      host_memory.keep_freed_memory()
      return main(argv)
    except USER_ERRORS as error:
      if _VERBOSE_ERRORS.value:
        raise
      print(f"error: {error or type(error).__name__}", file=sys.stderr)
      sys.exit(1)

  app.run(guarded)
