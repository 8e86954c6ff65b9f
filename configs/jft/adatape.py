r"""AdaTape-ViT pre-training on a JFT-style multi-label dataset.

The tape is the ImageNet config's (configs/imagenet/adatape.py: T = 10,
epsilon 2.0, entropy ATR loss 0.01, bank=input or learn); the data and
optimizer are the JFT recipe (see common.py). The paper's JFT figure, the
tape-selection heatmap of the input bank, comes from such a run:
  python experiments/heatmaps.py --workdir=RUN

Run:
  python -m adatape.main \
      --config=configs/jft/adatape.py:dataset=NAME,data_dir=$DATA,variant=B/16,bank=input,examples=N \
      --workdir=gs://BUCKET/jft_adatape_b16
Fine-tune on ImageNet:
  --config=configs/jft/finetune.py:init_from=gs://BUCKET/jft_adatape_b16,method=adatape,variant=B/16,bank=input
"""

import ml_collections

from configs.imagenet import adatape as imagenet_adatape
from configs.imagenet import common as imagenet
from configs.jft import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg, bank="input")
  c = common.base(args)
  reference = imagenet_adatape.get_config(
      f"variant={args.variant},bank={args.bank}"
      + (",tiny" if args.tiny else "")
  )
  c.model = reference.model
  c.model.head_bias_init = -10.0
  c.tape = reference.tape
  if args.tiny:
    imagenet.shrink(c)
  return c
