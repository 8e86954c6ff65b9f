r"""Tape-selection heatmap of a finished AdaTape run (the paper's JFT figure).

Over the run's eval set, counts how often each bank entry was merged into a
valid tape token (`ModelOutput.bank_reads_BxM`) and draws the mean reads
per example at each entry. For an input-driven image bank the entries are
laid out on its patch grid, so the picture shows which image regions the
tape reads; a sequence or learnable bank is drawn as one row.

  python -m experiments.heatmaps --workdir=RUN
writes RUN/tape_heatmap.png and RUN/tape_heatmap.json (the mean reads per
entry, and the mean number of entries read per example).
"""

import argparse
import json
import sys

from adatape import storage


def bank_reads(workdir):
  """`[N, M]` reads per eval example and bank entry, and the run config."""
  from adatape import analysis  # pylint: disable=g-import-not-at-top

  return analysis.output_per_example(
      workdir, "bank_reads_BxM", "heatmaps need an AdaTape run"
  )


def plot(mean_M, config, path):
  """The mean reads per bank entry, on the patch grid for image banks."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  on_grid = (
      config.model.get("stem") == "patches" and config.tape.bank == "input"
  )
  side = int(round(np.sqrt(len(mean_M))))
  grid = mean_M.reshape(side, -1) if on_grid else mean_M[None, :]
  fig, ax = plt.subplots(figsize=(5, 4.5) if on_grid else (10, 2.5))
  im = ax.imshow(grid, cmap="magma", aspect="equal" if on_grid else "auto")
  fig.colorbar(im, ax=ax, label="reads per example")
  ax.set_title("tape selection over the eval set")
  ax.set_xlabel("bank patch column" if on_grid else "bank entry")
  if on_grid:
    ax.set_ylabel("bank patch row")
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=120)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  args = parser.parse_args()
  from adatape import checkpointing  # pylint: disable=g-import-not-at-top
  from adatape import run_config  # pylint: disable=g-import-not-at-top

  try:
    reads, config = bank_reads(args.workdir)
  except (run_config.ConfigError, checkpointing.CheckpointError) as e:
    sys.exit(f"error: {e}")
  mean = reads.mean(0)
  path = storage.join(args.workdir, "tape_heatmap.png")
  plot(mean, config, path)
  storage.write_atomic(
      storage.join(args.workdir, "tape_heatmap.json"),
      json.dumps(
          {
              "mean_reads_per_entry": mean.tolist(),
              "mean_entries_read": float(reads.sum(1).mean()),
              "examples": len(reads),
          }
      ),
  )
  print(
      f"wrote {path} ({float(reads.sum(1).mean()):.2f} entries read per "
      f"example over {len(reads)} eval examples)"
  )


if __name__ == "__main__":
  main()
