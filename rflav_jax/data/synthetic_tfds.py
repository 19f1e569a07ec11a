"""The bouncing-ball dataset (synthetic.py) as a TFDS dataset, for the same input pipeline as real data.

Splits: "train" holds clips 0 .. num_train - 1 of the seed, "test" the next num_test (no split when 0). Each example:
video uint8 (T, R, R, 3), mel float32 (T, 10, 256), label (class of synthetic.CLASS_NAMES), height float32
(T,), contacts bool (T,), index int64 (the clip's index under the seed).
"""
import dataclasses
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from rflav_jax import storage
from rflav_jax.data import synthetic


@dataclasses.dataclass(eq=False)
class BouncingBallBuilderConfig(tfds.core.BuilderConfig):
  """Frame side in pixels, frames per clip, clips per split and the seed they are drawn from."""
  resolution: int = 32
  num_frames: int = 16
  num_train: int = 1024
  num_test: int = 128
  seed: int = 0


def _config(resolution: int, num_frames: int, num_train: int, num_test: int, seed: int) -> BouncingBallBuilderConfig:
  return BouncingBallBuilderConfig(
      name=f"r{resolution}_t{num_frames}_train{num_train}_test{num_test}_seed{seed}", resolution=resolution,
      num_frames=num_frames, num_train=num_train, num_test=num_test, seed=seed,
      description=f"{resolution}x{resolution} bouncing ball, {num_frames} frames per clip")


class BouncingBallAv(tfds.core.GeneratorBasedBuilder):
  """Procedural audio-video clips of a bouncing ball whose height sets the pitch (see synthetic.py)."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [_config(32, 16, 1024, 128, 0), _config(64, 16, 1024, 128, 0)]

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    frames, side = config.num_frames, config.resolution
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Tensor(shape=(frames, side, side, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "mel": tfds.features.Tensor(shape=(frames, 10, 256), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=synthetic.CLASS_NAMES),
            "height": tfds.features.Tensor(shape=(frames,), dtype=np.float32),
            "contacts": tfds.features.Tensor(shape=(frames,), dtype=np.bool_),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    splits = {"train": self._generate_examples(0, config.num_train)}
    if config.num_test:  # TFDS cannot write an empty split
      splits["test"] = self._generate_examples(config.num_train, config.num_test)
    return splits

  def _generate_examples(self, first_index: int, count: int):
    config = self.builder_config
    clip_config = synthetic.BouncingBallConfig(resolution=config.resolution, num_frames=config.num_frames)
    for index in range(first_index, first_index + count):
      clip = synthetic.generate_clip(config.seed, index, clip_config)
      yield index, {"video": clip.video, "mel": clip.mel, "label": clip.label, "height": clip.height,
                    "contacts": clip.contacts, "index": index}


def build_bouncing_ball(data_dir: str | os.PathLike, *, resolution: int = 32, num_frames: int = 16,
                        num_train: int = 1024, num_test: int = 128, seed: int = 0) -> tfds.core.DatasetBuilder:
  """Generates (once) and returns the bouncing-ball TFDS dataset under `data_dir`, a local folder or a URL (then the
  dataset is built in a local temporary folder and uploaded, as ArrayRecord writes only local files)."""
  synthetic.BouncingBallConfig(resolution=resolution, num_frames=num_frames)  # validates the geometry
  if num_train < 1 or num_test < 0:
    raise ValueError(f"num_train={num_train}, num_test={num_test}: expected at least one training clip and "
                     "a non-negative number of test clips")
  config = _config(resolution, num_frames, num_train, num_test, seed)
  preset = {c.name: c for c in BouncingBallAv.BUILDER_CONFIGS}.get(config.name)
  data_dir = storage.as_path(data_dir)
  with storage.staged_folder(data_dir) as local_data_dir:
    builder = BouncingBallAv(config=preset or config, data_dir=local_data_dir)
    dataset_dir = data_dir / pathlib.Path(builder.data_dir).relative_to(local_data_dir).as_posix()
    if not (dataset_dir / "dataset_info.json").exists():  # TFDS writes it last
      builder.download_and_prepare(file_format="array_record")  # random access for the input pipeline
  return builder if not storage.is_remote(data_dir) else tfds.builder_from_directory(dataset_dir)
