r"""Run every point of a config's `sweep(add)` and aggregate the results.

  python -m launch.sweep --config=configs/parity/adatape.py[:ARGS] \
      --root=runs/sweep [--parallel=2] [--dry-run]
  python -m launch.sweep ... --tpu=NAME --zone=ZONE [--dry-run]

Each point's overrides (`tape.epsilon=4.0`, ...) become `--config.K=V`
flags; its workdir is ROOT/<overrides sorted and joined>, so names are
deterministic and a re-run skips points that have results.json (and
resumes unfinished ones from their checkpoints). Locally, points run N at a
time; with --tpu, each point is launched on the slice in turn through
launch/tpu.py. At the end (or with --aggregate-only) every results.json
under ROOT goes into ROOT/sweep.md, ROOT/sweep.csv and ROOT/sweep.png
(eval accuracy against the model's own compute metric: mean tape length,
ACT steps, ...).
"""

import argparse
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys

from adatape import run_config
from launch import local
from launch import tpu


def slug(overrides: dict[str, object]) -> str:
  """A deterministic, filesystem-safe workdir name for one point."""
  text = ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text) or "default"


def run_local(
    config: str, workdir: str, overrides: dict[str, object]
) -> tuple[str, int]:
  return workdir, local.train(
      config, workdir, overrides, log=workdir + ".log", check=False
  )


def aggregate(root: str) -> list[dict[str, object]]:
  """Collects ROOT/*/results.json into sweep.md, sweep.csv and sweep.png."""
  rows = []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        rows.append({"point": name, **json.load(f)})
  if not rows:
    print(f"no finished points under {root}")
    return rows
  from adatape import reporting  # pylint: disable=g-import-not-at-top

  cost_key = _cost_key(rows)
  shown = [
      k
      for k in ("point", "eval/accuracy", cost_key, "steps", "wall_time_s")
      if any(k in r for r in rows)
  ]
  # The CSV holds every key; the markdown table the headline ones.
  keys = ["point"] + sorted({k for r in rows for k in r} - {"point"})
  print(reporting.write_table(rows, os.path.join(root, "sweep"), keys, shown))
  _plot(rows, os.path.join(root, "sweep.png"), cost_key)
  return rows


def _cost_key(rows) -> str | None:
  """`eval/NAME` of the swept model's own compute metric, if it has one."""
  from adatape import models  # pylint: disable=g-import-not-at-top

  names = {r.get("model") for r in rows}
  if len(names) != 1 or next(iter(names)) not in models.available():
    return None
  return f"eval/{models.cost_metric(names.pop()).name}"


def _plot(rows, path, cost_key):
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(6, 4))
  for r in rows:
    x = r.get(cost_key, 0.0) if cost_key else 0.0
    ax.scatter(x, r["eval/accuracy"])
    ax.annotate(r["point"], (x, r["eval/accuracy"]), fontsize=6)
  ax.set_xlabel(cost_key or "(no compute metric)")
  ax.set_ylabel("eval/accuracy")
  ax.set_title(os.path.basename(os.path.dirname(path)) or "sweep")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--root", required=True)
  parser.add_argument("--parallel", type=int, default=1)
  parser.add_argument("--dry-run", action="store_true")
  parser.add_argument("--aggregate-only", action="store_true")
  parser.add_argument("--tpu", default=None)
  parser.add_argument("--zone", default=None)
  parser.add_argument("--project", default=None)
  args = parser.parse_args(argv)
  if args.tpu and not args.zone:
    parser.error("--tpu needs --zone")
  if args.parallel < 1:
    parser.error("--parallel must be >= 1")
  root = os.path.abspath(args.root) if not args.tpu else args.root
  if args.aggregate_only:
    aggregate(root)
    return 0
  try:
    points = run_config.sweep_points(args.config)
  except run_config.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  pending = []
  for overrides in points:
    workdir = os.path.join(root, slug(overrides))
    if not args.tpu and local.finished(workdir):
      print(f"skip (finished): {workdir}")
      continue
    pending.append((workdir, overrides))
  if args.tpu:
    commit = tpu.head_commit()
    for workdir, overrides in pending:
      for cmd in tpu.commands(
          tpu=args.tpu,
          zone=args.zone,
          project=args.project,
          config=args.config,
          workdir=workdir,
          commit=commit,
          extra=local.override_flags(overrides),
      ):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
          subprocess.run(cmd, check=True)
    return 0
  if args.dry_run:
    for workdir, overrides in pending:
      print(shlex.join(local.command(args.config, workdir, overrides)))
    return 0
  os.makedirs(root, exist_ok=True)
  failed = []
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    futures = [pool.submit(run_local, args.config, w, o) for w, o in pending]
    for future in concurrent.futures.as_completed(futures):
      workdir, code = future.result()
      print(
          f"{'done' if code == 0 else f'FAILED ({code})'}: {workdir}",
          flush=True,
      )
      if code:
        failed.append(workdir)
  aggregate(root)
  if failed:
    print(
        f"{len(failed)} point(s) failed; see their .log files", file=sys.stderr
    )
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
