r"""AdaTape on parity: one flattened main token, read by the tape.

The main input is the whole sequence as a single token; the bank holds one
embedding per element; the reader appends up to T = 8 of them (merged K = T /
epsilon = 4 at a time) before block 1. K * T = 32 = the sequence length, so
the reader can see every element once and never re-reads.

Run (2-core CPU):
  python -m adatape.main --config=configs/parity/adatape.py --workdir=/tmp/at
Other lengths: --config=configs/parity/adatape.py:seq_len=64
`make demo` runs configs/parity/adatape.py:seq_len=16,steps=3000: 5 seeds
ended at 99.98-100.00% in 34.3-41.2 s, each at or above 99.5% by 15.4-29.6 s
(2-core CPU; experiments/results/demo_seeds.md; 63.4-67.9 s on a slower VM
with earlier code, demo_seeds_37ac62b.md).

Measured (2-core CPU, this config, 12000 steps of batch 128, 5 seeds;
experiments/results/parity32_seeds.md): final eval accuracy 99.76-99.98%,
first eval >= 99.5% at step 4000-9000 (84-186 s of perf/train_time_s),
232-245 s per run; mean tape length 6.86-7.27 of 8.
"""

import ml_collections

from configs import methods
from configs.parity import common

# Per sequence length: (T, epsilon). K * T = T^2 / epsilon must fit the bank
# of S entries (the trainer rejects configs that would re-read entries).
TAPE_FOR_LENGTH = {8: (4, 2.0), 16: (8, 4.0), 32: (8, 2.0), 64: (8, 1.0)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg)
  c = common.base(args)
  c.model = common.model(
      "adatape",
      stem="flatten",
      classifier="gap",
      posemb=False,
      head_bias_init=0.0,
  )
  num_tokens, epsilon = TAPE_FOR_LENGTH.get(args.seq_len, (8, 2.0))
  c.tape = methods.tape(
      num_tokens=num_tokens,
      epsilon=epsilon,
      # d_k = width / heads, as the official config's split_tt = heads.
      key_split=common.HEADS,
  )
  if args.tiny:
    common.shrink(c)
    c.tape.num_tokens, c.tape.epsilon = 4, 2.0
    c.tape.key_split = 2
  return c


def sweep(add):
  """Tape budget: T, epsilon and the ATR-loss weight at length 32."""
  for num_tokens, epsilon in ((4, 1.0), (8, 2.0), (8, 4.0)):
    for weight in (0.0, 0.01, 0.1):
      add(
          **{
              "tape.num_tokens": num_tokens,
              "tape.epsilon": epsilon,
              "tape.loss_weight": weight,
          }
      )
