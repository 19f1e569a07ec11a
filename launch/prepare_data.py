r"""Builds a TFDS dataset from a folder of mp4 (webm, avi, mkv, mov) files, as the official release lays out.

  python -m launch.prepare_data --source_dir=/data/aist --data_dir=/data/tfds --labelled \
      --resolution=256 --clip_frames=50

source_dir holds train/ and test/ (one sub-folder per class with --labelled). Each file is cut into
non-overlapping clips of --clip_frames frames (50: the official clip length; training draws the model's 10-frame
windows from them at any offset); unreadable files, files without audio and files shorter than one clip are
skipped and listed in build_report.json next to the dataset. Prints the report.
"""
from absl import flags

from rflav_jax import cli
from rflav_jax.data import avfolder
from rflav_jax.media.reader import CHANNEL_MODES

_SOURCE_DIR = flags.DEFINE_string("source_dir", None, "Folder holding train/ and test/ with the media files.",
                                  required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data folder to write the dataset into.", required=True)
_RESOLUTION = flags.DEFINE_integer("resolution", 256, "Side of the square frames in pixels (letterboxed).")
_FPS = flags.DEFINE_float("fps", 10.0, "Video frame rate to resample to; 16000 / fps must be a multiple of 160.")
_CLIP_FRAMES = flags.DEFINE_integer("clip_frames", 50, "Frames per example (non-overlapping clips); training "
                                    "windows are cut from them at any offset.")
_LABELLED = flags.DEFINE_bool("labelled", False, "Classes from the sub-folders of train/ and test/ (sorted names).")
_CHANNELS = flags.DEFINE_enum("channels", "first", CHANNEL_MODES,
                              "Stereo to mono: the first channel (as the official code) or the mean.")
_NAME = flags.DEFINE_string("name", None, "Dataset name in the config name; defaults to the source folder's name.")


def main(argv):
  del argv
  cli.check_output_dir("data_dir", _DATA_DIR.value)
  report = avfolder.build_avfolder(_SOURCE_DIR.value, _DATA_DIR.value, resolution=_RESOLUTION.value, fps=_FPS.value,
                                   clip_frames=_CLIP_FRAMES.value, labelled=_LABELLED.value,
                                   channels=_CHANNELS.value, name=_NAME.value)
  print(report.summary())


if __name__ == "__main__":
  cli.run(main)
