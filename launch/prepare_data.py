r"""Builds a TFDS dataset from a folder of mp4 (webm, avi, mkv, mov) files, as the official release lays out, and
encodes its clips once with the SD-VAE for training without a VAE in the step.

  python -m launch.prepare_data --source_dir=/data/aist --data_dir=/data/tfds --labelled \
      --resolution=256 --clip_frames=50
  python -m launch.prepare_data --dataset_dir=/data/tfds/av_folder/aist_r256_fps10_t50_labelled/1.1.0 \
      --sdvae=converted/sdvae --latents_dir=/data/latents/aist_r256 [--multihost]

source_dir holds train/ and test/ (one sub-folder per class with --labelled). Each file is cut into
non-overlapping clips of --clip_frames frames (50: the official clip length; training draws the model's 10-frame
windows from them at any offset); unreadable files, files without audio and files shorter than one clip are
skipped and listed in build_report.json next to the dataset. Prints the report.

With --sdvae and --latents_dir, every clip of the dataset's --split (the one just built, or --dataset_dir) is
encoded into cached latents (rflav_jax.data.latents), split over all devices; on several hosts run the same command
on each (with --multihost or the --coordinator_address flags), each encodes its share. Running it again finishes
what a stopped run left.
"""
from absl import flags

from rflav_jax import cli
from rflav_jax.data import avfolder, latents
from rflav_jax.media.reader import CHANNEL_MODES

_SOURCE_DIR = flags.DEFINE_string("source_dir", None, "Folder holding train/ and test/ with the media files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data folder to write the dataset into.")
_RESOLUTION = flags.DEFINE_integer("resolution", 256, "Side of the square frames in pixels (letterboxed).")
_FPS = flags.DEFINE_float("fps", 10.0, "Video frame rate to resample to; 16000 / fps must be a multiple of 160.")
_CLIP_FRAMES = flags.DEFINE_integer("clip_frames", 50, "Frames per example (non-overlapping clips); training "
                                    "windows are cut from them at any offset.")
_LABELLED = flags.DEFINE_bool("labelled", False, "Classes from the sub-folders of train/ and test/ (sorted names).")
_CHANNELS = flags.DEFINE_enum("channels", "first", CHANNEL_MODES,
                              "Stereo to mono: the first channel (as the official code) or the mean.")
_NAME = flags.DEFINE_string("name", None, "Dataset name in the config name; defaults to the source folder's name.")
_DATASET_DIR = flags.DEFINE_string("dataset_dir", None, "A built dataset (the folder holding dataset_info.json) to "
                                   "encode, in place of building one.")
_SPLIT = flags.DEFINE_string("split", "train", "The split to encode.")
_SDVAE = flags.DEFINE_string("sdvae", None, "SD-VAE model folder (launch.convert --kind=sdvae) to encode with.")
_LATENTS_DIR = flags.DEFINE_string("latents_dir", None, "Folder to write the cached latents into.")
_FRAMES_PER_DEVICE = flags.DEFINE_integer("frames_per_device", 16, "Frames each device encodes per call.")
_START_DISTRIBUTED = cli.define_distributed_flags()


def main(argv):
  del argv
  building, encoding = bool(_SOURCE_DIR.value or _DATA_DIR.value), bool(_SDVAE.value or _LATENTS_DIR.value)
  if building and not (_SOURCE_DIR.value and _DATA_DIR.value):
    cli.fail("building a dataset needs both --source_dir and --data_dir")
  if encoding and not (_SDVAE.value and _LATENTS_DIR.value):
    cli.fail("encoding latents needs both --sdvae and --latents_dir")
  if not building and not (encoding and _DATASET_DIR.value):
    cli.fail("pass --source_dir and --data_dir to build a dataset, and/or --sdvae, --latents_dir (and --dataset_dir "
             "when not building) to encode one")
  dataset_dir = _DATASET_DIR.value
  if building:
    cli.check_output_dir("data_dir", _DATA_DIR.value)
    report = avfolder.build_avfolder(_SOURCE_DIR.value, _DATA_DIR.value, resolution=_RESOLUTION.value,
                                     fps=_FPS.value, clip_frames=_CLIP_FRAMES.value, labelled=_LABELLED.value,
                                     channels=_CHANNELS.value, name=_NAME.value)
    print(report.summary())
    dataset_dir = dataset_dir or report.dataset_dir
  if encoding:
    cli.check_output_dir("latents_dir", _LATENTS_DIR.value)
    _START_DISTRIBUTED()
    info = latents.encode_folder(dataset_dir, _SPLIT.value, _SDVAE.value, _LATENTS_DIR.value,
                                 _FRAMES_PER_DEVICE.value)
    print(f"latents: {_LATENTS_DIR.value} ({info.num_clips} clips in {info.num_shards} shards, this process's share "
          f"written; VAE {info.vae})")


if __name__ == "__main__":
  cli.run(main)
