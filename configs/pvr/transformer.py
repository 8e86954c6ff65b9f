r"""The Transformer on pointer-value retrieval.

DEPTH (4) blocks: the fixed-compute reference.
Same data, budget and width as every PVR model (common.py).

Run (2-core CPU):
  python -m adatape.main --config=configs/pvr/transformer.py --workdir=/tmp/pvr_transformer
Compared with every other method, with accuracy and compute per hop count,
by experiments/compare_methods.py; measured numbers in
experiments/results/compare_methods.md.
"""

import ml_collections

from configs.pvr import common


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
