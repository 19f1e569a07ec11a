"""tools/gpu_checks.sh, the script a lent GPU runs, at toy sizes (DRY=1): its training part ends in a packed run
whose export loads, and it refuses unknown parts."""
import os
import pathlib
import subprocess
import sys

import pytest

from rflav_jax.convert import load_flav

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_script(*args, **env):
  return subprocess.run(["bash", "tools/gpu_checks.sh", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env={**os.environ, "PYTHON": sys.executable, "DRY": "1", **env})


@pytest.mark.slow
def test_tiny_part_packs_a_run_whose_export_loads(tmp_path):
  result = run_script("tiny", str(tmp_path / "out"), TINY_CANDIDATES="4:2")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert '  p4d2: {"step": 10' in result.stdout  # the summary: the run's last metrics line
  parts = sorted((tmp_path / "out").glob("p4d2.tgz.*"))
  assert parts, sorted(p.name for p in (tmp_path / "out").iterdir())
  unpacked = tmp_path / "unpacked"
  unpacked.mkdir()
  archive = b"".join(part.read_bytes() for part in parts)
  subprocess.run(["tar", "xz", "-C", str(unpacked)], input=archive, check=True)
  assert {"export", "metrics.jsonl", "loss_curve.png", "train.log"} <= {p.name for p in unpacked.iterdir()}
  model, _ = load_flav(unpacked / "export")
  assert (model.patch_size, model.depth) == (4, 2)


def test_unknown_part_is_refused(tmp_path):
  result = run_script("train", str(tmp_path))
  assert result.returncode == 2 and "unknown part train: expected wheels, tiny or bench" in result.stdout
  result = run_script("bench")
  assert result.returncode == 2 and "usage: bash tools/gpu_checks.sh bench OUT_DIR" in result.stdout


@pytest.mark.slow
def test_bench_part_measures_training_in_micro_batches_and_profiles(tmp_path):
  result = run_script("bench", str(tmp_path / "out"), BENCH_E2E="0")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  summary = result.stdout.split("summary (bench")[1]
  for k in (8, 4):
    assert f"train_accumulate_{k}: exit 0" in summary
    assert f"train_accumulate_{k}.json: train " in summary and "samples/s, peak" in summary
  assert "train_accumulate_4_region: exit 0" in summary
  assert "forward_profile: exit 0" in summary and summary.count("profile: attention") == 2  # training, forward
  assert {p.name for p in (tmp_path / "out").glob("profile_*")} == {"profile_train.json.gz", "profile_forward.json.gz"}
  assert "sample_" not in summary  # BENCH_E2E=0: no end-to-end runs
