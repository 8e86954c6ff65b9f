r"""Hyper-UT on pointer-value retrieval.

UT-ACT (up to MAX_STEPS = 8 steps) with an FFN generated per example and step from a pool of 4 weight sets.
Same data, budget and width as every PVR model (common.py).

Run (2-core CPU):
  python -m adatape.main --config=configs/pvr/hyper_ut.py --workdir=/tmp/pvr_hyper_ut
Compared with every other method, with accuracy and compute per hop count,
by experiments/compare_methods.py; measured numbers in
experiments/results/compare_methods.md.
"""

import ml_collections

from configs import methods
from configs.pvr import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = methods.hyper_ut(common.model, common.MAX_STEPS)
  if args.tiny:
    common.shrink(c)
  return c
