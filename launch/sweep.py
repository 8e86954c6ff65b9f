r"""Run every point of a config's `sweep(add)` and aggregate the results.

  python -m launch.sweep --config=configs/parity/adatape.py[:ARGS] \
      --root=runs/sweep [--parallel=2] [--dry-run]
  python -m launch.sweep ... --root=gs://BUCKET/sweep --tpu=NAME --zone=ZONE \
      [--env KEY=VALUE ...] [--follow] [--dry-run]
  python -m launch.sweep --root=ROOT --aggregate-only

Each point's overrides (`tape.epsilon=4.0`, ...) become `--config.K=V`
flags; its workdir is ROOT/<overrides sorted and joined>, so names are
deterministic and a re-run skips points that have results.json (and
resumes unfinished ones from their checkpoints). ROOT may be local or a
bucket (`gs://...`).

Locally, points run N at a time (`--parallel=N`), or one per GPU with
`--gpus=0,1,...` (each point sees only its GPU), each logging to
LOGS/<point>.log (LOGS: ROOT when local, else ./sweep_logs). With --tpu the whole sweep is one
detached job on the slice (`launch/tpu.py`): every worker runs the points
one after another, each a multi-host run, skipping finished ones; worker 0
aggregates at the end. At the end (or with --aggregate-only) every
results.json under ROOT goes into ROOT/sweep.md, ROOT/sweep.csv and
ROOT/sweep.png (eval accuracy against the model's own compute metric: mean
tape length, ACT steps, ...).
"""

import argparse
import concurrent.futures
import json
import os
import queue
import re
import shlex
import sys

from adatape import run_config
from adatape import storage
from launch import local
from launch import tpu


def slug(overrides: dict[str, object]) -> str:
  """A deterministic, filesystem-safe workdir name for one point."""
  text = ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text) or "default"


def aggregate(root: str) -> list[dict[str, object]]:
  """Collects ROOT/*/results.json into sweep.md, sweep.csv and sweep.png."""
  rows = []
  for name in storage.listdir(root):
    path = storage.join(root, name, "results.json")
    if storage.exists(path):
      rows.append({"point": name, **json.loads(storage.read_text(path))})
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
  print(reporting.write_table(rows, storage.join(root, "sweep"), keys, shown))
  _plot(rows, storage.join(root, "sweep.png"), cost_key)
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
  ax.set_title(path.rstrip("/").rsplit("/", 2)[-2] or "sweep")
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=120)
  plt.close(fig)


def pending_points(
    config: str, root: str
) -> list[tuple[str, dict[str, object]]]:
  """(workdir, overrides) of every point not finished yet, in order."""
  result = []
  for overrides in run_config.sweep_points(config):
    workdir = storage.join(root, slug(overrides))
    if local.finished(workdir):
      print(f"skip (finished): {workdir}", flush=True)
      continue
    result.append((workdir, overrides))
  return result


def run_on_this_worker(config: str, root: str) -> int:
  """The TPU job: the points in turn (each a multi-host run on the whole
  slice), then worker 0 aggregates. Every worker runs the same loop."""
  failed = 0
  for workdir, overrides in pending_points(config, root):
    print(f"== {workdir}", flush=True)
    code = local.train(config, workdir, overrides, check=False)
    print(f"{'done' if code == 0 else f'FAILED ({code})'}: {workdir}")
    failed += code != 0
  if os.environ.get("ADATAPE_WORKER_ID", "0") == "0":
    aggregate(root)
  return 1 if failed else 0


def run_locally(
    config: str,
    root: str,
    logs: str,
    parallel: int,
    gpus: list[str] | None = None,
) -> int:
  """Points N at a time on this machine, then the aggregate. With `gpus`,
  one point per GPU at a time, each seeing only its own
  (CUDA_VISIBLE_DEVICES)."""
  storage.makedirs(root)
  os.makedirs(logs, exist_ok=True)
  free = queue.Queue()
  for gpu in gpus or []:
    free.put(gpu)

  def one(workdir, overrides):
    gpu = free.get() if gpus else None
    try:
      return local.train(
          config,
          workdir,
          overrides,
          log=os.path.join(logs, f"{slug(overrides)}.log"),
          check=False,
          env={"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None,
      )
    finally:
      if gpu is not None:
        free.put(gpu)

  failed = []
  with concurrent.futures.ThreadPoolExecutor(
      len(gpus) if gpus else parallel
  ) as pool:
    futures = {
        pool.submit(one, workdir, overrides): workdir
        for workdir, overrides in pending_points(config, root)
    }
    for future in concurrent.futures.as_completed(futures):
      workdir, code = futures[future], future.result()
      print(
          f"{'done' if code == 0 else f'FAILED ({code})'}: {workdir}",
          flush=True,
      )
      if code:
        failed.append(workdir)
  aggregate(root)
  if failed:
    print(
        f"{len(failed)} point(s) failed; see their logs in {logs}",
        file=sys.stderr,
    )
    return 1
  return 0


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config")
  parser.add_argument("--root", required=True)
  parser.add_argument("--parallel", type=int, default=1)
  parser.add_argument(
      "--gpus",
      default="",
      help="comma-separated GPU ids: one point per GPU at a time",
  )
  parser.add_argument(
      "--logs", default=None, help="local folder for the points' logs"
  )
  parser.add_argument("--dry-run", action="store_true")
  parser.add_argument("--aggregate-only", action="store_true")
  parser.add_argument(
      "--on-tpu",
      action="store_true",
      help=argparse.SUPPRESS,  # What a TPU worker runs (tpu_worker.sh).
  )
  parser.add_argument("--tpu", default=None, help="TPU VM name")
  parser.add_argument("--zone", default=None)
  parser.add_argument("--project", default=None)
  parser.add_argument("--env", action="append", default=[])
  parser.add_argument("--commit", default=None)
  parser.add_argument("--follow", action="store_true")
  args = parser.parse_args(argv)
  if args.tpu and not args.zone:
    parser.error("--tpu needs --zone")
  if args.parallel < 1:
    parser.error("--parallel must be >= 1")
  root = args.root
  if storage.is_local(root):
    root = os.path.abspath(root)
  if args.aggregate_only:
    aggregate(root)
    return 0
  if not args.config:
    parser.error("--config is required (except with --aggregate-only)")
  try:
    if args.on_tpu:
      return run_on_this_worker(args.config, root)
    run_config.sweep_points(args.config)  # A bad config fails here.
    env = tpu.env_assignments(args.env)
  except (run_config.ConfigError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.tpu:
    if storage.is_local(root):
      parser.error("--tpu needs a --root every worker sees (gs://...)")
    cmds = tpu.commands(
        tpu=args.tpu,
        zone=args.zone,
        project=args.project,
        commit=args.commit or tpu.head_commit(),
        worker_args=["--sweep", f"--config={args.config}", f"--root={root}"],
        name=f"sweep_{tpu.run_name(root)}",
        env=env,
        follow=args.follow,
    )
    tpu.execute(cmds, args.dry_run)
    return 0
  if args.dry_run:
    for workdir, overrides in pending_points(args.config, root):
      print(shlex.join(local.command(args.config, workdir, overrides)))
    return 0
  logs = args.logs or (root if storage.is_local(root) else "sweep_logs")
  gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
  return run_locally(args.config, root, logs, args.parallel, gpus)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
