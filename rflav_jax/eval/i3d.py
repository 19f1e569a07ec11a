"""Inception-3D (I3D, Carreira & Zisserman 2017) as MM-Diffusion's PyTorch port computes FVD features, channels-last.

The port's choices, kept here: BatchNorm with epsilon 1e-5 (TensorFlow's original uses 1e-3), "same" padding split
as TensorFlow splits it (the smaller half first), max pools that pad with zeros (their inputs follow a ReLU), and
the features are the 400 Kinetics logits averaged over the remaining time steps. Convolutions run at full float32
precision on every backend.

Module and parameter names follow the port's state dict ("Mixed_4b.b1a.conv3d.weight" is
params["Mixed_4b"]["b1a"]["conv3d"]["kernel"]); `i3d_weights` loads the published weights onto them.
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rflav_jax.eval import fvd_clips

NUM_CLASSES = 400
BATCH_NORM_EPS = 1e-5
# Output channels of the branches of each inception block: 1x1; 1x1 -> 3x3; 1x1 -> 3x3; max pool -> 1x1.
INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_padding(sizes: Sequence[int], window: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
  """(before, after) pads per axis so that each output size is ceil(size / stride); the smaller half goes first."""
  pads = []
  for size, k, s in zip(sizes, window, strides):
    total = max(k - (s if size % s == 0 else size % s), 0)
    pads.append((total // 2, total - total // 2))
  return pads


def max_pool_same(x: jnp.ndarray, window: tuple[int, int, int], strides: tuple[int, int, int]) -> jnp.ndarray:
  """Max pool of x (B, T, H, W, C) after zero padding to 'same' output sizes."""
  x = jnp.pad(x, [(0, 0), *same_padding(x.shape[1:4], window, strides), (0, 0)])
  return nn.max_pool(x, window, strides, padding="VALID")


class Unit3D(nn.Module):
  """3D convolution with 'same' padding, then BatchNorm (or a bias) and ReLU: (B, T, H, W, C) -> (B, T', H', W', F)."""
  features: int
  kernel: tuple[int, int, int] = (1, 1, 1)
  strides: tuple[int, int, int] = (1, 1, 1)
  batch_norm: bool = True
  relu: bool = True
  epsilon: float = BATCH_NORM_EPS

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = nn.Conv(self.features, self.kernel, self.strides, padding=same_padding(x.shape[1:4], self.kernel, self.strides),
                use_bias=not self.batch_norm, precision=jax.lax.Precision.HIGHEST, name="conv3d")(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=True, epsilon=self.epsilon, name="bn")(x)
    return nn.relu(x) if self.relu else x


class InceptionBlock(nn.Module):
  """Four branches concatenated on channels: (B, T, H, W, C) -> (B, T, H, W, sum of the branch outputs)."""
  channels: tuple[int, int, int, int, int, int]
  epsilon: float = BATCH_NORM_EPS

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    unit = functools.partial(Unit3D, epsilon=self.epsilon)
    c = self.channels
    return jnp.concatenate([
        unit(c[0], name="b0")(x),
        unit(c[2], (3, 3, 3), name="b1b")(unit(c[1], name="b1a")(x)),
        unit(c[4], (3, 3, 3), name="b2b")(unit(c[3], name="b2a")(x)),
        unit(c[5], name="b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1))),
    ], axis=-1)


class InceptionI3d(nn.Module):
  """Video (B, T, H, W, 3) in [-1, 1] -> Kinetics logits (B, num_classes) averaged over time.

  FVD feeds 16 frames of 224x224. Frames must have 193 to 224 pixels a side (the last 7x7 average pool then covers
  the whole picture) and clips at least 9 frames. Evaluation only: BatchNorm uses its running statistics and the
  port's dropout before the logits, inactive at evaluation, is left out.
  """
  num_classes: int = NUM_CLASSES
  epsilon: float = BATCH_NORM_EPS

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    frames, height, width = x.shape[1:4]
    unit = functools.partial(Unit3D, epsilon=self.epsilon)
    x = unit(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    x = unit(64, name="Conv3d_2b_1x1")(x)
    x = unit(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
    x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
    for name in ("Mixed_3b", "Mixed_3c"):
      x = InceptionBlock(INCEPTION_CHANNELS[name], self.epsilon, name=name)(x)
    x = max_pool_same(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = InceptionBlock(INCEPTION_CHANNELS[name], self.epsilon, name=name)(x)
    x = max_pool_same(x, (2, 2, 2), (2, 2, 2))
    for name in ("Mixed_5b", "Mixed_5c"):
      x = InceptionBlock(INCEPTION_CHANNELS[name], self.epsilon, name=name)(x)
    if x.shape[1] < 2 or x.shape[2:4] != (7, 7):
      raise ValueError(f"I3D takes clips of at least 9 frames of 193 to 224 pixels a side (FVD uses 16 of 224x224), "
                       f"got {frames} frames of {height}x{width}")
    x = nn.avg_pool(x, (2, 7, 7), (1, 1, 1), padding="VALID")
    x = Unit3D(self.num_classes, batch_norm=False, relu=False, name="logits")(x)
    return x.mean(axis=(1, 2, 3))


@jax.jit
def features(variables: dict, clips: jnp.ndarray) -> jnp.ndarray:
  """FVD features (B, 400) float32 of uint8 clips (B, T, H, W, 3), usually `fvd_clips.fit_square`'s 16 x 64x64.

  `variables` come from `i3d_weights`. The clips go through `fvd_clips.i3d_input` (224x224) first.
  """
  return InceptionI3d().apply(variables, fvd_clips.i3d_input(clips))
