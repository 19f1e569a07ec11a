"""A TFDS dataset built from a local folder of audio-video files laid out like the official release:

  source_dir/train/<class>/*.mp4    labelled: one sub-folder per class (class names = sorted folder names)
  source_dir/test/<class>/*.mp4
  source_dir/train/**/*.mp4         unlabelled: any files below train/ and test/

Files with the extensions in MEDIA_EXTENSIONS are read with rflav_jax.media.read_clip (video resampled to
`fps`, letterboxed to `resolution`, mono 16 kHz audio trimmed to whole frames) and cut into NON-OVERLAPPING
clips of `clip_frames` frames from the file's first frame; a tail shorter than a clip is dropped. Each clip is
one example. The default, 50 frames (5 s at 10 fps), is the clip length of the official data; training then
draws a window of the model's 10 frames at any offset of a clip (`data.pipeline`), as the official data set does
at stride 1. Examples:

  video:  uint8 (T, R, R, 3)        T = clip_frames, R = resolution
  mel:    float32 (T, F, 256)       the official front end on the clip's own audio (normalised per clip),
                                    F = 16000 / fps / 160 columns (10 at 10 fps)
  audio:  float32 (T * S,)          the clip's mono waveform at 16 kHz in int16 scale, S = 16000 / fps samples
                                    per frame: training computes each window's mel from it (data.pipeline)
  label:  int64                     class index, or -1 when the dataset is unlabelled
  source: str                       the file's path relative to source_dir
  start:  float32                   the clip's start time in the file, seconds

Files that cannot be decoded, have no audio track or are shorter than one clip (and, when labelled,
files outside any class folder) are skipped: the build never dies on one file. They are counted and
listed in a BuildReport, logged and written as build_report.json in the dataset's directory.
"""
import dataclasses
import itertools
import json
import os
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from absl import logging

from rflav_jax import storage
from rflav_jax.codecs.audio import MelParams, frames_from_mel, mel_from_waveform
from rflav_jax.media.errors import MediaError
from rflav_jax.media.reader import CHANNEL_MODES, read_clip
from rflav_jax.media.timing import samples_per_frame

MEDIA_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov")
SPLITS = ("train", "test")
SAMPLE_RATE = 16000
REPORT_NAME = "build_report.json"
UNLABELLED = -1


@dataclasses.dataclass(eq=False)
class AvFolderConfig(tfds.core.BuilderConfig):
  """How files become examples; class_names is filled from the source folder when labelled."""
  resolution: int = 256
  fps: float = 10.0
  clip_frames: int = 50
  labelled: bool = False
  class_names: tuple[str, ...] = ()
  channels: str = "first"

  @property
  def mel_columns_per_frame(self) -> int:
    return samples_per_frame(self.fps, SAMPLE_RATE) // MelParams().hop_length


@dataclasses.dataclass
class SkippedFile:
  """A source file that gave no examples: its path relative to source_dir, the reason (the error's class
  name) and the full message."""
  file: str
  split: str
  reason: str
  message: str


@dataclasses.dataclass
class BuildReport:
  """What a build made of the source folder: per split, examples written and files used; files skipped."""
  dataset_dir: str
  examples: dict[str, int]
  files_used: dict[str, int]
  skipped: list[SkippedFile]

  def summary(self) -> str:
    lines = [f"dataset: {self.dataset_dir}"]
    lines += [f"  {split}: {self.examples[split]} examples from {self.files_used[split]} files"
              for split in self.examples]
    lines.append(f"  skipped {len(self.skipped)} files" + (":" if self.skipped else ""))
    lines += [f"    {s.file}: {s.reason}: {s.message}" for s in self.skipped]
    return "\n".join(lines)

  def save(self, path: str | os.PathLike) -> None:
    storage.as_path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2))

  @classmethod
  def load(cls, path: str | os.PathLike) -> "BuildReport":
    fields = json.loads(storage.as_path(path).read_text())
    return cls(**{**fields, "skipped": [SkippedFile(**s) for s in fields["skipped"]]})


