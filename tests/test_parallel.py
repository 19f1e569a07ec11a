"""The training mesh follows the devices' interconnect: fsdp groups of torus neighbours within one slice, the data
axis across slices; its shape on 8 virtual CPU devices; splash attention split over such a mesh."""
import dataclasses

import pytest

from helpers import run_on_cpu_devices
from rflav_jax.train import parallel


@dataclasses.dataclass(frozen=True)
class FakeTpu:
  """What mesh_utils reads of a TPU v4 chip: its id, torus coordinates and slice."""
  id: int
  coords: tuple[int, int, int]
  slice_index: int = 0
  core_on_chip: int = 0
  platform: str = "tpu"
  device_kind: str = "TPU v4"
  process_index: int = 0


def v4_cube(slice_index: int = 0) -> list[FakeTpu]:
  """A 2x2x2 TPU v4 slice (8 chips), listed in id order."""
  return [FakeTpu(8 * slice_index + i, (i % 2, i // 2 % 2, i // 4), slice_index) for i in range(8)]


def neighbours(a: FakeTpu, b: FakeTpu) -> bool:
  return sum(x != y for x, y in zip(a.coords, b.coords)) == 1


def test_fsdp_groups_are_torus_neighbours_within_one_slice():
  grid = parallel.device_grid(v4_cube(), fsdp=2)
  assert grid.shape == (4, 2) and all(neighbours(*pair) for pair in grid)
  grid = parallel.device_grid(v4_cube(), fsdp=4)  # each group a 2x2 face of the cube
  assert grid.shape == (2, 4) and all(any(len({d.coords[axis] for d in group}) == 1 for axis in range(3))
                                      for group in grid)
  two_slices = v4_cube(0) + v4_cube(1)
  grid = parallel.device_grid(two_slices, fsdp=4)
  assert grid.shape == (4, 4)  # data axis: 2 groups per slice x 2 slices
  assert [{d.slice_index for d in group} for group in grid] == [{0}, {0}, {1}, {1}]
  assert sorted(d.id for d in grid.flat) == list(range(16))
  with pytest.raises(ValueError, match="fsdp=16 must be a positive divisor of the 8 devices of each of the 2"):
    parallel.device_grid(two_slices, fsdp=16)
  with pytest.raises(ValueError, match="different numbers of devices"):
    parallel.device_grid(two_slices[:-1], fsdp=1)


def test_mesh_shape_on_8_virtual_devices():
  out = run_on_cpu_devices("""
      import jax
      from rflav_jax.train import parallel

      class Sliced:  # a CPU device that says it belongs to slice id // 4
        def __init__(self, device):
          self.device, self.slice_index = device, device.id // 4
        def __getattr__(self, name):
          return getattr(self.device, name)

      for fsdp in (1, 2, 8):
        mesh = parallel.make_mesh(fsdp)
        assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
        print(fsdp, dict(mesh.shape))
      grid = parallel.device_grid([Sliced(d) for d in jax.devices()], fsdp=2)
      print("hybrid", grid.shape, [sorted({d.slice_index for d in row}) for row in grid])
      try:
        parallel.make_mesh(3)
      except ValueError as error:
        print("refused:", error)
      """, 8)
  assert "1 {'data': 8, 'fsdp': 1}" in out and "2 {'data': 4, 'fsdp': 2}" in out and "8 {'data': 1, 'fsdp': 8}" in out
  assert "hybrid (4, 2) [[0], [0], [1], [1]]" in out
  assert "refused: config.train.fsdp=3 must be a positive divisor of the 8 devices" in out


@pytest.mark.slow
def test_splash_attention_runs_on_each_devices_sequences_under_a_mesh():
  """Inside jit with the training mesh set, splash attention (interpreted) runs per device and gives XLA's values
  and gradients over the whole sharded batch."""
  out = run_on_cpu_devices("""
      import jax, jax.numpy as jnp, numpy as np
      from rflav_jax.models.splash import splash_attention
      from rflav_jax.train import parallel

      mesh = parallel.make_mesh(2)
      q, k, v = (jax.device_put(jax.random.normal(key, (16, 130, 2, 8)), parallel.batch_sharding(mesh))
                 for key in jax.random.split(jax.random.key(0), 3))
      weights = jax.random.normal(jax.random.key(1), q.shape)
      splash = lambda q, k, v: splash_attention(q, k, v, is_causal=True, interpret=True)
      xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")
      run = lambda f: jax.jit(jax.value_and_grad(lambda *x: jnp.sum(f(*x) * weights), argnums=(0, 1, 2)))(q, k, v)
      with jax.set_mesh(mesh):
        (got, got_grads), text = run(splash), jax.jit(splash).lower(q, k, v).as_text()
      want, want_grads = run(xla)
      rel = lambda a, b: float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))
      print("values", rel(got, want), "gradients", max(rel(a, b) for a, b in zip(got_grads, want_grads)))
      print("shard_map" in text or "sdy.manual_computation" in text)
      """, 8)
  values, gradients = (float(word) for word in out.split()[1:4:2])
  assert values < 1e-5 and gradients < 1e-5 and out.split()[-1] == "True"
