"""Device mesh, shardings and global batches.

Training is one `jax.jit` program over a `jax.make_mesh` mesh with a `data`
axis (data parallelism). Parameters and optimizer state are replicated
(`mesh.sharding='replicated'`); the shardings are computed from the abstract
state in one place (`state_shardings`) so that FSDP-style sharding is a new
choice here, not a change to the trainer. Batches are built per process and
assembled into global arrays with `jax.make_array_from_process_local_data`.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from adatape import run_config

SHARDINGS = ("replicated",)


@dataclasses.dataclass(frozen=True)
class Config:
  """`mesh.*` keys.

  Attributes:
    data: size of the data axis; -1 uses every device.
    sharding: how parameters and optimizer state are laid out.
  """

  data: int = -1
  sharding: str = "replicated"

  def __post_init__(self):
    run_config.check(self.data == -1 or self.data >= 1,
                     f"mesh.data={self.data} must be -1 (all devices) or >= 1")
    run_config.check_choice("mesh.sharding", self.sharding, SHARDINGS)


def make_mesh(config: Config) -> jax.sharding.Mesh:
  """A 1-D `data` mesh over the first `config.data` devices."""
  devices = jax.devices()
  size = len(devices) if config.data == -1 else config.data
  run_config.check(
      size <= len(devices),
      f"mesh.data={size} but only {len(devices)} devices are visible")
  run_config.check(
      size % jax.process_count() == 0,
      f"mesh.data={size} must be a multiple of the process count "
      f"{jax.process_count()}")
  return jax.make_mesh((size,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:size])


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over `data`."""
  return NamedSharding(mesh, P("data"))


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh,
                    config: Config) -> Any:
  """The sharding of every leaf of the train state."""
  del config  # Only "replicated" so far.
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh
                 ) -> dict[str, jax.Array]:
  """Assembles per-process numpy batches into global sharded arrays."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local.items()}
