r"""Train-step time with optax's global norm against `optim.global_norm`.

The train step takes the gradients' global norm twice: to clip them
(`optim.clip_by_global_norm`) and to log `train/grad_norm`. optax sums a
norm per leaf, a reduction of its own per parameter (about 200 for
ViT-S/16); `optim.global_norm` reduces all leaves at once, and both uses
share it. This script builds each model's train step both ways in one
process (optax's: `optax.clip_by_global_norm` and `optax.tree.norm`,
as before the change) and times them in interleaved rounds with
`experiments/throughput.py`'s `Bench`, so that a device's drift between
processes (several percent on the H200 and on this CPU) hits both alike.

  python -m experiments.global_norm_ab --dtype=bfloat16 --batch=256 \
      --repeats=15 --out=experiments/results/global_norm_ab_<device>.txt
  python -m experiments.global_norm_ab --spec=configs/parity/adatape.py \
      --batch=128
"""

import argparse
import contextlib
import shlex
import sys

import jax
import optax

from adatape import models
from adatape import optim
from adatape import run_config
from adatape import storage
from adatape import train
from experiments import throughput


@contextlib.contextmanager
def optax_norm():
  """While open, the trainer and optimizer take optax's per-leaf norm."""
  saved = optim.clip_by_global_norm, optim.global_norm
  optim.clip_by_global_norm = optax.clip_by_global_norm
  optim.global_norm = optax.tree.norm
  try:
    yield
  finally:
    optim.clip_by_global_norm, optim.global_norm = saved


def leaves_and_shapes(config, num_classes: int) -> tuple[int, int]:
  """How many parameter leaves an image model has, and of how many shapes
  (the reductions `optim.global_norm` makes)."""
  input_shape = (config.data.image_size,) * 2 + (3,)
  model = models.build(config, input_shape=input_shape, num_classes=num_classes)
  state = jax.eval_shape(
      lambda: train.init_state(
          jax.random.key(0),
          model=model,
          tx=optax.identity(),
          input_shape=input_shape,
      )
  )
  leaves = jax.tree.leaves(state.params)
  return len(leaves), len({leaf.shape for leaf in leaves})


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--spec",
      action="append",
      default=[],
      help="PATH[:ARGS] of a config file (repeatable; default: the S/16 "
      "pair of experiments/throughput.py)",
  )
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--num_classes", type=int, default=1000)
  parser.add_argument("--dtype", default="", help="override model.dtype")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  benches = []
  try:
    for flag in ("batch", "repeats"):
      value = getattr(args, flag)
      run_config.check(value >= 1, f"--{flag}={value} must be >= 1")
    for spec in args.spec or throughput.DEFAULT_SPECS:
      config = run_config.load(spec, f"--spec={spec}")
      if args.dtype:
        config.model.dtype = args.dtype
      label = spec.replace("configs/", "")
      classes = args.num_classes
      with optax_norm():
        benches.append(
            throughput.Bench(
                f"{label} optax", config, None, args.batch, classes
            )
        )
      benches.append(throughput.Bench(label, config, None, args.batch, classes))
  except run_config.ConfigError as e:
    sys.exit(f"error: {e}")
  lines = []

  def report(line: str) -> None:
    print(line, flush=True)
    lines.append(line)

  report(f"# python -m experiments.global_norm_ab {shlex.join(argv)}")
  rows = throughput.run(benches, args.repeats, report)
  for old, new in zip(benches[::2], benches[1::2]):
    ratio = rows[new.label]["train_step_s"] / rows[old.label]["train_step_s"]
    leaves, shapes = leaves_and_shapes(new.config, args.num_classes)
    report(
        f"{new.label}: train step time with optim.global_norm / with "
        f"optax's {ratio:.4f} ({leaves} parameter leaves in {shapes} shapes)"
    )
  if args.out:
    storage.write_atomic(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
