r"""Standard Transformer on parity: one token per element, same size/budget.

Run (2-core CPU):
  python -m adatape.main --config=configs/parity/transformer.py --workdir=/tmp/tf

Measured: see the parity table in the README.
"""

import ml_collections

from configs.parity import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model("transformer", stem="sequence", classifier="gap",
                         posemb=True, head_bias_init=0.0)
  if args.tiny:
    common.shrink(c)
  return c
