r"""What a checkpoint save costs the train loop, on one process with 8
devices: Orbax's default handler against `checkpointing.Checkpointer`.

An asynchronous save still blocks while it copies the state off the
devices. Orbax's default splits every replicated array into one slice per
replica (so that several hosts can share the writing) and copies each
slice; on one process every replica is local, and the Checkpointer writes
each replicated array whole from one device instead. This times, for the
replicated train state of each model (8 simulated CPU devices, set here
before jax is imported), the call to `save` (what the train loop waits
for), and the save until its files are written, interleaved, median of
`--repeats`; and counts the slice ops each save dispatches.

  python -m experiments.checkpoint_save [--repeats=7]
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
)

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import functools
import shutil
import statistics
import tempfile
import time

import jax
import orbax.checkpoint as ocp

from adatape import checkpointing
from adatape import models
from adatape import optim
from adatape import parallel
from adatape import train
from experiments import benchmark


class _OrbaxDefault:
  """The Checkpointer's saves as they were: Orbax's standard handler."""

  def __init__(self, directory):
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(enable_async_checkpointing=True),
    )

  def save(self, step, state, meta):
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
        ),
    )

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def replicated_state(config, input_shape, num_classes):
  """The model's train state, replicated over every device."""
  model = models.build(config, input_shape=input_shape, num_classes=num_classes)
  init = functools.partial(
      train.init_state,
      model=model,
      tx=optim.create(optim.Config(learning_rate=1e-3), 1000),
      input_shape=input_shape,
  )
  mesh = parallel.make_mesh(parallel.Config(data=jax.device_count()))
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(
      jax.random.key(0)
  )


def _count_slices(fn):
  """(fn(), the number of slice ops it dispatched one by one)."""
  original = jax.lax.slice_in_dim
  calls = [0]

  def counted(*args, **kwargs):
    calls[0] += 1
    return original(*args, **kwargs)

  jax.lax.slice_in_dim = counted
  try:
    return fn(), calls[0]
  finally:
    jax.lax.slice_in_dim = original


def time_saves(state, repeats):
  """{name: (median blocking s, median total s, slices per save)}."""
  makers = {
      "orbax default": _OrbaxDefault,
      "Checkpointer": functools.partial(
          checkpointing.Checkpointer, every_steps=1, max_to_keep=repeats + 1
      ),
  }
  samples = {name: ([], [], []) for name in makers}
  root = tempfile.mkdtemp(prefix="checkpoint_save_")
  try:
    for i in range(repeats + 1):  # The first round warms up, not counted.
      for name, make in makers.items():
        directory = os.path.join(root, f"{name.replace(' ', '_')}_{i}")
        saver = make(directory)
        begin = time.perf_counter()
        _, slices = _count_slices(
            lambda: saver.save(1, state, {"position": 1})  # pylint: disable=cell-var-from-loop
        )
        blocked = time.perf_counter() - begin
        saver.close()
        total = time.perf_counter() - begin
        shutil.rmtree(directory)
        if i:
          for column, value in zip(samples[name], (blocked, total, slices)):
            column.append(value)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return {
      name: tuple(statistics.median(column) for column in columns)
      for name, columns in samples.items()
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  if args.repeats < 1:
    raise SystemExit("error: --repeats must be >= 1")
  print(
      f"jax {jax.__version__}, orbax-checkpoint {ocp.__version__}, "
      f"{jax.device_count()} simulated CPU devices, one process; "
      f"median of {args.repeats} saves each, interleaved"
  )
  cases = {
      "parity AdaTape": (benchmark.parity_models()["adatape"], (32, 3), 2),
      "ViT-S/16-sized AdaTape (learnable bank, T=32)": (
          benchmark.vit_models()["adatape"],
          (224, 224, 3),
          1000,
      ),
  }
  for title, (config, input_shape, classes) in cases.items():
    state = replicated_state(config, input_shape, classes)
    leaves = jax.tree.leaves(state)
    mib = sum(x.size * x.dtype.itemsize for x in leaves) / 2**20
    print(f"\n## {title}: {len(leaves)} arrays, {mib:.1f} MiB, replicated")
    print(
        f"{'handler':<16}{'save call ms':>14}{'until written ms':>18}"
        f"{'slice ops':>11}"
    )
    for name, (blocked, total, slices) in time_saves(
        state, args.repeats
    ).items():
      print(
          f"{name:<16}{blocked * 1e3:>14.1f}{total * 1e3:>18.1f}"
          f"{slices:>11.0f}"
      )


if __name__ == "__main__":
  main()
