r"""Padded vs compacted inference of a trained A-ViT run: time and FLOPs.

  python -m experiments.halting_inference --workdir=RUN [--batch=N] \
      [--budgets=4,8,12,16] [--chunk=C] [--examples=N] [--repeats=R] \
      [--out=FILE] [--processes=P]

A-ViT halts tokens layer by layer, but under jit every layer still runs
on all L tokens, halted ones masked. `adatape.elastic.HaltingPredictor`
runs each layer on the running tokens only, compacted into token budgets
per chunk of examples sorted by their running count. This script times,
on the run's eval set, in one process, interleaved, after a warm-up:
  padded        the model as trained (every layer on all L tokens)
  padded/chunk  the same, one chunk of --chunk examples at a time
  compacted     `HaltingPredictor`
and prints the theoretical saving (1 - the model's analytic FLOPs of the
running tokens / those of all tokens in every layer,
`adatape/models/flops.py`), the saving the budgets allow, and the
realized one against the faster padded run. Last line:
`realized X% of time saved, theoretical Y%`. --processes=P: the same in P
fresh processes and their median, as in `experiments/elastic_inference.py`.
"""

import argparse
import shlex
import sys

import jax
import numpy as np

from adatape import analysis
from adatape import assemble
from adatape import checkpointing
from adatape import elastic
from adatape import run_config
from adatape import storage
from adatape.models import flops
from experiments import elastic_inference


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a trained A-ViT run")
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--budgets", default="")
  parser.add_argument("--chunk", type=int, default=128)
  parser.add_argument("--examples", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=7)
  elastic_inference.add_report_flags(parser)
  args = parser.parse_args(argv)
  code = elastic_inference.timed_elsewhere(
      "experiments.halting_inference", argv, args
  )
  if code is not None:
    return code
  try:
    config, step, params = analysis.read_run(args.workdir)
    run_config.check(
        config.model.name == "avit",
        f"{args.workdir} is a {config.model.name!r} model; compacted "
        "inference needs A-ViT (model.name=avit)",
    )
    run = assemble.prepare(config)
    # One device, the one the padded forwards it is timed against run on.
    predictor = elastic.HaltingPredictor(
        run.model, params, args.budgets or None, chunk=args.chunk, devices=1
    )
  except (run_config.ConfigError, checkpointing.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  batches = analysis.whole_batches(
      analysis.eval_inputs(run, args.examples), args.batch
  )
  used = sum(len(b) for b in batches)
  padded = elastic.forward_in_chunks(run.model, args.batch)  # Whole batches.
  padded_chunks = elastic.forward_in_chunks(
      run.model, min(args.chunk, args.batch)
  )
  outs = [predictor(b) for b in batches]
  medians = elastic.median_times(
      {
          "padded": lambda: [padded(params, b) for b in batches],
          "padded/chunk": lambda: [padded_chunks(params, b) for b in batches],
          "compacted": lambda: [predictor(b).logits for b in batches],
      },
      args.repeats,
  )

  cfg = run.model.config
  enc = cfg.encoder
  tokens = cfg.main_tokens()
  full = enc.depth * float(flops.block(enc.width, enc.mlp_dim, tokens))
  running = float(np.concatenate([o.flops for o in outs]).mean())
  budget_BxD = np.concatenate([o.budget for o in outs])
  sizes, counts = np.unique(budget_BxD, return_counts=True)
  bucketed = sum(
      count * float(flops.block(enc.width, enc.mlp_dim, int(k)))
      for k, count in zip(sizes, counts)
  ) / len(budget_BxD)
  theoretical = 1.0 - running / full
  lines = [
      f"# python -m experiments.halting_inference {shlex.join(argv)}",
      f"run {args.workdir} (step {step}); device "
      f"{jax.devices()[0].device_kind}; {used} examples in batches of "
      f"{args.batch}, chunks of {args.chunk}; median of {args.repeats}; "
      f"L={tokens} tokens, depth {enc.depth}",
      "layers per token: mean "
      f"{np.concatenate([o.layers_used for o in outs]).mean():.2f}; "
      f"budgets {predictor.budgets}; tokens run per layer (share of "
      "example-layers): "
      + ", ".join(
          f"{k}: {c / budget_BxD.size:.0%}" for k, c in zip(sizes, counts)
      ),
  ]
  for name, seconds in medians.items():
    lines.append(
        f"{name:<12} {seconds * 1e3:9.1f} ms  {used / seconds:10.0f} ex/s"
    )
  against = {
      name: 1.0 - medians["compacted"] / medians[name]
      for name in ("padded", "padded/chunk")
  }
  realized = min(against.values())
  lines += [
      f"analytic MFLOPs of the blocks per example: all tokens "
      f"{full / 1e6:.4f}, running tokens {running / 1e6:.4f}, at the "
      f"budgets {bucketed / 1e6:.4f}",
      "compacted saves "
      + ", ".join(f"{v:.1%} against {k}" for k, v in against.items()),
      f"saving: theoretical {theoretical:.1%}, within the budgets "
      f"{1.0 - bucketed / full:.1%}, realized {realized:.1%}",
      f"realized {realized:.1%} of time saved, theoretical "
      f"{theoretical:.1%}",
  ]
  print("\n".join(lines), flush=True)
  if args.out:
    storage.write_atomic(args.out, "\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
