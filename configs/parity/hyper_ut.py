r"""Hyper-UT on parity.

UT-ACT (up to 2 * depth steps) with an FFN generated from a pool of 4.
Same data, budget and width as the other parity models (common.py).

Run (2-core CPU):
  python -m adatape.main --config=configs/parity/hyper_ut.py --workdir=/tmp/hyper_ut
Compared with every other method by experiments/compare_methods.py; the
measured numbers are in experiments/results/compare_methods.md.
"""

import ml_collections

from configs import methods
from configs.parity import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = methods.hyper_ut(common.model, 2 * common.DEPTH)
  if args.tiny:
    common.shrink(c)
  return c
