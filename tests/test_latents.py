"""Cached latents: the stored posterior is the VAE's, training batches equal encoding in the step, resumable
encoding over processes and devices, refusals of other VAEs and scales, training from them."""
import dataclasses
import itertools
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import train_synthetic_tiny
from rflav_jax import build, model_folder, standins
from rflav_jax.codecs.sdvae import LATENT_SCALE, SdVaeCodec
from rflav_jax.data import latents, pipeline, synthetic
from rflav_jax.models.flav import flav_from_config
from rflav_jax.train import input as train_input

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_VAE = {"block_out_channels": [8, 8], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 4}
NUM_CLIPS, CLIP_FRAMES, RESOLUTION = 6, 6, 16


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
  """(folder, model, params, vae_id) of a tiny SD-VAE stand-in (downsampling 2: 16x16 frames -> 8x8x4)."""
  folder = standins.write_sdvae(tmp_path_factory.mktemp("vae") / "sdvae", TINY_VAE)
  model, params = build.load_sdvae(folder)
  return folder, model, params, latents.vae_id(model_folder.read(folder, "sdvae").provenance, params)


@pytest.fixture(scope="module")
def data():
  return synthetic.synthetic_dataset(NUM_CLIPS, synthetic.BouncingBallConfig(resolution=RESOLUTION,
                                                                             num_frames=CLIP_FRAMES), seed=3)


@pytest.fixture(scope="module")
def cached(vae, data, tmp_path_factory):
  """A latents folder of `data`: 2 shards (4 + 2 clips), encoded 5 frames per call (the last call padded)."""
  folder = tmp_path_factory.mktemp("latents")
  _, model, params, vae_id = vae
  latents.encode_dataset(pipeline.Source(data), model, params, vae_id, folder, description="bouncing balls",
                         clips_per_shard=4, frames_per_device=5)
  return folder


