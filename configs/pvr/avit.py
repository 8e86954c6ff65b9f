r"""A-ViT token halting on sequence tokens on pointer-value retrieval.

MAX_STEPS (8) unshared layers with per-token halting.
Same data, budget and width as every PVR model (common.py).

Run (2-core CPU):
  python -m adatape.main --config=configs/pvr/avit.py --workdir=/tmp/pvr_avit
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
  c.model = methods.avit(common.model, common.MAX_STEPS)
  if args.tiny:
    common.shrink(c)
  return c
