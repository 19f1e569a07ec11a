r"""Exports a training checkpoint as a model folder (model.json + params/), for launch.sample and launch.evaluate.

  python -m launch.export --workdir=workdir/tiny                  # newest step -> workdir/tiny/export_step_<step>
  python -m launch.export --workdir=workdir/tiny --step=8000 --output_dir=/tmp/step_8000
  python -m launch.sample --config.checkpoint=workdir/tiny/export_step_8000 --output_dir=outputs/step_8000

Training writes workdir/export itself when it ends or is stopped; this takes any kept step, also while the run
goes on. The folder holds the EMA weights (--weights=params: the raw ones), stored as the run's
config.train.export_dtype unless --storage_dtype says otherwise.
"""
from absl import flags

from rflav_jax import cli
from rflav_jax.train import checkpointing
from rflav_jax.train.progress import quiet_library_logs

_WORKDIR = flags.DEFINE_string("workdir", None, "The --workdir of a launch.train run.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Which kept checkpoint; default: the newest.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder to write; default: <workdir>/export_step_<step>.")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", checkpointing.WEIGHTS, "The EMA weights (as training exports) or the "
                             "raw ones.")
_STORAGE_DTYPE = flags.DEFINE_enum("storage_dtype", None, ["float32", "float16", "bfloat16"],
                                   "Storage of the weights (they load as float32); default: the run's export_dtype.")


def main(argv):
  del argv
  cli.check_output_dir("output_dir", _OUTPUT_DIR.value)
  quiet_library_logs()
  folder, step = checkpointing.export_step(_WORKDIR.value, _STEP.value, _OUTPUT_DIR.value, _WEIGHTS.value,
                                           _STORAGE_DTYPE.value)
  print(f"wrote step {step} of {_WORKDIR.value} to {folder}")


if __name__ == "__main__":
  cli.run(main)
