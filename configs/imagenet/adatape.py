r"""AdaTape-ViT on ImageNet-1K: the official configuration
(`imagenet_adatape_vit_config.py` in scenic's AdaTape project).

Run:
  python -m adatape.main \
      --config=configs/imagenet/adatape.py:variant=S/16,bank=input,data_dir=$DATA \
      --workdir=gs://BUCKET/imagenet_adatape_s16
Variants: S/16 (the only released config), B/16, B/32, any NAME/PATCH.

Tape (the official `imagenet_adatape_vit_config.py`): up to T = 10 tape
tokens, epsilon 2.0 (so K = 5 bank entries merged per token), one token per
step, entropy ATR loss with weight 0.01, a gap query with the complex query
update, appended before block 1; the tape-token MLP has the encoder's MLP
width; the separate tape FFN in the encoder is off; the key split is the
head count.
- bank=input (the released setting): the bank is the image cut into 8x8
  patches by its own conv, position embedding and Dense: 784
  entries at 224 px.
- bank=learn: 10,000 learnable vectors (the config's `tape_bank_size`).

Tape-budget sweep (launch/sweep.py): T, epsilon and the ATR-loss weight.
"""

import ml_collections

from adatape import run_config
from configs import methods
from configs.imagenet import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse(arg, bank="input")
  run_config.check_choice("config arg bank", args.bank, ("input", "learn"))
  c = common.base(args)
  size = args.variant.split("/")[0]
  _, _, heads, mlp_dim = common.VARIANTS[size]
  c.model = common.model(
      "adatape",
      args.variant,
      bank_patch_size=8,
      bank_posemb=False,
  )
  c.tape = methods.tape(
      bank=args.bank,
      bank_size=10_000 if args.bank == "learn" else 0,
      num_tokens=10,
      epsilon=2.0,
      key_split=heads,
      mlp_dim=mlp_dim,
  )
  if args.tiny:
    common.shrink(c)
    c.model.bank_patch_size = 4
    c.tape.update(
        num_tokens=4,
        key_split=2,
        mlp_dim=32,
        bank_size=64 if args.bank == "learn" else 0,
    )
  return c


def sweep(add):
  """Tape budget: (T, epsilon) pairs crossed with the ATR-loss weight."""
  for num_tokens, epsilon in ((5, 1.0), (10, 2.0), (10, 4.0), (20, 4.0)):
    for weight in (0.0, 0.01, 0.1):
      add(
          **{
              "tape.num_tokens": num_tokens,
              "tape.epsilon": epsilon,
              "tape.loss_weight": weight,
          }
      )