class AvFolder(tfds.core.GeneratorBasedBuilder):
  """Audio-video examples cut from a local folder of media files (module docstring)."""
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "The clips' audio, for each training window's own mel."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Pass the folder holding train/ and test/ as "
                                  "download_config=tfds.download.DownloadConfig(manual_dir=...); "
                                  "build_avfolder does this for you.")

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    frames, side = config.clip_frames, config.resolution
    label = (tfds.features.ClassLabel(names=config.class_names) if config.labelled
             else tfds.features.Scalar(dtype=np.int64, doc="-1: the dataset is unlabelled"))
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(shape=(frames, side, side, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "mel": tfds.features.Tensor(shape=(frames, config.mel_columns_per_frame, MelParams().n_mels),
                                        dtype=np.float32),
            "audio": tfds.features.Tensor(shape=(frames * samples_per_frame(config.fps, SAMPLE_RATE),),
                                          dtype=np.float32),
            "label": label,
            "source": tfds.features.Text(),
            "start": tfds.features.Scalar(dtype=np.float32, doc="start time in the source file, seconds"),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    """One generator per split folder that yields at least one example (TFDS cannot write empty splits)."""
    source_dir = pathlib.Path(dl_manager.manual_dir)
    self.skipped: list[SkippedFile] = []
    self.files_used: dict[str, int] = {}
    generators = {}
    for split in SPLITS:
      if not (source_dir / split).is_dir():
        continue
      examples = self._generate_examples(source_dir, split)
      first = next(examples, None)  # reads files up to the first usable one
      if first is None:
        logging.warning("split %s of %s gives no examples; it is left out", split, source_dir)
      else:
        generators[split] = itertools.chain([first], examples)
    if not generators:
      raise ValueError(f"no file in {source_dir} gives an example; every file was skipped:\n" +
                       "\n".join(f"  {s.file}: {s.reason}: {s.message}" for s in self.skipped))
    return generators

  def _generate_examples(self, source_dir: pathlib.Path, split: str):
    config = self.builder_config
    files, outside = _split_files(source_dir / split, config.labelled)
    self.skipped += [SkippedFile(_relative(path, source_dir), split, "OutsideClassFolder",
                                 "labelled datasets take files from class sub-folders only; move it into one")
                     for path in outside]
    self.files_used[split] = 0
    for path in tqdm.tqdm(files, desc=f"{split} files", unit="file", disable=None):
      relative = _relative(path, source_dir)
      try:
        clips = _clips_of_file(path, config)
      except Exception as e:  # one bad file must not end the build: MediaError expected, anything else logged
        if not isinstance(e, MediaError):
          logging.exception("unexpected error reading %s", path)
        self.skipped.append(SkippedFile(relative, split, type(e).__name__, str(e)))
        logging.warning("skipping %s: %s", relative, e)
        continue
      self.files_used[split] += 1
      label = _label(path.relative_to(source_dir / split), config)
      for start_frame, video, audio, mel in clips:
        yield f"{relative}@{start_frame}", {"video": video, "mel": mel, "audio": audio, "label": label,
                                            "source": relative, "start": start_frame / config.fps}


def build_avfolder(source_dir: str | os.PathLike, data_dir: str | os.PathLike, *, resolution: int = 256,
                   fps: float = 10.0, clip_frames: int = 50, labelled: bool = False, channels: str = "first",
                   name: str | None = None) -> BuildReport:
  """Builds (once) the TFDS dataset of `source_dir` under `data_dir` and returns its BuildReport.

  The dataset lands in data_dir/av_folder/<config name>/1.1.0, the config name being
  `<name>_r<resolution>_fps<fps>_t<clip_frames>_<labelled|unlabelled>`; `name` defaults to the source
  folder's name. Load it with `tfds.builder_from_directory(report.dataset_dir)` (or pass that builder to
  pipeline.make_pipeline). A dataset already built is not rebuilt; its saved report is returned. `data_dir` may be
  a URL (gs://bucket/tfds): ArrayRecord writes only local files, so the dataset is then built in a temporary local
  folder (under TMPDIR: it needs the dataset's size in local disk) and uploaded; `source_dir` is a local folder.
  """
  source = pathlib.Path(source_dir)
  config = avfolder_config(source, resolution=resolution, fps=fps, clip_frames=clip_frames, labelled=labelled,
                           channels=channels, name=name)
  data_dir = storage.as_path(data_dir)
  with storage.staged_folder(data_dir) as local_data_dir:
    builder = AvFolder(config=config, data_dir=local_data_dir)
    dataset_dir = data_dir / pathlib.Path(builder.data_dir).relative_to(local_data_dir).as_posix()
    report_path = dataset_dir / REPORT_NAME
    if report_path.exists():
      return BuildReport.load(report_path)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(source)),
                                 file_format="array_record")  # random access for the input pipeline
  report = BuildReport(  # written last: a dataset folder with a report is complete
      dataset_dir=os.fspath(dataset_dir),
      examples={split: builder.info.splits[split].num_examples if split in builder.info.splits else 0
                for split in builder.files_used},
      files_used=builder.files_used, skipped=builder.skipped)
  report.save(report_path)
  logging.info("built %s: %s examples, %d files skipped (the report: %s)", report.dataset_dir,
               sum(report.examples.values()), len(report.skipped), report_path)
  return report


