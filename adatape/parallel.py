"""Device mesh, parameter shardings and global batches.

Training is one `jax.jit` program over a `jax.make_mesh` mesh with axes
`data` and `model`. Batches are split over `data`. How the train state
(parameters and optimizer state) is laid out is the config's choice, made
here and nowhere else:

  mesh.model > 1      tensor parallelism: parameters get *logical* axis
                      names from their path (attention heads, MLP hidden
                      units), and `LOGICAL_RULES` maps logical names to mesh
                      axes (both to `model`).
  mesh.sharding=fsdp  each parameter and optimizer-state leaf is also split
                      over `data`, along its largest dimension that divides
                      evenly and is not already split (ZeRO-3 / FSDP style);
                      XLA inserts the all-gathers and reduce-scatters.
  replicated          everything not split above is replicated.

A dimension is split only when the mesh axis divides it, so any model runs
on any mesh. Batches are built per process and assembled into global arrays
with `jax.make_array_from_process_local_data`.
"""

import dataclasses
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adatape import run_config

SHARDINGS = ("replicated", "fsdp")

# Logical axes of parameters, by path (matched against the end of the
# parameter's path, optimizer state included since optax mirrors the tree).
LOGICAL_AXES = (
    (r"attention/(query|key|value)/kernel$", ("embed", "heads", "kv")),
    (r"attention/(query|key|value)/bias$", ("heads", "kv")),
    (r"attention/out/kernel$", ("heads", "kv", "embed")),
    (r"/mlp/Dense_0/kernel$", ("embed", "mlp")),
    (r"/mlp/Dense_0/bias$", ("mlp",)),
    (r"/mlp/Dense_1/kernel$", ("mlp", "embed")),
)
# Logical axis -> mesh axis (Megatron-style: heads and MLP hidden units).
LOGICAL_RULES = (("heads", "model"), ("mlp", "model"))


@dataclasses.dataclass(frozen=True)
class Config:
  """`mesh.*` keys.

  Attributes:
    data: size of the data axis; -1 uses every device not used by `model`.
    model: size of the model (tensor-parallel) axis.
    sharding: "replicated" or "fsdp" (parameters and optimizer state split
      over the data axis).
  """

  data: int = -1
  model: int = 1
  sharding: str = "replicated"

  def __post_init__(self):
    run_config.check(
        self.data == -1 or self.data >= 1,
        f"mesh.data={self.data} must be -1 (all devices) or >= 1",
    )
    run_config.check(self.model >= 1, f"mesh.model={self.model} must be >= 1")
    run_config.check_choice("mesh.sharding", self.sharding, SHARDINGS)


def make_mesh(config: Config) -> jax.sharding.Mesh:
  """A (data, model) mesh over the first data * model devices."""
  devices = jax.devices()
  run_config.check(
      len(devices) % config.model == 0 or config.data != -1,
      f"mesh.model={config.model} must divide the {len(devices)} devices",
  )
  data = len(devices) // config.model if config.data == -1 else config.data
  size = data * config.model
  run_config.check(
      1 <= size <= len(devices),
      f"mesh.data * mesh.model = {size} but {len(devices)} devices are "
      "visible",
  )
  run_config.check(
      size % jax.process_count() == 0,
      f"the mesh size {size} must be a multiple of the process count "
      f"{jax.process_count()}",
  )
  return jax.make_mesh(
      (data, config.model),
      ("data", "model"),
      axis_types=(jax.sharding.AxisType.Auto,) * 2,
      devices=devices[:size],
  )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`, replicated over `model`."""
  return NamedSharding(mesh, P("data"))


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
  """The logical axis names of a parameter (None: no name)."""
  for pattern, axes in LOGICAL_AXES:
    if re.search(pattern, path) and len(axes) == ndim:
      return axes
  return (None,) * ndim


def leaf_spec(
    path: str, shape: tuple[int, ...], mesh: jax.sharding.Mesh, fsdp: bool
) -> P:
  """The PartitionSpec of one train-state leaf."""
  rules = dict(LOGICAL_RULES)
  spec: list[str | None] = []
  for axis_name, size in zip(logical_axes(path, len(shape)), shape):
    mesh_axis = rules.get(axis_name)
    if (
        mesh_axis
        and mesh.shape[mesh_axis] > 1
        and (size % mesh.shape[mesh_axis] == 0)
    ):
      spec.append(mesh_axis)
    else:
      spec.append(None)
  data = mesh.shape["data"]
  if fsdp and data > 1:
    free = [
        i
        for i, size in enumerate(shape)
        if spec[i] is None and size % data == 0
    ]
    if free:
      spec[max(free, key=lambda i: shape[i])] = "data"
  return P(*spec)


def state_shardings(
    abstract_state: Any, mesh: jax.sharding.Mesh, config: Config
) -> Any:
  """The NamedSharding of every leaf of the train state."""
  fsdp = config.sharding == "fsdp"

  def sharding(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    return NamedSharding(mesh, leaf_spec(name, tuple(leaf.shape), mesh, fsdp))

  return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def bytes_per_device(abstract_state: Any, shardings: Any) -> int:
  """Bytes of the train state held by one device under `shardings`."""
  total = 0
  for leaf, sharding in zip(
      jax.tree.leaves(abstract_state), jax.tree.leaves(shardings)
  ):
    shard = sharding.shard_shape(tuple(leaf.shape))
    total += int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
  return total


def global_batch(
    local: dict[str, np.ndarray], mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
  """Assembles per-process numpy batches into global sharded arrays."""
  sharding = batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(sharding, v)
      for k, v in local.items()
  }
