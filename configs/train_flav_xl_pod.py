r"""FLAV-XL/2 on a TPU pod slice (or several GPU hosts): parameters and optimizer state sharded over 8 devices.

  # on every host of the slice, the same command (from a dataset or, with no VAE in the step, from its latents:
  # --config.data.source=latents --config.data.latents_dir=gs://bucket/latents/aist_r256, README "Train"):
  python -m launch.train --config=configs/train_flav_xl_pod.py --workdir=gs://bucket/xl --multihost \
      --config.data.dataset_dir=gs://bucket/tfds/av_folder/aist_r256_fps10_t50_labelled/1.1.0 \
      --config.codec.checkpoint=gs://bucket/sdvae

The mesh is (devices / fsdp, fsdp): each group of `fsdp` devices holds one copy of the weights split among
them, and the batch is split over every device. Raise fsdp if the state does not fit (XL: 0.7 B parameters,
about 11 GB of float32 weights, EMA and Adam moments).
"""
from configs import train_flav_b1


def get_config():
  config = train_flav_b1.get_config("aist")
  config.model.update(preset="FLAV-XL/2")
  config.train.update(batch_size=256, fsdp=8, peak_tflops_per_device=197.0)  # TPU v5e bf16 peak per chip
  return config