def test_records_hold_the_vae_posterior_in_model_space_with_audio_mel_and_label(vae, data, cached):
  _, model, params, vae_id = vae
  info, clips = latents.open_latents(cached)
  assert (info.vae, info.latent_scale, info.resolution, info.clip_frames) == (vae_id, LATENT_SCALE, RESOLUTION,
                                                                              CLIP_FRAMES)
  assert info.latent_shape == (8, 8, 4) and info.num_shards == 2 and len(clips) == NUM_CLIPS
  assert sorted(p.name for p in pathlib.Path(cached).iterdir()) == [
      "latents-00000-of-00002.array_record", "latents-00001-of-00002.array_record", "latents.json"]
  mean, logvar = SdVaeCodec(model, params).encode_moments(data["video"])  # the codec's own encoding, clip by clip
  for i, clip in enumerate(clips):
    np.testing.assert_allclose(clip["latent_mean"], LATENT_SCALE * mean[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clip["latent_std"], LATENT_SCALE * np.exp(0.5 * logvar[i]), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(clip["mel"], data["mel"][i])
    np.testing.assert_array_equal(clip["audio"], data["audio"][i])
    assert clip["label"] == data["label"][i]


def latent_config(vae_folder, **data):
  config = train_synthetic_tiny.get_config("micro")
  config.model.update(latent_size=8, in_channels=4, patch_size=2)
  config.data.update(num_clips=NUM_CLIPS, clip_frames=CLIP_FRAMES, resolution=RESOLUTION, seed=3, **data)
  config.train.batch_size = 2
  config.codec.update(kind="sdvae", checkpoint=str(vae_folder))
  return config


def test_batches_from_cached_latents_equal_encoding_in_the_step(vae, cached):
  """The same examples, windows and mel, and latents drawn with the same noise: equal up to float rounding."""
  folder, model, params, _ = vae
  codec = SdVaeCodec(model, params)
  in_step, from_cache = latent_config(folder), latent_config(folder, source="latents", latents_dir=str(cached))
  flav = flav_from_config(in_step.model)
  read = lambda config: list(itertools.islice(train_input.host_batches(
      config, flav, train_input.data_source(config.data), codec, start_step=5), 4))
  for encoded, drawn in zip(read(in_step), read(from_cache)):
    assert drawn["video"].shape == (2, 4, 8, 8, 4)
    np.testing.assert_allclose(drawn["video"], encoded["video"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(drawn["mel"], encoded["mel"])
    np.testing.assert_array_equal(drawn["label"], encoded["label"])


def test_latents_of_another_vae_or_scale_are_refused_in_one_line(vae, cached, tmp_path):
  folder, model, params, _ = vae
  other = model_folder.write(tmp_path / "other", "sdvae", jax.tree.map(lambda x: x + 0.01, params), TINY_VAE,
                             {"source": "the stand-in's weights plus 0.01", "sha256": None})
  flav = flav_from_config(latent_config(folder).model)
  for codec_folder in (other, folder):
    config = latent_config(codec_folder, source="latents", latents_dir=str(cached))
    codec = SdVaeCodec(*build.load_sdvae(codec_folder))
    if codec_folder == folder:  # the right VAE, but latents.json says another scale
      info = latents.read_info(cached)
      (tmp_path / "rescaled").mkdir()
      for path in pathlib.Path(cached).iterdir():
        (tmp_path / "rescaled" / path.name).symlink_to(path)
      (tmp_path / "rescaled" / latents.INFO_NAME).unlink()
      (tmp_path / "rescaled" / latents.INFO_NAME).write_text(dataclasses.replace(info, latent_scale=0.13).to_json())
      config.data.latents_dir = str(tmp_path / "rescaled")
    with pytest.raises(ValueError, match="were made by VAE params-sha256:.* at latent scale") as error:
      next(train_input.host_batches(config, flav, train_input.data_source(config.data), codec, 0))
    assert "\n" not in str(error.value)
  config = latent_config(folder, source="latents", latents_dir=str(cached))
  config.codec.update(kind="pixel", checkpoint="")
  with pytest.raises(ValueError, match="needs config.codec.kind='sdvae'"):
    next(train_input.host_batches(config, flav, train_input.data_source(config.data), None, 0))


def test_encoding_is_shared_by_processes_and_resumes(vae, data, cached, tmp_path):
  _, model, params, vae_id = vae
  encode = lambda folder, index, count, **kwargs: latents.encode_dataset(
      pipeline.Source(data), model, params, vae_id, folder, description="bouncing balls", clips_per_shard=4,
      frames_per_device=5, process_index=index, process_count=count, **kwargs)
  encode(tmp_path, 1, 2)  # process 1 of 2: shard 1 only; latents.json is process 0's to write
  with pytest.raises(ValueError, match="no cached latents"):
    latents.open_latents(tmp_path)
  encode(tmp_path, 0, 3)  # a stopped run's process 0 (of another count): shard 0
  shard = tmp_path / "latents-00000-of-00002.array_record"
  written = shard.stat().st_mtime_ns
  encode(tmp_path, 0, 1)  # the whole job again: nothing left to do
  assert shard.stat().st_mtime_ns == written
  _, resumed = latents.open_latents(tmp_path)
  _, straight = latents.open_latents(cached)
  for a, b in zip(resumed, straight):
    np.testing.assert_array_equal(a["latent_mean"], b["latent_mean"])
  with pytest.raises(ValueError, match="holds other latents"):  # another layout into the same folder
    latents.encode_dataset(pipeline.Source(data), model, params, vae_id, tmp_path, description="bouncing balls",
                           clips_per_shard=3)
  (tmp_path / "latents-00001-of-00002.array_record").unlink()
  with pytest.raises(ValueError, match="lacks 1 of its 2 shards"):
    latents.open_latents(tmp_path)


@pytest.mark.slow
def test_prepare_data_encodes_over_two_devices_and_training_runs_from_the_latents(vae, tmp_path):
  """launch.prepare_data on a TFDS dataset with 2 devices gives the latents of one-device encoding; launch.train
  trains from them (and refuses them with another VAE)."""
  from rflav_jax.data import synthetic_tfds  # pylint: disable=g-import-not-at-top  (TensorFlow)
  folder, model, params, vae_id = vae
  builder = synthetic_tfds.build_bouncing_ball(tmp_path / "tfds", resolution=RESOLUTION, num_frames=CLIP_FRAMES,
                                               num_train=NUM_CLIPS, num_test=1, seed=3)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  run = lambda module, *args: subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                                             capture_output=True, text=True, timeout=600)
  result = run("launch.prepare_data", f"--dataset_dir={builder.data_dir}", f"--sdvae={folder}",
               f"--latents_dir={tmp_path / 'latents'}", "--frames_per_device=4")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "6 clips in 1 shards" in result.stdout
  one_device = tmp_path / "one_device"
  latents.encode_dataset(pipeline.Source(builder, "train"), model, params, vae_id, one_device,
                         description="bouncing balls")
  for a, b in zip(latents.open_latents(tmp_path / "latents")[1], latents.open_latents(one_device)[1]):
    np.testing.assert_allclose(a["latent_mean"], b["latent_mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a["mel"], b["mel"])

  train = lambda codec_folder, workdir: run(
      "launch.train", "--config=configs/train_synthetic_tiny.py:micro", f"--workdir={workdir}",
      "--config.model.latent_size=8", "--config.model.in_channels=4", "--config.model.patch_size=2",
      "--config.data.source=latents", f"--config.data.latents_dir={tmp_path / 'latents'}", "--config.codec.kind=sdvae",
      f"--config.codec.checkpoint={codec_folder}", "--config.train.batch_size=2", "--config.train.num_steps=3",
      "--config.train.checkpoint_every=3")
  result = train(folder, tmp_path / "run")
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "run" / "export" / "model.json").exists()
  other = standins.write_sdvae(tmp_path / "other", TINY_VAE, seed=1)
  result = train(other, tmp_path / "refused")
  assert result.returncode == 1 and "were made by VAE" in result.stderr
