r"""Every adaptive-computation method on parity and PVR, at matched budgets.

Trains each method with the task family's shared data, steps, batch and
width (configs/parity/*.py, configs/pvr/*.py) through the normal command
line, so every run is resumable and skipped once finished; ACM is the
three-stage conversion of that task's trained Transformer. Then it
evaluates every finished run on the task's fixed eval set and writes:

  <out>.md / .csv          accuracy vs compute per method and task: mean
                           steps/layers/learners or tape length used, and
                           analytic encoder GFLOPs per example
                           (adatape/models/flops.py)
  <out>_pvr_hops.md / .csv accuracy and GFLOPs per hop count on PVR
                           (training saw hops 1..train_hops only)
  <out>_pvr_hops.png       the same, as two panels

  python -m experiments.compare_methods --workdir=runs/compare \
      --out=experiments/results/compare_methods
"""

import argparse
import concurrent.futures
import json
import os

from launch import local

METHODS = (
    "transformer",
    "adatape",
    "universal_transformer",
    "hyper_ut",
    "pondernet",
    "avit",
    "albert_act",
)
ACM_STAGES = ("distill", "gates", "finetune")


def train(root, task, method, task_args, steps, config_args="", tag=None):
  """Trains one run unless it has finished; returns its workdir."""
  name = f"{task}_{tag or method}"
  workdir = os.path.join(root, name)
  if not local.finished(workdir):
    arg = ",".join(a for a in (task_args, f"steps={steps}", config_args) if a)
    print(f"== training {name}", flush=True)
    local.train(
        f"configs/{task}/{method}.py:{arg}",
        workdir,
        log=os.path.join(root, f"{name}.log"),
    )
  return workdir


def train_task(root, task, task_args, steps, jobs, methods):
  """The methods of one task; returns {method: workdir}."""
  direct = [m for m in methods if m != "acm"]
  with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    futures = {
        m: pool.submit(train, root, task, m, task_args, steps) for m in direct
    }
    workdirs = {m: f.result() for m, f in futures.items()}
  if "acm" not in methods:
    return workdirs
  init = workdirs.get("transformer") or train(
      root, task, "transformer", task_args, steps
  )
  for stage in ACM_STAGES:
    init = train(
        root,
        task,
        "acm",
        task_args,
        steps,
        f"stage={stage},init={init}",
        tag=f"acm_{stage}",
    )
  workdirs["acm"] = init
  return workdirs


