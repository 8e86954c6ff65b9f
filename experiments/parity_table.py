r"""Parity: AdaTape vs Transformer vs Universal Transformer at equal budgets.

Trains every (model, length, seed) with the same steps and batch through
the normal command line (so each run is resumable and skipped once
finished), then writes a markdown table and a CSV: eval accuracy, mean tape
length or ponder steps, steps, wall time, steps/s, parameters, and, for
AdaTape, whether the tape length tracks difficulty: the correlation over
the eval set between an example's tape length and its number of +1s (and,
for the Graves variant, its number of non-zero elements).

  python -m experiments.parity_table --root=runs/parity_table \
      --out=experiments/results/parity_table
"""

import argparse
import csv
import json
import os

from launch import local

MODELS = ("adatape", "transformer", "universal_transformer")


def run_one(root, model, seq_len, seed, steps, variant):
  """Trains one run unless finished; returns its results and, for AdaTape,
  the tape-difficulty correlations."""
  name = f"{model}_{variant}_S{seq_len}_seed{seed}"
  workdir = os.path.join(root, name)
  if not local.finished(workdir):
    print(f"== training {name}", flush=True)
    local.train(
        f"configs/parity/{model}.py:seq_len={seq_len},"
        f"variant={variant},steps={steps}",
        workdir,
        {"seed": seed},
    )
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  results.update(
      name=name,
      model=model,
      seq_len=seq_len,
      seed=seed,
      variant=variant,
      workdir=workdir,
  )
  if model == "adatape":
    results.update(tape_difficulty(workdir))
  return results


def tape_difficulty(workdir):
  """Correlation of tape length with #(+1) and #(non-zero) on the eval set."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from adatape import analysis  # pylint: disable=g-import-not-at-top

  ex = analysis.per_example(
      analysis.load(workdir),
      lambda out: {"length": out.metrics_B["tape_length"]},
  )
  lengths = ex["length"].astype(np.float64)
  plus = (ex["values"] == 1).sum(1)
  nonzero = (ex["values"] != 0).sum(1)

  def corr(a, b):
    if np.std(a) == 0 or np.std(b) == 0:
      return float("nan")
    return float(np.corrcoef(a, b)[0, 1])

  return {
      "corr_tape_plus": corr(lengths, plus),
      "corr_tape_nonzero": corr(lengths, nonzero),
      "tape_length_min": float(lengths.min()),
      "tape_length_max": float(lengths.max()),
  }


COLUMNS = (
    ("model", "model", "{}"),
    ("variant", "data", "{}"),
    ("seq_len", "S", "{}"),
    ("seed", "seed", "{}"),
    ("eval/accuracy", "eval acc", "{:.4f}"),
    ("eval/tape_length", "mean tape", "{:.2f}"),
    ("tape_range", "tape range", "{}"),
    ("eval/act_steps", "ACT steps", "{:.2f}"),
    ("corr_tape_plus", "corr(tape, #+1)", "{:+.3f}"),
    ("corr_tape_nonzero", "corr(tape, #nonzero)", "{:+.3f}"),
    ("steps", "steps", "{}"),
    ("wall_time_s", "wall s", "{:.0f}"),
    ("steps_per_sec", "steps/s", "{:.1f}"),
    ("num_params", "params", "{:,}"),
)


def cell(row, key, fmt):
  if key == "tape_range":
    if "tape_length_min" not in row:
      return "-"
    return f"{row['tape_length_min']:.0f}-{row['tape_length_max']:.0f}"
  value = row.get(key)
  return "-" if value is None else fmt.format(value)


def write_tables(rows, out):
  """OUT.md and OUT.csv."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  lines = [
      "| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
      "|" + "---|" * len(COLUMNS),
  ]
  for row in rows:
    lines.append(
        "| " + " | ".join(cell(row, k, f) for k, _, f in COLUMNS) + " |"
    )
  with open(out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(out + ".csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(
        [k for k, _, _ in COLUMNS if k != "tape_range"]
        + ["tape_length_min", "tape_length_max"]
    )
    for row in rows:
      writer.writerow(
          [row.get(k, "") for k, _, _ in COLUMNS if k != "tape_range"]
          + [row.get("tape_length_min", ""), row.get("tape_length_max", "")]
      )
  print("\n".join(lines))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="runs/parity_table")
  parser.add_argument("--out", default="experiments/results/parity_table")
  parser.add_argument("--steps", type=int, default=12000)
  parser.add_argument("--seq_len", type=int, default=32)
  parser.add_argument("--variant", default="uniform")
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--seeds", default="0", help="seeds for every model")
  parser.add_argument(
      "--adatape_seeds",
      default="0,1,2",
      help="seeds for AdaTape (cheap to run)",
  )
  parser.add_argument(
      "--adatape_lengths",
      default="16,64",
      help="extra lengths for AdaTape alone",
  )
  args = parser.parse_args()
  rows = []
  seeds = [int(s) for s in args.seeds.split(",") if s]
  for model in args.models.split(","):
    model_seeds = seeds
    if model == "adatape":
      model_seeds = sorted(
          set(seeds) | {int(s) for s in args.adatape_seeds.split(",") if s}
      )
    for seed in model_seeds:
      rows.append(
          run_one(
              args.root, model, args.seq_len, seed, args.steps, args.variant
          )
      )
  if "adatape" in args.models:
    for length in [int(s) for s in args.adatape_lengths.split(",") if s]:
      rows.append(
          run_one(args.root, "adatape", length, 0, args.steps, args.variant)
      )
  write_tables(rows, args.out)


if __name__ == "__main__":
  main()
