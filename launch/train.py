r"""Trains FLAV with the rolling flow loss; the same command resumes.

  python -m launch.train --config=configs/train_synthetic_tiny.py --workdir=workdir/tiny
  python -m launch.train --config=configs/train_flav_b1.py:aist --workdir=gs://bucket/aist \
      --config.data.dataset_dir=/data/tfds/av_folder/aist_r256_fps10_t50_labelled/1.1.0

Every config field can be overridden (--config.optim.lr=3e-4). Several processes (a TPU pod, several GPU
hosts) run the same command on every host, with --multihost (cluster environments) or with
--coordinator_address, --num_processes and --process_id.
"""
from absl import flags
from absl import logging

from rflav_jax import cli
from rflav_jax import compilation_cache

_CONFIG = cli.define_config("config", "configs/train_synthetic_tiny.py", "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics, samples and export/.",
                               required=True)
_START_DISTRIBUTED = cli.define_distributed_flags()


def main(argv):
  del argv
  cli.check_output_dir("workdir", _WORKDIR.value)
  logging.set_verbosity(logging.INFO)
  from rflav_jax.train import trainer  # pylint: disable=g-import-not-at-top  (after flag parsing)
  _START_DISTRIBUTED()
  compilation_cache.enable(_CONFIG.value.get("compilation_cache_dir"))
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
