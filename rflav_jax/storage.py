"""Where files live: local folders and cloud URLs (gs://bucket/run) as one path type, etils.epath.Path.

  as_path("runs/tiny")      -> epath.Path("/abs/runs/tiny")  ("~" expanded, made absolute)
  as_path("gs://bucket/x")  -> epath.Path("gs://bucket/x")   (kept as it is)

Files under a URL are reached through epath (TensorFlow's tf.io.gfile, or fsspec/gcsfs where TensorFlow is not
installed), TensorStore (the arrays of Orbax checkpoints) and Google Cloud's C++ client (ArrayRecord files of TFDS
datasets and cached latents); no URL goes through os or pathlib. ArrayRecord reads URLs but writes only local
files: its writers write into `staged_file` / `staged_folder`, which upload what was written when it is complete.

A GCS emulator: with STORAGE_EMULATOR_HOST=host:port set (the variable Google's own clients read),
`use_emulator_from_env` points every one of those clients at it; the launchers call it before any client starts.
TensorFlow's GCS file system cannot be pointed anywhere but Google's servers (its endpoints are compiled in), so
then epath goes through fsspec/gcsfs (requirements-test.txt), and `tensorflow_reaches` says which paths
TensorFlow itself (TensorBoard's writer) cannot reach.
"""
import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

from etils import epath

EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL (scheme://...), such as gs://bucket/run, rather than a local path."""
  return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path: a URL as it is, a local path with "~" expanded and made absolute."""
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(path)))


def write_atomically(path: epath.Path, text: str) -> None:
  """Writes `text` to `path` so that a reader finds the old file or the new one, never a part of it
  (`staged_file`)."""
  with staged_file(path) as local:
    pathlib.Path(local).write_text(text)


@contextlib.contextmanager
def staged_file(path: epath.Path) -> Iterator[str]:
  """A local file name for a writer that takes only local files; `path` appears, whole, once the block ends
  without an error: locally a neighbouring .part file renamed over `path`, for a URL a temporary file uploaded
  to `path` and removed."""
  if not is_remote(path):
    part = path.with_name(path.name + ".part")
    yield os.fspath(part)
    part.replace(path)
    return
  with tempfile.TemporaryDirectory() as staging:
    local = pathlib.Path(staging) / path.name
    yield os.fspath(local)
    upload_file(local, path)


@contextlib.contextmanager
def staged_folder(path: epath.Path) -> Iterator[str]:
  """A local folder to build the files of folder `path` in: `path` itself when local; for a URL a temporary folder
  (under TMPDIR, so it needs the disk space of what is built) whose files are uploaded below `path`, in the order
  they were written, once the block ends without an error; it is then removed."""
  if not is_remote(path):
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory() as staging:
    yield staging
    files = [local for local in pathlib.Path(staging).rglob("*") if local.is_file()]
    for local in sorted(files, key=lambda local: (local.stat().st_mtime_ns, local)):  # in the order written
      upload_file(local, path / local.relative_to(staging).as_posix())


def upload_file(local: str | os.PathLike, remote: epath.Path) -> None:
  """Copies the local file `local` to `remote` (any epath path), in pieces of 16 MiB."""
  remote.parent.mkdir(parents=True, exist_ok=True)
  with open(local, "rb") as source, remote.open("wb") as target:
    shutil.copyfileobj(source, target, 1 << 24)


def emulator_settings(host: str) -> dict[str, str]:
  """The environment variables that point each storage client at the GCS emulator at `host` (host:port or URL)."""
  url = host if host.startswith(("http://", "https://")) else f"http://{host}"
  return {
      EMULATOR_VARIABLE: url,  # with its scheme, which Google's Python client (Orbax asks it a bucket's layout) needs
      "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore: the arrays of Orbax checkpoints
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore's bearer token; the emulator takes any
      "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # google-cloud-cpp, through which ArrayRecord opens gs:// files
      "EPATH_USE_TF": "false",  # epath through fsspec/gcsfs, which reads STORAGE_EMULATOR_HOST itself
      "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: no credentials
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs: no bucket-layout query (gRPC), which emulators lack
  }


def use_emulator_from_env() -> str | None:
  """With STORAGE_EMULATOR_HOST set, sets the `emulator_settings` of it and returns the emulator's URL; None when
  unset. Call before the first file access: epath and gcsfs read their settings once."""
  host = os.environ.get(EMULATOR_VARIABLE)
  if not host:
    return None
  os.environ.update(emulator_settings(host))
  return os.environ[EMULATOR_VARIABLE]


def tensorflow_reaches(path: str | os.PathLike) -> bool:
  """Whether TensorFlow's own file system reaches `path`: every path but gs:// ones while an emulator is in use."""
  return not (os.fspath(path).startswith("gs://") and os.environ.get(EMULATOR_VARIABLE))
