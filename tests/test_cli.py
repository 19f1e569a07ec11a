"""Launcher errors: a misspelt config field, a flag of the wrong type, an unwritable output folder -> one line."""
import os
import subprocess
import sys

import pytest

from rflav_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each launcher with the flags that make it valid apart from the case under test, and its output flag.
LAUNCHERS = {
    "sample": ([], "output_dir"),
    "train": ([], "workdir"),
    "evaluate": ([], "output"),
    "benchmark": ([], "output"),
    "make_standins": ([], "output_dir"),
    "convert": (["--checkpoint_dir=/nonexistent"], "output_dir"),
    "export": (["--workdir=/nonexistent"], "output_dir"),
    "prepare_data": (["--source_dir=/nonexistent"], "data_dir"),
}
WITH_CONFIG = ("sample", "train", "evaluate", "benchmark", "make_standins")


def _run(launcher: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", f"launch.{launcher}", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _one_error_line(result: subprocess.CompletedProcess) -> str:
  assert result.returncode == 1, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  return lines[0]


def test_an_unwritable_folder_is_refused_and_nothing_is_left_behind(tmp_path):
  cli.check_output_dir("output_dir", str(tmp_path / "new" / "deeper"))  # creatable: fine, and not created
  assert not (tmp_path / "new").exists()
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match=r"--output_dir=.*file.* is a file, not a folder"):
    cli.check_output_dir("output_dir", str(tmp_path / "file" / "out"))
  with pytest.raises(ValueError, match=r"--output_dir=/proc/x: cannot create anything in /proc"):
    cli.check_output_dir("output_dir", "/proc/x")
  with pytest.raises(ValueError, match=r"--output=/proc/x/report.json: cannot create anything in /proc"):
    cli.check_output_file("output", "/proc/x/report.json")
  cli.check_output_dir("workdir", "gs://bucket/run")  # remote folders are checked by their own clients
  assert sorted(os.listdir(tmp_path)) == ["file"]


def test_an_unknown_config_field_names_the_flag_and_the_fields_there():
  line = _one_error_line(_run("sample", "--config.sample.num_frame=3"))
  assert "--config.sample.num_frame: config.sample has no field 'num_frame'" in line
  assert "num_frames" in line  # the fields that exist


@pytest.mark.slow
@pytest.mark.parametrize("launcher", WITH_CONFIG)
def test_every_launcher_with_a_config_refuses_an_unknown_field(launcher):
  line = _one_error_line(_run(launcher, "--config.nonsense=1", *LAUNCHERS[launcher][0]))
  assert "--config.nonsense: config has no field 'nonsense'" in line


def test_a_config_value_of_the_wrong_type_names_the_flag():
  line = _one_error_line(_run("sample", "--config.sample.num_frames=abc"))
  assert "--config.sample.num_frames=abc" in line and "invalid literal for int()" in line


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_every_launcher_refuses_an_unwritable_output_folder_before_any_work(launcher):
  extra, flag = LAUNCHERS[launcher]
  target = "/proc/x/report.json" if flag == "output" else "/proc/x"
  line = _one_error_line(_run(launcher, f"--{flag}={target}", *extra))
  assert f"--{flag}={target}: cannot create anything in /proc" in line
