r"""ViT pre-training on a JFT-style multi-label dataset (see common.py).

Run:
  python -m adatape.main \
      --config=configs/jft/vit.py:dataset=NAME,data_dir=$DATA,variant=B/16,examples=N \
      --workdir=gs://BUCKET/jft_vit_b16
Then fine-tune on ImageNet:
  --config=configs/jft/finetune.py:init_from=gs://BUCKET/jft_vit_b16,method=vit,variant=B/16
"""

import ml_collections

from configs.imagenet import common as imagenet
from configs.jft import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model("transformer", args.variant)
  if args.tiny:
    imagenet.shrink(c)
  return c
