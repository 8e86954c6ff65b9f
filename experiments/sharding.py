r"""Sharding numbers: state memory per device and step time vs device count.

Runs on 8 simulated CPU devices (set here, before jax is imported) and
prints
  1. for a ViT-S/16-sized AdaTape (learnable bank, T = 32): parameter +
     optimizer-state bytes per device, replicated vs FSDP over 8 devices,
     from the compiled train step's memory analysis (argument bytes) and
     from the shardings themselves;
  2. for the parity model: train-step time on 1 vs 8 devices (data
     parallel), same global batch.

  python -m experiments.sharding
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
)

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import statistics
import time

import jax
import numpy as np

from adatape import models
from adatape import optim
from adatape import parallel
from adatape import train
from experiments import benchmark


def compiled_step(config, inputs, labels, mesh_config):
  """(compiled step, state, batch, abstract state, state shardings)."""
  model = models.build(
      config, input_shape=inputs.shape[1:], num_classes=int(labels.max()) + 1
  )
  opt_config = optim.Config(learning_rate=1e-3, warmup_steps=10)
  tx = optim.create(opt_config, 1000)
  init = functools.partial(
      train.init_state, model=model, tx=tx, input_shape=inputs.shape[1:]
  )
  abstract = jax.eval_shape(init, jax.random.key(0))
  mesh = parallel.make_mesh(mesh_config)
  shardings = parallel.state_shardings(abstract, mesh, mesh_config)
  batch_sharding = parallel.batch_sharding(mesh)
  step = jax.jit(
      functools.partial(
          train.train_step,
          model=model,
          tx=tx,
          lr_fn=optim.schedule(opt_config, 1000),
          loss="softmax_xent",
      ),
      in_shardings=(shardings, batch_sharding),
      out_shardings=(shardings, parallel.replicated(mesh)),
      donate_argnums=0,
  )
  batch = parallel.global_batch({"inputs": inputs, "label": labels}, mesh)
  compiled = step.lower(abstract, batch).compile()
  return compiled, init, batch, abstract, shardings, mesh


def memory(inputs, labels):
  """Prints the train state's bytes per device, replicated vs FSDP."""
  config = benchmark.vit_models()["adatape"]
  print(
      "## ViT-S/16-sized AdaTape (learnable bank, T=32), 8 devices, "
      f"batch {inputs.shape[0]}"
  )
  print(
      f"{'layout':<12}{'state MiB/device':>18}{'args MiB/device':>17}"
      f"{'temp MiB/device':>17}"
  )
  rows = {}
  for sharding in ("replicated", "fsdp"):
    mesh_config = parallel.Config(data=8, sharding=sharding)
    compiled, _, _, abstract, shardings, _ = compiled_step(
        config, inputs, labels, mesh_config
    )
    analysis = compiled.memory_analysis()
    state = parallel.bytes_per_device(abstract, shardings) / 2**20
    args = analysis.argument_size_in_bytes / 2**20
    temp = analysis.temp_size_in_bytes / 2**20
    rows[sharding] = args
    print(f"{sharding:<12}{state:>18.1f}{args:>17.1f}{temp:>17.1f}")
  print(
      f"FSDP divides the per-device arguments by "
      f"{rows['replicated'] / rows['fsdp']:.2f} (data axis: 8)"
  )


def step_time(repeats=30):
  """Prints the parity step time on 1 vs 8 devices, same global batch."""
  configs = benchmark.parity_models()
  rng = np.random.default_rng(0)
  inputs = np.eye(3, dtype=np.float32)[rng.integers(0, 3, (128, 32))]
  labels = rng.integers(0, 2, 128)
  print("\n## parity AdaTape, batch 128: data-parallel step time")
  times = {}
  for data in (1, 8):
    compiled, init, batch, _, shardings, _ = compiled_step(
        configs["adatape"], inputs, labels, parallel.Config(data=data)
    )
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    samples = []
    for _ in range(repeats):
      begin = time.perf_counter()
      state, m = compiled(state, batch)
      jax.block_until_ready(m)
      samples.append(time.perf_counter() - begin)
    times[data] = statistics.median(samples)
    print(f"{data} device(s): {times[data] * 1e3:.2f} ms/step")
  print(
      f"8 simulated devices / 1 device: {times[8] / times[1]:.2f}x "
      "(simulated devices share this machine's 2 cores)"
  )


def main():
  print(f"jax {jax.__version__}, {jax.device_count()} simulated CPU devices")
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (8, 224, 224, 3)).astype(np.float32)
  memory(images, rng.integers(0, 1000, 8))
  step_time()


if __name__ == "__main__":
  main()
