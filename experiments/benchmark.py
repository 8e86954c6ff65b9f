r"""What the adaptive tape reader costs: train-step and compile time.

For two model sizes (the parity model, and a ViT-S/16-sized encoder on
224x224 images with a learnable bank and T = 32), times the train step of
  adatape   the adaptive reader (scan over T / p reading steps),
  fixed     the same model with the reader replaced by a fixed top-T
            selection (`tape.adaptive=False`),
  vit       the plain Transformer / ViT without a tape,
and prints per model: compile time, median step time, XLA's FLOP count of
the compiled step and the achieved FLOP rate as a fraction of a measured f32
matmul rate; per size: the reader's share of the AdaTape step,
(t_adatape - t_fixed) / t_adatape.

  python -m experiments.benchmark [--vit_batch=8] [--repeats=5]
"""

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adatape import elastic
from adatape import models
from adatape import optim
from adatape import tape
from adatape import train

# The f32 matmul rate the project brief quotes for this machine type; the
# script also measures its own (`matmul_gflops`) and reports both ratios.
REFERENCE_GFLOPS = 277.0


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
  """f32 GFLOP/s of a jitted n x n matmul on the default device."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times) / 1e9


def _config(name, *, width, depth, heads, mlp, stem, tape=None, **model):
  c = ml_collections.ConfigDict()
  c.model = dict(
      name=name,
      width=width,
      depth=depth,
      num_heads=heads,
      mlp_dim=mlp,
      stem=stem,
      **model,
  )
  if tape is not None:
    c.tape = tape
  return c


def parity_models() -> dict[str, ml_collections.ConfigDict]:
  size = dict(width=64, depth=2, heads=4, mlp=256)
  tape = dict(num_tokens=8, epsilon=2.0, key_split=4, layers=(1,))
  return {
      "adatape": _config("adatape", stem="flatten", tape=tape, **size),
      "fixed": _config(
          "adatape", stem="flatten", tape=dict(tape, adaptive=False), **size
      ),
      "transformer": _config("transformer", stem="sequence", **size),
  }


def vit_models() -> dict[str, ml_collections.ConfigDict]:
  size = dict(width=384, depth=12, heads=6, mlp=1536, patch_size=16)
  tape = dict(
      bank="learn",
      bank_size=10000,
      num_tokens=32,
      epsilon=2.0,
      key_split=6,
      layers=(1,),
  )
  return {
      "adatape": _config(
          "adatape", stem="patches", posemb=True, tape=tape, **size
      ),
      "fixed": _config(
          "adatape",
          stem="patches",
          posemb=True,
          tape=dict(tape, adaptive=False),
          **size,
      ),
      "vit": _config("transformer", stem="patches", **size),
  }


def compile_train_step(config, inputs, labels):
  """Compiles one model's train step: (run, compile seconds, GFLOP/step)."""
  model = models.build(
      config, input_shape=inputs.shape[1:], num_classes=int(labels.max()) + 1
  )
  opt_config = optim.Config(learning_rate=1e-3, warmup_steps=10)
  tx = optim.create(opt_config, 1000)
  state = train.init_state(
      jax.random.key(0), model=model, tx=tx, input_shape=inputs.shape[1:]
  )
  step = jax.jit(
      functools.partial(
          train.train_step,
          model=model,
          tx=tx,
          lr_fn=optim.schedule(opt_config, 1000),
          loss="softmax_xent",
      ),
      donate_argnums=0,
  )
  batch = {"inputs": jnp.asarray(inputs), "label": jnp.asarray(labels)}
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  gflop = float(cost.get("flops", float("nan"))) / 1e9
  holder = {"state": state}

  def run_once() -> float:
    begin = time.perf_counter()
    holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - begin

  run_once()  # Warm-up.
  return run_once, compile_s, gflop


