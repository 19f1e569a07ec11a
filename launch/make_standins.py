r"""Writes random-weight stand-ins of the three releases as model folders, to time the sampling command.

  python -m launch.make_standins --output_dir=/tmp/standins      # FLAV-B/1 (AIST++ config), sd-vae-ft-ema, HiFi-GAN
  python -m launch.sample --config=configs/flav_b1_aist.py --config.checkpoint=/tmp/standins/flav \
      --config.codec.checkpoint=/tmp/standins/sdvae --config.vocoder.checkpoint=/tmp/standins/vocoder \
      --config.sample.num_frames=40 --output_dir=/tmp/standin_stream

They cost what the released weights cost (same architectures: rflav_jax/standins.py) and make noise; use
them where the releases cannot be downloaded (docs/PERFORMANCE.md, end-to-end sampling).
"""
import time

from absl import flags, logging

from rflav_jax import cli
from rflav_jax import standins
from rflav_jax import storage
from rflav_jax.train.progress import quiet_library_logs

_CONFIG = cli.define_config("config", "configs/flav_b1_aist.py", "Sampling config whose model the FLAV "
                                          "stand-in takes.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder to write flav/, sdvae/ and vocoder/ into.", required=True)


def main(argv):
  del argv
  cli.check_output_dir("output_dir", _OUTPUT_DIR.value)
  quiet_library_logs()
  out = storage.as_path(_OUTPUT_DIR.value)
  writers = {"flav": lambda folder: standins.write_flav(folder, _CONFIG.value.model), "sdvae": standins.write_sdvae,
             "vocoder": standins.write_vocoder}
  for name, write in writers.items():  # B/1's 324M weights take about a minute on a 2-core CPU
    start = time.perf_counter()
    folder = write(out / name)
    logging.info("wrote %s in %.1f s", folder, time.perf_counter() - start)


if __name__ == "__main__":
  cli.run(main)
