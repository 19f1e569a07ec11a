"""Devices: one 2-D mesh ("data", "fsdp") over every device of every host, and the shardings on it.

The batch is split over both axes (every device trains on its own examples). Parameters and optimizer
state are replicated over "data" and, when mesh.fsdp > 1, split over "fsdp" along their largest axis that
divides evenly (fully sharded data parallelism, for models whose state does not fit one device); XLA
gathers them where they are used. The same code runs 1 CPU, 8 GPUs or a pod slice.
"""
import jax
import numpy as np
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
  """Mesh of all devices: (device_count / fsdp, fsdp) over ("data", "fsdp")."""
  devices = jax.devices()
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"config.train.fsdp={fsdp} must be a positive divisor of the {len(devices)} devices")
  return Mesh(np.array(devices).reshape(len(devices) // fsdp, fsdp), BATCH_AXES)


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
