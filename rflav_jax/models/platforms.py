"""Which kernels FLAV runs on a platform: the one place where the models read the backend.

`Platform` holds the facts the choice needs, `current_platform()` reads them from JAX's default devices, and
`kernel_args(platform)` turns them into FLAV's kernel attributes (see `layers.Kernels`).
"""
import dataclasses

import jax
from jax.extend.backend import get_backend

# On CPUs, sequences of at least this many tokens run "looped" attention (measured on 2 cores: 1.7x faster than
# XLA's at 256 tokens, 3.6x at 1024; slower at 64, where the loop's overhead dominates).
CPU_LOOPED_MIN_TOKENS = 256
# On CPUs, token-wise work over many tokens runs in chunks of at most this many tokens, one chunk after another:
# a GEMM whose operands stay in cache runs faster. Measured on 2 cores of an AMD EPYC, float32: a 20480x768x3072
# GEMM at 142 GFLOP/s whole and 198 in 2048-row pieces; FLAV-B/1's MLP (fc1, GELU, fc2) at 156 and 198.
CPU_CHUNK_TOKENS = 2048
# On TPUs, sequences of at least this many tokens run Pallas splash attention, which keeps no (tokens, tokens)
# logits in memory: FLAV-B/1's spatial attention (1024 tokens a frame) and the joint attention of block "a".
# Shorter sequences (10-token temporal, 100-token audio attention) keep XLA's: their logits are small, and the
# kernel would pad them to whole 128-token blocks.
TPU_SPLASH_MIN_TOKENS = 512


@dataclasses.dataclass(frozen=True)
class Platform:
  """The devices a model runs on.

  name: JAX's platform name ("cpu", "gpu", "tpu").
  cudnn_attention: the devices are NVIDIA GPUs (CUDA, compute capability >= 8.0) with cuDNN flash attention.
  """
  name: str
  cudnn_attention: bool = False


def current_platform() -> Platform:
  """The platform of JAX's default devices."""
  device = jax.devices()[0]
  cuda = device.platform == "gpu" and "cuda" in get_backend().platform_version.lower()
  cudnn = cuda and tuple(int(x) for x in device.compute_capability.split(".")) >= (8, 0)
  return Platform(jax.default_backend(), cudnn)


def kernel_args(platform: Platform) -> dict:
  """FLAV's kernel attributes for `platform`, all but the requested attention_impl.

  CPUs: the transposed-weight-gradient matmul, looped attention from CPU_LOOPED_MIN_TOKENS tokens, chunks of
  CPU_CHUNK_TOKENS tokens. Other platforms: XLA's matmul and attention, no chunking, cuDNN flash attention where
  the platform has it, and on TPUs Pallas splash attention from TPU_SPLASH_MIN_TOKENS tokens. Pallas kernels are
  compiled (not interpreted) everywhere.
  """
  cpu, tpu = platform.name == "cpu", platform.name == "tpu"
  return dict(cudnn_attention=platform.cudnn_attention,
              looped_attention_min_tokens=CPU_LOOPED_MIN_TOKENS if cpu else None,
              splash_attention_min_tokens=TPU_SPLASH_MIN_TOKENS if tpu else None, pallas_interpret=False,
              linear_dot="transposed_weight_grad" if cpu else "xla",
              chunk_tokens=CPU_CHUNK_TOKENS if cpu else None)
