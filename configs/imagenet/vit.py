r"""ViT on ImageNet-1K with the official AdaTape recipe (see common.py).

Run (any jax devices; a TPU slice through launch/tpu.py):
  python -m adatape.main \
      --config=configs/imagenet/vit.py:variant=S/16,data_dir=$DATA \
      --workdir=gs://BUCKET/imagenet_vit_s16
Variants: Ti/16, S/16, B/16, B/32, L/16 (any NAME/PATCH).

The AdaTape paper's ViT baselines use this recipe; it reports AdaTape-S/16
against ViT-S/16 and AdaTape-B/16 against ViT-B/16 (the paper's Table has
the numbers that were read, and which were not). What we measured is in
experiments/results (imagenet_table.py collects finished runs).
"""

import ml_collections

from configs.imagenet import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model("transformer", args.variant)
  if args.tiny:
    common.shrink(c)
  return c
