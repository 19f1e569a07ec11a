"""Devices: one 2-D mesh ("data", "fsdp") over every device of every host, and the shardings on it.

The batch is split over both axes (every device trains on its own examples). Parameters and optimizer
state are replicated over "data" and, when mesh.fsdp > 1, split over "fsdp" along their largest axis that
divides evenly (fully sharded data parallelism, for models whose state does not fit one device); XLA
gathers them where they are used. The same code runs 1 CPU, 8 GPUs or a pod slice.

The mesh follows the devices' physical interconnect (`jax.experimental.mesh_utils`): on a TPU slice each "fsdp"
group, whose devices exchange weights at every layer, is a set of neighbours on the torus; over several slices
(multi-slice, joined by the slower data-centre network, DCN) the "data" axis spans the slices, so that only the
gradient all-reduce crosses the DCN, and each fsdp group stays within one slice.
"""
import collections
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
_MIN_SHARDED_SIZE = 2 ** 12  # smaller arrays stay replicated: gathering them costs more than it saves


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None, auto: bool) -> None:
  """Starts jax.distributed when several processes train together (explicitly, or `auto` on a pod/cluster)."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif auto:
    jax.distributed.initialize()  # TPU pods, SLURM, ... describe the processes in their environment


def make_mesh(fsdp: int) -> Mesh:
  """Mesh of all devices: (device_count / fsdp, fsdp) over ("data", "fsdp"), laid out by `device_grid`."""
  return Mesh(device_grid(jax.devices(), fsdp), BATCH_AXES)


def device_grid(devices: Sequence, fsdp: int) -> np.ndarray:
  """`devices` as a (len(devices) / fsdp, fsdp) array on their interconnect (module docstring).

  Devices are grouped into slices by their `slice_index` (TPUs; other devices form one slice). One slice:
  `mesh_utils.create_device_mesh`. Several: `mesh_utils.create_hybrid_device_mesh` with the slices along "data".
  """
  slices = collections.Counter(getattr(device, "slice_index", 0) for device in devices)
  per_slice = len(devices) // len(slices)
  if set(slices.values()) != {per_slice}:
    raise ValueError(f"the devices' slices hold different numbers of devices ({dict(slices)}); train on whole, "
                     "equal slices")
  if fsdp < 1 or per_slice % fsdp:
    where = f"the {per_slice} devices of each of the {len(slices)} slices" if len(slices) > 1 else \
        f"the {len(devices)} devices"
    raise ValueError(f"config.train.fsdp={fsdp} must be a positive divisor of {where}")
  # allow_split_physical_axes: an fsdp group may take part of a torus axis (e.g. 2 of a 4-chip ring).
  if len(slices) == 1:
    return mesh_utils.create_device_mesh((len(devices) // fsdp, fsdp), devices, allow_split_physical_axes=True)
  return mesh_utils.create_hybrid_device_mesh((per_slice // fsdp, fsdp), (len(slices), 1), devices,
                                              allow_split_physical_axes=True)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """(B, ...) arrays split over every device along the batch."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_sharding(abstract_state, mesh: Mesh):
  """Shardings of a (abstract) train state: replicated, or split over "fsdp" along the largest even axis."""
  fsdp = mesh.shape["fsdp"]

  def spec(leaf) -> NamedSharding:
    shape = getattr(leaf, "shape", ())
    if fsdp == 1 or np.prod(shape, dtype=np.int64) < _MIN_SHARDED_SIZE:
      return replicated(mesh)
    candidates = [axis for axis in np.argsort(shape)[::-1] if shape[axis] % fsdp == 0]
    if not candidates:
      return replicated(mesh)
    axes = [None] * len(shape)
    axes[candidates[0]] = "fsdp"
    return NamedSharding(mesh, P(*axes))

  return jax.tree.map(spec, abstract_state)


def global_batch(host_batch: dict, mesh: Mesh) -> dict:
  """This host's flat batch (host_batch, ...) -> global arrays (global_batch, ...) split over the mesh."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, value) for name, value in host_batch.items()}


def to_host(tree, mesh: Mesh):
  """A (possibly sharded) tree as numpy arrays on every process (all processes must call it)."""
  gathered = jax.jit(lambda x: x, out_shardings=replicated(mesh))(tree)
  return jax.tree.map(np.asarray, jax.device_get(gathered))
