"""Running absl launchers so that a user's mistake prints one line with its fix, not a traceback.

  from rflav_jax import cli
  _CONFIG = cli.define_config("config", "configs/synthetic_tiny.py", "Sampling config file.")
  ...
  def main(argv):
    cli.check_output_dir("output_dir", _OUTPUT_DIR.value)  # before any weight is read or program compiled
  ...
  if __name__ == "__main__":
    cli.run(main)

Errors meant for the user (a bad flag value, a missing or damaged file) are ValueErrors (CheckpointFormatError,
ConversionError, MediaError, ...) or OSErrors (FileNotFoundError, PermissionError, ...); `run` prints their
message as `error: <message>` on stderr and exits with status 1. `--verbose_errors` shows the traceback instead.
Any other exception is a bug and keeps its traceback. A flag of the wrong type, a missing required flag and an
override of a config field that does not exist end the same way, before `main` runs.

Before `main` runs, `run` sets glibc's allocator to keep freed memory on CPU-only machines
(`rflav_jax.host_memory`): XLA's CPU programs then stop page-faulting their buffers in at every call; and with
STORAGE_EMULATOR_HOST set, it points every storage client at that GCS emulator (`rflav_jax.storage`).
"""
import importlib.util
import os
import sys
import tempfile
from typing import Callable, NoReturn

from absl import app
from absl import flags
from ml_collections import config_flags

from rflav_jax import host_memory
from rflav_jax import storage

_VERBOSE_ERRORS = flags.DEFINE_bool("verbose_errors", False,
                                    "Show the traceback of an error instead of the one-line message.")
USER_ERRORS = (ValueError, OSError)


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` on stderr and exits with status 1."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad or missing flag reported as one `error:` line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    problems = "; ".join(line.rstrip(".") for line in str(error).splitlines() if line.strip())
    fail(f"{problems}; `--helpfull` lists every flag with its type")


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, printing user errors (USER_ERRORS) as one `error: ...` line and exiting with status 1."""

  def guarded(argv):
    try:
      host_memory.keep_freed_memory()
      storage.use_emulator_from_env()
      return main(argv)
    except USER_ERRORS as error:
      if _VERBOSE_ERRORS.value:
        raise
      fail(str(error) or type(error).__name__)

  app.run(guarded, flags_parser=_parse_flags)


def define_config(name: str, default: str, help_string: str) -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file`, with an override of a field the config lacks as one `error:` line.

  ml_collections reads the `--<name>.<field>=value` overrides of sys.argv while it defines the flag, at import
  time, so this is where a misspelt field surfaces.
  """
  try:
    return config_flags.DEFINE_config_file(name, default, help_string)
  except (KeyError, AttributeError) as error:
    fail(_unknown_field_message(name, default, error))


def _unknown_field_message(name: str, default: str, error: Exception) -> str:
  """Which `--<name>.a.b` override names no field of the config, and the fields that exist there."""
  file_arg = next((arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith(f"--{name}=")), default)
  try:
    config = _load_config(file_arg)
  except Exception:  # the message below still names the flag family; the loading error is not the user's problem
    config = None
  for arg in sys.argv[1:]:
    if not arg.startswith(f"--{name}."):
      continue
    path = arg[len(f"--{name}."):].split("=", 1)[0].split(".")
    node = config
    for depth, field in enumerate(path):
      if node is None or not hasattr(node, "keys"):
        break
      if field not in node:
        where = ".".join([name, *path[:depth]])
        return (f"--{name}.{'.'.join(path)}: {where} has no field {field!r}; its fields are "
                f"{', '.join(sorted(node.keys()))}. Check the spelling, or drop the flag")
      node = node[field]
  return f"a --{name}.<field> override names a field the config does not have ({error}); check the spelling"


def _load_config(file_arg: str):
  """The ConfigDict of `path[:arg]`, as ml_collections loads a config file."""
  path, _, arg = file_arg.partition(":")
  spec = importlib.util.spec_from_file_location("_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def define_distributed_flags() -> Callable[[], None]:
  """Defines --multihost, --coordinator_address, --num_processes and --process_id; returns the function that starts
  jax.distributed from them (call it in main, before anything touches the devices)."""
  multihost = flags.DEFINE_bool("multihost", False, "Start jax.distributed from the cluster's environment.")
  coordinator = flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for jax.distributed.")
  num_processes = flags.DEFINE_integer("num_processes", None, "Number of processes, with --coordinator_address.")
  process_id = flags.DEFINE_integer("process_id", None, "This process's index, with --coordinator_address.")

  def start() -> None:
    from rflav_jax.train import parallel  # pylint: disable=g-import-not-at-top  (JAX only once flags are parsed)
    parallel.initialize_distributed(coordinator.value, num_processes.value, process_id.value, multihost.value)

  return start


def check_local(flag: str, path: str | None) -> None:
  """ValueError naming --flag when `path` is a URL, for a command that reads and writes local files only."""
  if path and storage.is_remote(path):
    raise ValueError(f"--{flag}={path}: this command reads and writes local files only; copy the data to a local "
                     f"folder first (e.g. gcloud storage cp -r {path} DIR) and pass that folder")


def check_output_dir(flag: str, path: str | None) -> None:
  """ValueError naming --flag unless the local folder `path` exists and is writable or can be made; nothing is
  left behind. Remote paths (scheme://...) and None are not checked here."""
  if path and "://" not in path:
    _check_creatable(flag, path, os.path.abspath(os.path.expanduser(path)))


def check_output_file(flag: str, path: str | None) -> None:
  """`check_output_dir` for the folder that will hold the file `path`."""
  if path and "://" not in path:
    _check_creatable(flag, path, os.path.dirname(os.path.abspath(os.path.expanduser(path))))


def _check_creatable(flag: str, path: str, folder: str) -> None:
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"--{flag}={path}: {existing} is a file, not a folder; pass a folder path")
  try:
    tempfile.TemporaryDirectory(dir=existing).cleanup()  # what creating the output folder will need
  except OSError as error:
    raise ValueError(f"--{flag}={path}: cannot create anything in {existing} ({error.strerror}); pass a folder you "
                     "can write to") from None
