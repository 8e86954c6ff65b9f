"""What the JFT-style pre-training configs share.

JFT-300M is not public; "JFT-style" is any large multi-label image
dataset you have prepared as a TFDS dataset (TFRecord or ArrayRecord
files, with their dataset_info.json), named by the config args:

  dataset=NAME       the TFDS name (its builder must be importable, or the
                     prepared folder readable by tfds.builder; see
                     README "Images")
  data_dir=DIR       where it is prepared
  image_key=image    an encoded-image feature
  label_key=labels   a Sequence(ClassLabel), a list of integer class ids
                     (then set num_classes=N) or a multi-hot vector
  train_split=train, eval_split=validation, examples=N (the train split's
  size, for epochs), epochs=7, variant=B/16, batch=4096, tiny.

Recipe (the AdaTape release has no JFT config; these are the ViT
paper's JFT-300M pre-training values, Dosovitskiy et al. 2021, Table 3):
Adam (b1 0.9, b2 0.999) with decoupled weight decay 0.1, batch 4096,
10k warmup steps then linear decay to 0, 7 epochs; peak LR 8e-4 for B
and 4e-4 for L (Ti and S: 1e-3, our choice, not from the paper); Inception
crop to 224 and flip, no RandAugment or mixup; sigmoid cross-entropy with
the head bias at -10 (about -ln of JFT's 18,291 classes). Eval is
precision@1 (`eval/accuracy`: the top class is one of the labels).
Fine-tune on ImageNet with configs/jft/finetune.py.
"""

import ml_collections

from adatape import run_config
from configs.imagenet import common as imagenet

PEAK_LR = {"Ti": 1e-3, "S": 1e-3, "B": 8e-4, "L": 4e-4}


def parse(arg: str | None, **extra) -> ml_collections.ConfigDict:
  """The JFT family's config args: ImageNet's, plus `extra`."""
  args = imagenet.parse(
      arg,
      epochs=7,
      dataset="",
      image_key="image",
      label_key="labels",
      num_classes=0,
      train_split="train",
      eval_split="validation",
      examples=303_000_000,
      **extra,
  )
  run_config.check(
      bool(args.dataset),
      "config arg dataset=NAME is required: the TFDS name of "
      "your JFT-style dataset",
  )
  run_config.check(args.examples > 0, "config arg examples must be > 0")
  return args


def base(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Data, budget and optimizer of the pre-training recipe; no model."""
  # The ImageNet recipe's schedule, mesh and logging, then JFT's values.
  c = imagenet.base(args)
  c.total_steps = args.epochs * (args.examples // args.batch)
  c.optim.update(
      learning_rate=PEAK_LR[args.variant.split("/")[0]],
      warmup_steps=10_000,
      schedule="linear",
      weight_decay=0.1,
  )
  c.eval_every_steps = 5000
  c.data.update(
      dataset=args.dataset,
      image_key=args.image_key,
      label_key=args.label_key,
      num_classes=args.num_classes,
      train_split=args.train_split,
      eval_split=args.eval_split,
      randaug_layers=0,
      mixup_alpha=0.0,
  )
  return c


def model(name: str, variant: str, **extra) -> ml_collections.ConfigDict:
  c = imagenet.model(name, variant, **extra)
  c.head_bias_init = -10.0
  return c
