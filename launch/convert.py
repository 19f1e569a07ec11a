r"""Converts released PyTorch weights into an Orbax checkpoint plus an ml_collections config.

  python -m launch.convert --kind=flav --checkpoint_dir=/path/to/release --output_dir=/path/to/converted

A release folder holds the weights and a config.json:
  flav:    model.safetensors or a PyTorch .pt/.pth file + the official FLAV constructor arguments;
  sdvae:   a diffusers AutoencoderKL folder (diffusion_pytorch_model.safetensors or .bin + config.json);
  vocoder: the HiFi-GAN vocoder.pt (with its "generator" entry) + its config.json.
PyTorch files are read without PyTorch. The output folder gets `params/` (Orbax) and `config.py`, which the
other launchers take (e.g. `--config.checkpoint=<folder>`).
"""
from absl import flags

from rflav_jax import cli
from rflav_jax.convert import release

_KIND = flags.DEFINE_enum("kind", "flav", release.KINDS,
                          "What the release folder holds: the FLAV transformer, the SD-VAE or the HiFi-GAN vocoder.")
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "Release folder: weight file + config.json.", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder to write params/ (Orbax) and config.py into.",
                                  required=True)
_WEIGHTS = flags.DEFINE_string("weights", None, "Weight file name inside --checkpoint_dir, when it holds several.")
_USE_EMA = flags.DEFINE_bool("use_ema", True,
                             "flav only: for training checkpoints holding 'ema' and 'model', take the EMA weights.")


def main(argv):
  del argv
  cli.check_output_dir("output_dir", _OUTPUT_DIR.value)
  out = release.convert_release(_KIND.value, _CHECKPOINT_DIR.value, _OUTPUT_DIR.value, weights=_WEIGHTS.value,
                                use_ema=_USE_EMA.value)
  print(f"wrote {out}/params and {out}/config.py")


if __name__ == "__main__":
  cli.run(main)
