r"""Converts released PyTorch weights into model folders: model.json + params/ (Orbax).

  python -m launch.convert --release_dir=releases/aist --output_dir=converted/aist    # converted/aist/{flav,vocoder}
  python -m launch.convert --kind=flav --checkpoint_dir=/path/to/release --output_dir=/path/to/converted
  python -m launch.convert --rewrite_folder=/path/to/older_folder    # config.py + params/ -> model.json + params/

--release_dir takes a repository as downloaded (`hf download REPO --local-dir DIR`) and converts each part it holds,
in its top folder or a subfolder, to <output_dir>/<kind>: R-FLAV-B-1-AIST and R-FLAV-B-1-LS give flav/ (the top
folder) and vocoder/ (their vocoder/ subfolder), sd-vae-ft-ema gives sdvae/ (its top folder). Each part is
recognised by its config.json. --kind with --checkpoint_dir converts one folder into --output_dir itself.

A release folder holds the weights and a config.json:
  flav:    model.safetensors or a PyTorch .pt/.pth file + the official FLAV constructor arguments;
  sdvae:   a diffusers AutoencoderKL folder (diffusion_pytorch_model.safetensors or .bin + config.json);
  vocoder: the HiFi-GAN vocoder.pt (with its "generator" entry) + its config.json.
PyTorch files are read without PyTorch. The output folder gets `params/` (Orbax) and `model.json` (kind, constructor
arguments, storage dtype, and the source file with its sha256), which the other launchers take (e.g.
`--config.checkpoint=<folder>`).

--rewrite_folder rewrites a folder of the older format, whose config.py the loaders read as data and never run, as
model.json beside the same params/ (left as they are), and removes its config.py.
"""
from absl import flags

from rflav_jax import cli, model_folder
from rflav_jax.convert import release

_KIND = flags.DEFINE_enum("kind", "flav", release.KINDS,
                          "What the release folder holds: the FLAV transformer, the SD-VAE or the HiFi-GAN vocoder.")
_RELEASE_DIR = flags.DEFINE_string("release_dir", None, "A downloaded release repository: each part found in it "
                                   "(by its config.json) is converted to <output_dir>/<kind>.")
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "One release folder, of --kind: weight file + "
                                      "config.json.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder to write params/ (Orbax) and model.json into (with "
                                  "--release_dir: one subfolder per part).")
_WEIGHTS = flags.DEFINE_string("weights", None, "Weight file name inside --checkpoint_dir (or the top folder of "
                               "--release_dir), when it holds several.")
_USE_EMA = flags.DEFINE_bool("use_ema", True,
                             "flav only: for training checkpoints holding 'ema' and 'model', take the EMA weights.")
_REWRITE_FOLDER = flags.DEFINE_string("rewrite_folder", None, "A model folder of the older format (config.py + "
                                      "params/) to rewrite as model.json, instead of converting a release.")


def main(argv):
  del argv
  if _REWRITE_FOLDER.value:
    if _RELEASE_DIR.value or _CHECKPOINT_DIR.value or _OUTPUT_DIR.value:
      raise ValueError("--rewrite_folder rewrites a folder in place: pass it without --release_dir / --checkpoint_dir "
                       "/ --output_dir")
    print(f"wrote {model_folder.rewrite_legacy(_REWRITE_FOLDER.value)}")
    return
  if bool(_RELEASE_DIR.value) == bool(_CHECKPOINT_DIR.value) or not _OUTPUT_DIR.value:
    raise ValueError("pass --output_dir with either --release_dir (a downloaded release) or --checkpoint_dir (one "
                     "release folder, with --kind), or --rewrite_folder alone")
  cli.check_output_dir("output_dir", _OUTPUT_DIR.value)
  if _RELEASE_DIR.value:
    for kind, out in release.convert_download(_RELEASE_DIR.value, _OUTPUT_DIR.value, weights=_WEIGHTS.value,
                                              use_ema=_USE_EMA.value).items():
      print(f"wrote {out}/params and {out}/model.json ({model_folder.KINDS[kind]})")
    return
  out = release.convert_release(_KIND.value, _CHECKPOINT_DIR.value, _OUTPUT_DIR.value, weights=_WEIGHTS.value,
                                use_ema=_USE_EMA.value)
  print(f"wrote {out}/params and {out}/model.json")


if __name__ == "__main__":
  cli.run(main)
