r"""Generates audio-video streams with a FLAV model and writes them as mp4 (plus PNG previews).

  python -m launch.sample --config=configs/synthetic_tiny.py --output_dir=/tmp/rflav_demo
  python -m launch.sample --config=configs/flav_b1_aist.py --config.checkpoint=converted/aist/flav \
      --config.codec.checkpoint=converted/sdvae --config.vocoder.checkpoint=converted/aist/vocoder \
      --config.sample.num_frames=600 --output_dir=out
  python -m launch.sample --config.sample.condition=audio --config.sample.condition_file=clip.mp4 \
      --config.sample.condition_mode=independent --config.sample.condition_guidance=1 --output_dir=out

The evaluation set (rflav_jax/eval/eval_set): N clips of 16 frames with their audio as mp4 + wav, in batches over all
devices, labels drawn as the official sample-metrics.py draws them; a rerun after an interruption resumes:
  python -m launch.sample --config.sample.eval_clips=2048 --output_dir=samples
  python -m launch.sample --config.sample.eval_clips=64 --config.sample.eval_frames=240 --output_dir=long_samples
  python -m launch.sample --config.sample.eval_clips=2048 --config.sample.eval_source=synthetic --output_dir=real

Every config field can be overridden on the command line (--config.sample.guidance_scale=2).
"""
from absl import flags
from absl import logging

from rflav_jax import cli
from rflav_jax import compilation_cache
from rflav_jax import sample
from rflav_jax.eval import eval_set

_CONFIG = cli.define_config("config", "configs/synthetic_tiny.py", "Sampling config file.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "outputs/sample", "Folder for the mp4 files and previews.")


def main(argv):
  del argv
  cli.check_output_dir("output_dir", _OUTPUT_DIR.value)
  logging.set_verbosity(logging.INFO)
  compilation_cache.enable(_CONFIG.value.get("compilation_cache_dir"))
  write = eval_set.write_eval_set if _CONFIG.value.sample.eval_clips else sample.sample
  for path in write(_CONFIG.value, _OUTPUT_DIR.value):
    print(f"wrote {path}")


if __name__ == "__main__":
  cli.run(main)