def evaluate(workdir):
  """Per-example correctness, GFLOPs, compute used and (PVR) hops."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from adatape import analysis  # pylint: disable=g-import-not-at-top

  loaded = analysis.load(workdir)
  cost = next(m for m in loaded.run.metrics if m.cost)

  def fn(out):
    used = out.metrics_B[cost.name]
    return {
        "pred": out.logits.argmax(-1),
        "gflops": out.flops_B / 1e9,
        "used": used.astype(jnp.float32),
    }

  ex = analysis.per_example(loaded, fn)
  return {
      "correct": (ex["pred"] == ex["label"]).astype(np.float64),
      "gflops": ex["gflops"].astype(np.float64),
      "used": ex["used"].astype(np.float64),
      "hops": ex.get("hops"),
      "compute": cost.description,
      "params": sum(
          int(np.prod(x.shape)) for x in jax.tree.leaves(loaded.params)
      ),
  }


def summarise(task, method, workdir, per_example):
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  return {
      "task": task,
      "method": method,
      "accuracy": float(per_example["correct"].mean()),
      "compute": per_example["compute"],
      "compute_used": float(per_example["used"].mean()),
      "gflops": float(per_example["gflops"].mean()),
      "params": per_example["params"],
      "steps": results["steps"],
      "train_s": results["wall_time_s"],
  }


def hop_rows(method, per_example, train_hops):
  """Accuracy and compute per hop count (PVR)."""
  rows = []
  hops = per_example["hops"]
  for h in sorted(set(hops.tolist())):
    sel = hops == h
    rows.append(
        {
            "method": method,
            "hops": int(h),
            "seen_in_training": bool(h <= train_hops),
            "examples": int(sel.sum()),
            "accuracy": float(per_example["correct"][sel].mean()),
            "compute_used": float(per_example["used"][sel].mean()),
            "gflops": float(per_example["gflops"][sel].mean()),
        }
    )
  return rows


def plot_hops(rows, path, train_hops):
  """Accuracy and GFLOPs against hops, one line per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (acc_ax, flops_ax) = plt.subplots(1, 2, figsize=(11, 4))
  for method in dict.fromkeys(r["method"] for r in rows):
    mine = [r for r in rows if r["method"] == method]
    hops = [r["hops"] for r in mine]
    acc_ax.plot(hops, [r["accuracy"] for r in mine], "o-", label=method)
    flops_ax.plot(hops, [r["gflops"] * 1e3 for r in mine], "o-", label=method)
  for ax in (acc_ax, flops_ax):
    ax.axvline(train_hops + 0.5, color="grey", ls="--", lw=1)
    ax.set_xlabel("hops (dashed: beyond training)")
  acc_ax.set_ylabel("eval accuracy")
  flops_ax.set_ylabel("MFLOPs per example (encoder, analytic)")
  flops_ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--workdir", default="runs/compare", help="root folder of the runs"
  )
  parser.add_argument("--out", default="experiments/results/compare_methods")
  parser.add_argument("--tasks", default="parity,pvr")
  parser.add_argument("--methods", default=",".join(METHODS + ("acm",)))
  parser.add_argument("--parity_args", default="seq_len=16")
  parser.add_argument(
      "--pvr_args", default="seq_len=8,train_hops=3," "eval_hops=6"
  )
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument(
      "--jobs", type=int, default=2, help="runs trained at once"
  )
  parser.add_argument(
      "--tiny", action="store_true", help="seconds-long runs (tests)"
  )
  args = parser.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  from adatape import reporting  # pylint: disable=g-import-not-at-top

  rows, hops = [], []
  for task in args.tasks.split(","):
    task_args = getattr(args, f"{task}_args")
    if args.tiny:
      task_args = ",".join(a for a in (task_args, "tiny") if a)
    workdirs = train_task(
        args.workdir,
        task,
        task_args,
        args.steps,
        args.jobs,
        args.methods.split(","),
    )
    for method, workdir in workdirs.items():
      per_example = evaluate(workdir)
      rows.append(summarise(task, method, workdir, per_example))
      if per_example["hops"] is not None:
        with open(os.path.join(workdir, "config.json")) as f:
          train_hops = json.load(f)["data"]["train_hops"]
        hops.extend(hop_rows(method, per_example, train_hops))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  keys = [
      "task",
      "method",
      "accuracy",
      "compute",
      "compute_used",
      "gflops",
      "params",
      "steps",
      "train_s",
  ]
  print(reporting.write_table(rows, args.out, keys))
  _note_lower_bounds(args.out + ".md")
  if hops:
    keys = [
        "method",
        "hops",
        "seen_in_training",
        "examples",
        "accuracy",
        "compute_used",
        "gflops",
    ]
    print(reporting.write_table(hops, args.out + "_pvr_hops", keys))
    _note_lower_bounds(args.out + "_pvr_hops.md")
    plot_hops(hops, args.out + "_pvr_hops.png", train_hops)


def _note_lower_bounds(path):
  """Says under a table that the UT family's GFLOPs are lower bounds."""
  with open(path, "a") as f:
    f.write(
        "\nUniversal Transformer and Hyper-UT GFLOPs are lower bounds: they"
        " count the queries of tokens still running, while the block also"
        " updates halted tokens (adatape/models/universal_transformer.py).\n"
    )


if __name__ == "__main__":
  main()
