r"""AdaTape on pointer-value retrieval.

As on parity, the main input is one flattened token and the bank holds one
embedding per input token (the S values and the hop markers), here with
position embeddings, since the pointers are positions. The reader appends
up to T = 4 of them (K = T / epsilon = 2 per step) before block 1 of
DEPTH (4).

Run (2-core CPU):
  python -m adatape.main --config=configs/pvr/adatape.py --workdir=/tmp/pvr_at
Compared with every other method by experiments/compare_methods.py;
measured numbers in experiments/results/compare_methods.md.
"""

import ml_collections

from configs import methods
from configs.pvr import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model(
      "adatape",
      stem="flatten",
      classifier="gap",
      posemb=False,
      head_bias_init=0.0,
      bank_posemb=True,
  )
  c.tape = methods.tape(num_tokens=4, epsilon=2.0, key_split=common.HEADS)
  if args.tiny:
    common.shrink(c)
    c.tape.key_split = 2
    c.tape.num_tokens, c.tape.epsilon = 2, 1.0
  return c