def time_reader_alone(config, batch, bank_entries, repeats):
  """Median seconds of the reader's forward + backward at a model's shapes."""
  tape_config = tape.TapeConfig(**config.tape)
  width = config.model.width
  rng = np.random.default_rng(0)
  query = jnp.asarray(rng.normal(size=(batch, width)), jnp.float32)
  shape = (
      (bank_entries, width)
      if tape_config.bank == "learn"
      else (batch, bank_entries, width)
  )
  bank = jnp.asarray(rng.normal(size=shape), jnp.float32)

  def loss(query, bank):
    out = tape.read_tape(query, bank, tape_config)
    return jnp.sum(out.tokens_BxTxD**2) + jnp.sum(out.loss_B)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  jax.block_until_ready(grad(query, bank))
  times = []
  for _ in range(repeats):
    begin = time.perf_counter()
    jax.block_until_ready(grad(query, bank))
    times.append(time.perf_counter() - begin)
  return statistics.median(times)


def report(title, configs, inputs, labels, repeats, peak, bank_entries):
  """Times every model in interleaved rounds (so drift hits all alike)."""
  print(f"\n## {title}: batch {inputs.shape[0]}, input {inputs.shape[1:]}")
  runs = {
      name: compile_train_step(config, inputs, labels)
      for name, config in configs.items()
  }
  samples = {name: [] for name in runs}
  for name in elastic.interleaved(runs, repeats):
    samples[name].append(runs[name][0]())
  print(
      f"{'model':<12}{'compile s':>10}{'step ms':>10}{'GFLOP':>9}"
      f"{'GFLOP/s':>9}{'of matmul':>11}{'of 277':>8}"
  )
  times = {}
  for name, (_, compile_s, gflop) in runs.items():
    step_s = statistics.median(samples[name])
    times[name] = step_s
    rate = gflop / step_s
    print(
        f"{name:<12}{compile_s:>10.2f}{step_s * 1e3:>10.2f}{gflop:>9.2f}"
        f"{rate:>9.1f}{rate / peak:>10.1%}{rate / REFERENCE_GFLOPS:>8.1%}"
    )
  reader_s = time_reader_alone(
      configs["adatape"], inputs.shape[0], bank_entries, max(repeats, 20)
  )
  print(
      f"reader loop (forward + backward, timed alone): "
      f"{reader_s * 1e3:.2f} ms = {reader_s / times['adatape']:.1%} of the "
      "AdaTape train step"
  )
  extra = (times["adatape"] - times["fixed"]) / times["adatape"]
  print(
      f"adaptive reader vs fixed top-T: the AdaTape step is {extra:.1%} "
      f"slower ({times['adatape'] * 1e3:.1f} vs {times['fixed'] * 1e3:.1f} "
      f"ms, median of {repeats}, interleaved)"
  )
  return times


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--parity_batch", type=int, default=128)
  parser.add_argument("--vit_batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip_vit", action="store_true")
  args = parser.parse_args()
  print(
      f"jax {jax.__version__} on {jax.devices()[0].platform} "
      f"({jax.device_count()} device(s))"
  )
  peak = matmul_gflops()
  print(f"measured f32 matmul rate (2048^3): {peak:.1f} GFLOP/s")
  rng = np.random.default_rng(0)
  values = rng.integers(0, 3, (args.parity_batch, 32))
  report(
      "parity model (D=64, 2 layers, S=32, T=8, eps=2)",
      parity_models(),
      np.eye(3, dtype=np.float32)[values],
      rng.integers(0, 2, args.parity_batch),
      max(args.repeats, 60),
      peak,
      bank_entries=32,
  )
  if not args.skip_vit:
    images = rng.uniform(-1, 1, (args.vit_batch, 224, 224, 3)).astype(
        np.float32
    )
    report(
        "ViT-S/16-sized encoder, learnable bank (M=10000, T=32, eps=2)",
        vit_models(),
        images,
        rng.integers(0, 1000, args.vit_batch),
        args.repeats,
        peak,
        bank_entries=10000,
    )


if __name__ == "__main__":
  main()
