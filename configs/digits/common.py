"""What the digits configs share: a real image dataset that is offline.

scikit-learn's handwritten digits as the local TFDS dataset
`adatape_digits` (32x32 RGB, 1500 train / 297 test), prepared once with

  python -m adatape.data.digits_builder --data_dir=~/tensorflow_datasets

The models are ViT-shaped and small: patch-8 main tokens (16 of them),
width 64, 4 blocks; augmentation is a mild Inception crop (area 50-100%)
without flips (digits are not mirror-symmetric).

Config args: `data_dir=DIR`, `steps=N`, `tiny` (a seconds-long run),
`source=images` (held in memory) or `source=stream` (read from disk
through the ImageNet pipeline, adatape/data/stream.py: the same dataset
and augmentation, a different reader).
"""

import ml_collections

from adatape import run_config
from configs import shared

WIDTH, DEPTH, HEADS, MLP_DIM = 64, 4, 4, 256
PATCH = 8


def parse(arg: str | None) -> ml_collections.ConfigDict:
  args = run_config.parse_arg(
      arg, data_dir="", steps=0, tiny=False, source="images"
  )
  run_config.check_choice(
      "config arg source", args.source, ("images", "stream")
  )
  return args


def base(args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Data, budget and optimizer; no model."""
  c = shared.run(args.steps or 2000, "softmax_xent")
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.data = ml_collections.ConfigDict(
      dict(
          name="images",
          dataset="adatape_digits",
          data_dir=args.data_dir,
          train_split="train",
          eval_split="test",
          image_key="image",
          label_key="label",
          image_size=32,
          eval_resize=0,
          crop_area_min=0.5,
          flip=False,
          randaug_layers=0,
          randaug_magnitude=15.0,
          mixup_alpha=0.0,
      )
  )
  if args.source == "stream":
    c.data.update(name="stream", num_classes=0, shuffle_buffer=2000, prefetch=2)
  return c


def model(name: str, **extra) -> ml_collections.ConfigDict:
  return shared.encoder(
      name,
      WIDTH,
      DEPTH,
      HEADS,
      MLP_DIM,
      stem="patches",
      patch_size=PATCH,
      classifier="gap",
      posemb=True,
      head_bias_init=0.0,
      **extra,
  )


def shrink(c: ml_collections.ConfigDict) -> None:
  shared.shrink(c)
  del c.data.eval_examples  # The eval set is the whole test split.