def avfolder_config(source_dir: str | os.PathLike, *, resolution: int = 256, fps: float = 10.0,
                    clip_frames: int = 50, labelled: bool = False, channels: str = "first",
                    name: str | None = None) -> AvFolderConfig:
  """The builder config for `source_dir`, checked; class names read from its split folders when labelled."""
  source = pathlib.Path(source_dir)
  present = [split for split in SPLITS if (source / split).is_dir()]
  if not present:
    raise ValueError(f"source_dir {os.fspath(source)!r} holds neither train/ nor test/; point it at the folder "
                     "that contains them (train/<class>/*.mp4 when labelled, train/*.mp4 otherwise)")
  if not isinstance(resolution, (int, np.integer)) or resolution < 8:
    raise ValueError(f"resolution={resolution!r}: expected the square frame side in pixels, at least 8")
  if not isinstance(clip_frames, (int, np.integer)) or clip_frames < 1:
    raise ValueError(f"clip_frames={clip_frames!r}: expected a positive number of frames per example")
  if channels not in CHANNEL_MODES:
    raise ValueError(f"channels={channels!r}: expected one of {CHANNEL_MODES}")
  spf = samples_per_frame(fps, SAMPLE_RATE)
  if spf % MelParams().hop_length:
    raise ValueError(f"fps={fps} gives {spf} audio samples per frame, not a multiple of the mel hop "
                     f"({MelParams().hop_length}); use e.g. fps=10 (10 mel columns per frame)")
  class_names = ()
  if labelled:
    class_names = tuple(sorted({d.name for split in present for d in (source / split).iterdir() if d.is_dir()}))
    if not class_names:
      raise ValueError(f"labelled=True but {os.fspath(source)!r} has no class sub-folders in {present}; "
                       "put each class's files in train/<class>/ or build with labelled=False")
  base = re.sub(r"[^a-z0-9]+", "_", (name or source.resolve().name).lower()).strip("_") or "avfolder"
  config_name = (f"{base}_r{resolution}_fps{fps:g}_t{clip_frames}_{'labelled' if labelled else 'unlabelled'}"
                 .replace(".", "p"))
  return AvFolderConfig(name=config_name, resolution=int(resolution), fps=float(fps), clip_frames=int(clip_frames),
                        labelled=labelled, class_names=class_names, channels=channels,
                        description=f"audio-video clips from {os.fspath(source.resolve())}")


def _split_files(split_dir: pathlib.Path, labelled: bool) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
  """(media files to read, media files outside any class folder), both sorted."""
  files = sorted(p for p in split_dir.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
  if not labelled:
    return files, []
  inside = [p for p in files if len(p.relative_to(split_dir).parts) > 1]
  return inside, [p for p in files if len(p.relative_to(split_dir).parts) == 1]


def _label(path_in_split: pathlib.Path, config: AvFolderConfig) -> int:
  """Index of the file's class folder (its first path part below the split), or UNLABELLED."""
  return config.class_names.index(path_in_split.parts[0]) if config.labelled else UNLABELLED


def _clips_of_file(path: pathlib.Path,
                   config: AvFolderConfig) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
  """[(start frame, video uint8 (T, R, R, 3), audio float32 (T S,), mel float32 (T, F, 256))] for the file's whole
  clips."""
  clip = read_clip(path, fps=config.fps, sample_rate=SAMPLE_RATE, resolution=config.resolution,
                   channels=config.channels, min_frames=config.clip_frames)
  frames, spf = config.clip_frames, samples_per_frame(config.fps, SAMPLE_RATE)
  out = []
  for start in range(0, len(clip.video) - frames + 1, frames):
    audio = clip.audio[start * spf:(start + frames) * spf]
    mel = frames_from_mel(mel_from_waveform(audio), config.mel_columns_per_frame)
    out.append((start, clip.video[start:start + frames], audio.astype(np.float32), mel.astype(np.float32)))
  return out


def _relative(path: pathlib.Path, root: pathlib.Path) -> str:
  return path.relative_to(root).as_posix()
