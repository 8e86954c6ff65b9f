r"""The paper-style table of finished image runs (ImageNet, JFT fine-tunes).

For every workdir given (or every run under --root), reads config.json and
results.json and prints one row:
  top-1        eval/accuracy (precision@1 for multi-label data)
  img/s        training images per second of the run (steps/s x global
               batch; steps/s excludes evals) and per device, with the
               device kind the run recorded
  static GF    XLA's cost analysis of the run's eval forward, per image
               (compiled here, on this host's default device, batch 1)
  eff. GF      static minus the analytic cost of the tape slots the run's
               eval left unread (its eval/gflops is the analytic count at
               each example's tape length; adatape/models/flops.py)
  tape         eval/tape_length, the mean over the eval set

  python -m experiments.imagenet_table --root=RUNS --out=experiments/results/imagenet_table.md
  python -m experiments.imagenet_table --workdir=RUN_A --workdir=RUN_B

Unfinished runs (no results.json) are listed as such and skipped.
"""

import argparse
import csv
import io
import json
import os
import sys

import jax.numpy as jnp

from adatape import analysis
from adatape import checkpointing
from adatape import run_config
from adatape import storage
from experiments import throughput

COLUMNS = (
    "run",
    "model",
    "variant",
    "bank",
    "image",
    "steps",
    "top1",
    "images_per_s",
    "images_per_s_per_device",
    "device",
    "static_gflops",
    "effective_gflops",
    "tape_length",
)


def _variant(config) -> str:
  """ "S/16"-style name of the run's encoder (or its width/depth)."""
  from configs.imagenet import common  # pylint: disable=g-import-not-at-top

  m = config.model
  size = (m.width, m.depth, m.num_heads, m.mlp_dim)
  names = [k for k, v in common.VARIANTS.items() if v == size]
  name = names[0] if names else f"D{m.width}x{m.depth}"
  return f"{name}/{m.get('patch_size', '-')}"


def row(workdir: str) -> dict | None:
  """One table row, or None for an unfinished run."""
  config, _, params = analysis.read_run(workdir)
  results_path = storage.join(workdir, "results.json")
  if not storage.exists(results_path):
    print(f"skip {workdir}: not finished (no results.json)")
    return None
  results = json.loads(storage.read_text(results_path))
  size = config.data.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  cost = throughput.forward_cost(
      config, params, images, throughput.head_classes(params)
  )
  static = cost.static_gflops
  effective = static
  tape = results.get("eval/tape_length")
  if tape is not None:
    effective = static - (cost.full_tape_gflops - results["eval/gflops"])
  images_per_s = results["steps_per_sec"] * config.batch_size
  devices = results.get("num_devices", 1)
  return {
      "run": os.path.basename(os.path.normpath(workdir)),
      "model": {"transformer": "ViT", "adatape": "AdaTape-ViT"}.get(
          config.model.name, config.model.name
      ),
      "variant": _variant(config),
      "bank": config.tape.bank if "tape" in config else "-",
      "image": size,
      "steps": results["steps"],
      "top1": results["eval/accuracy"],
      "images_per_s": images_per_s,
      "images_per_s_per_device": images_per_s / devices,
      "device": f"{devices} x {results.get('device_kind', 'unrecorded')}",
      "static_gflops": static,
      "effective_gflops": effective,
      "tape_length": tape,
  }


def markdown(rows: list[dict]) -> str:
  """The table's markdown, one run per row."""
  lines = [
      "| run | model | variant | bank | px | steps | top-1 | img/s | "
      "img/s/device | device | static GFLOPs | effective GFLOPs | "
      "tape |",
      "|" + "---|" * 13,
  ]
  for r in rows:
    tape = f"{r['tape_length']:.2f}" if r["tape_length"] is not None else "-"
    lines.append(
        f"| {r['run']} | {r['model']} | {r['variant']} | {r['bank']} | "
        f"{r['image']} | {r['steps']} | {100 * r['top1']:.2f}% | "
        f"{r['images_per_s']:.1f} | {r['images_per_s_per_device']:.1f} | "
        f"{r['device']} | {r['static_gflops']:.3g} | "
        f"{r['effective_gflops']:.3g} | {tape} |"
    )
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", action="append", default=[])
  parser.add_argument(
      "--root", default="", help="every run directly under this folder"
  )
  parser.add_argument(
      "--out", default="", help="write the table here (.md), and a .csv beside"
  )
  args = parser.parse_args()
  workdirs = list(args.workdir)
  if args.root:
    workdirs += [
        storage.join(args.root, d)
        for d in storage.listdir(args.root)
        if storage.exists(storage.join(args.root, d, "config.json"))
    ]
  if not workdirs:
    sys.exit("error: no runs: give --workdir=RUN or --root=DIR")
  rows = []
  for workdir in workdirs:
    try:
      r = row(workdir)
    except (run_config.ConfigError, checkpointing.CheckpointError) as e:
      sys.exit(f"error: {e}")
    if r is not None:
      rows.append(r)
  table = markdown(rows)
  print(table, end="")
  if args.out:
    storage.write_atomic(args.out, table)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_atomic(
        os.path.splitext(args.out)[0] + ".csv", buffer.getvalue()
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
