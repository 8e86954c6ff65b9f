r"""Per-token depth map of a finished run, as a PNG (A-ViT's figure).

For every eval example the model's `token_depth_BxL` (layers or steps each
token used: A-ViT, ALBERT-ACT, the Universal Transformer, Hyper-UT; learners
per token for ACM) is read; the PNG shows the mean depth at each position
over the eval set and the per-token depths of the first examples. For a
patch stem (images) the positions are laid out on the patch grid.

  python -m experiments.depth_map --workdir=RUN [--examples=16]
writes RUN/depth_map.png and RUN/depth_map.json (the mean per position).
"""

import argparse
import json
import sys

from adatape import storage


def token_depths(workdir):
  """`[N, L]` per-token depths over the eval set, and the run config."""
  from adatape import analysis  # pylint: disable=g-import-not-at-top

  return analysis.output_per_example(
      workdir,
      "token_depth_BxL",
      "depth maps need a token-adaptive model (A-ViT, ALBERT-ACT, UT, ...)",
  )


def grid(row, config):
  """Lays a row of per-token values out on the patch grid for images."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  if config.model.get("stem") != "patches":
    return row[None, :]
  patches = row[1:] if config.model.get("classifier") == "token" else row
  side = int(round(np.sqrt(len(patches))))
  return patches.reshape(side, -1)


def plot(depths, config, path, examples):
  """The mean depth per position and the first examples' depths, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  mean = depths.mean(0)
  images = config.model.get("stem") == "patches"
  fig, (mean_ax, ex_ax) = plt.subplots(1, 2, figsize=(11, 4))
  vmax = max(float(depths.max()), 1.0)
  im = mean_ax.imshow(
      grid(mean, config), cmap="viridis", vmin=0, vmax=vmax, aspect="auto"
  )
  mean_ax.set_title(f"mean depth per position ({len(depths)} eval examples)")
  fig.colorbar(im, ax=mean_ax)
  if images:
    shown = grid(depths[0], config)
    ex_ax.set_title("first eval example")
  else:
    shown = depths[:examples]
    ex_ax.set_ylabel("eval example")
    ex_ax.set_title(f"first {len(shown)} eval examples")
  for ax in (mean_ax, ex_ax):
    ax.set_xlabel("patch column" if images else "token position")
  im = ex_ax.imshow(shown, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
  fig.colorbar(im, ax=ex_ax)
  fig.suptitle(f"{config.model.name}: layers/steps used per token")
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=120)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--examples", type=int, default=16)
  args = parser.parse_args()
  from adatape import checkpointing  # pylint: disable=g-import-not-at-top
  from adatape import run_config  # pylint: disable=g-import-not-at-top

  try:
    depths, config = token_depths(args.workdir)
  except (run_config.ConfigError, checkpointing.CheckpointError) as e:
    sys.exit(f"error: {e}")
  path = storage.join(args.workdir, "depth_map.png")
  plot(depths, config, path, args.examples)
  storage.write_atomic(
      storage.join(args.workdir, "depth_map.json"),
      json.dumps(
          {
              "mean_depth_per_position": depths.mean(0).tolist(),
              "mean_depth": float(depths.mean()),
          }
      ),
  )
  print(f"wrote {path} (mean depth {depths.mean():.2f})")


if __name__ == "__main__":
  main()
