r"""Standard Transformer on parity: one token per element, same size/budget.

Run (2-core CPU):
  python -m adatape.main --config=configs/parity/transformer.py --workdir=/tmp/tf

Measured (2-core CPU, 12000 steps of batch 128, seed 0): eval accuracy
47.7% (chance); every eval between 43.9% and 51.0%.
"""

import ml_collections

from configs.parity import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model(
      "transformer",
      stem="sequence",
      classifier="gap",
      posemb=True,
      head_bias_init=0.0,
  )
  if args.tiny:
    common.shrink(c)
  return c
