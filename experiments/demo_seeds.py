r"""The demo recipe on several seeds: what a new user of `make demo` gets.

Trains the config `make demo` runs (the Makefile's DEMO_CONFIG) once per
seed through the normal command line, then reads each run's metrics.jsonl
and writes a table: the final eval accuracy, the training time
(`perf/train_time_s`, wall time of the run including compiles and evals),
and the first eval at or above the target accuracy with its time. The last
line is the range a user should expect, which the README quotes.

  python -m experiments.demo_seeds --root=runs/demo_seeds \
      --out=experiments/results/demo_seeds.md

Run it on an otherwise idle machine: the times are wall-clock.
"""

import argparse
import json
import os
import platform

from adatape import storage
from launch import local

# What `make demo` runs (the Makefile's DEMO_CONFIG): parity at length 16.
CONFIG = "configs/parity/adatape.py:seq_len=16,steps=3000"


def read_evals(workdir):
  """Eval rows of a run's metrics.jsonl, in step order."""
  rows = []
  for line in storage.read_text(
      storage.join(workdir, "metrics.jsonl")
  ).splitlines():
    row = json.loads(line)
    if "eval/accuracy" in row:
      rows.append(row)
  return sorted(rows, key=lambda r: r["step"])


def summarize(seed, workdir, target):
  """One seed's row: final and first-at-target accuracy and times."""
  evals = read_evals(workdir)
  results = json.loads(storage.read_text(storage.join(workdir, "results.json")))
  first = next((r for r in evals if r["eval/accuracy"] >= target), None)
  return {
      "seed": seed,
      "final_accuracy": evals[-1]["eval/accuracy"],
      "final_time_s": evals[-1]["perf/train_time_s"],
      "steps": evals[-1]["step"],
      "first_step": first["step"] if first else None,
      "first_time_s": first["perf/train_time_s"] if first else None,
      "tape_length": results.get("eval/tape_length"),
      "steps_per_sec": results.get("steps_per_sec"),
  }


def table(rows, target, command):
  """The markdown report, its command at the top and the range last."""
  pct = f"{100 * target:.1f}%"
  lines = [
      f"command: {command}",
      f"machine: {platform.machine()}, {os.cpu_count()} CPUs",
      "",
      f"| seed | final eval acc | train time s | first eval >= {pct} (step, "
      "s) | mean tape | steps/s |",
      "|---|---|---|---|---|---|",
  ]
  for r in rows:
    first = (
        f"{r['first_step']}, {r['first_time_s']:.1f}"
        if r["first_step"] is not None
        else "never"
    )
    lines.append(
        f"| {r['seed']} | {100 * r['final_accuracy']:.2f}% | "
        f"{r['final_time_s']:.1f} | {first} | {r['tape_length']:.2f} | "
        f"{r['steps_per_sec']:.1f} |"
    )
  accs = [100 * r["final_accuracy"] for r in rows]
  times = [r["final_time_s"] for r in rows]
  met = sum(
      r["final_accuracy"] >= target or r["first_step"] is not None for r in rows
  )
  lines += [
      "",
      f"final eval accuracy {min(accs):.2f}-{max(accs):.2f}% in "
      f"{min(times):.1f}-{max(times):.1f} s of training; {met} of "
      f"{len(rows)} seeds reached {pct}",
  ]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="runs/demo_seeds")
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--config", default=CONFIG, help="config[:args]")
  parser.add_argument("--target", type=float, default=0.995)
  parser.add_argument(
      "--set",
      action="append",
      default=[],
      help="KEY=VALUE config overrides for every seed (to try recipes)",
  )
  parser.add_argument("--out", default="", help="write the table here too")
  args = parser.parse_args()
  overrides = dict(kv.split("=", 1) for kv in args.set)
  rows = []
  for seed in [int(s) for s in args.seeds.split(",") if s]:
    workdir = storage.join(args.root, f"seed{seed}")
    if not local.finished(workdir):
      print(f"== training seed {seed}", flush=True)
      local.train(args.config, workdir, {**overrides, "seed": seed})
    rows.append(summarize(seed, workdir, args.target))
  flags = " ".join(f"--set={kv}" for kv in args.set)
  command = (
      f"python -m experiments.demo_seeds --root={args.root} "
      f"--config={args.config} --seeds={args.seeds} {flags}".strip()
  )
  report = table(rows, args.target, command)
  print(report, end="")
  if args.out:
    storage.write_atomic(args.out, report)


if __name__ == "__main__":
  main()
