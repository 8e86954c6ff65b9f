"""Small TFDS image-classification datasets, held in host memory.

For datasets of fixed-size images that fit in RAM (CIFAR-10/100, the local
`adatape_digits`, any such TFDS dataset prepared in `data.data_dir`).
Both splits are decoded once; a training batch is then a pure function of
(seed, step), like the synthetic sources, so resume is exact and the global
batch does not depend on the process layout: global position p of the
stream is example perm_e[p mod N] of epoch e = p div N (one permutation per
epoch from the seed), and each example's augmentation seed is
(seed, p). Augmentation is the official recipe's (`image_ops.py`): Inception
crop, flip, RandAugment, then mixup on each process's slice (mixup pairs
examples within a process; the one place the process layout shows). Eval is
the whole eval split, resized and centre-cropped, padded with a mask by the
base class, so every example counts once.

Nothing is downloaded: a dataset that is not prepared is an error that says
how to prepare it. ImageNet (variable-size images, 1.28M of them) and JFT-style
data stream from disk instead (`stream.py`).
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from adatape import data as data_lib
from adatape import run_config
from adatape.data import digits_builder  # pylint: disable=unused-import
from adatape.data import image_ops

_PREPARE_HINT = {
    "adatape_digits": "python -m adatape.data.digits_builder --data_dir=DIR",
    "imagenet2012": "download ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar from image-net.org into "
    "MANUAL_DIR, then tfds build imagenet2012 "
    "--manual_dir=MANUAL_DIR --data_dir=DIR",
}


@dataclasses.dataclass(frozen=True)
class Config:
  """`data.*` keys for in-memory image datasets.

  Attributes:
    name: "images".
    dataset: the TFDS name (e.g. "cifar10", "adatape_digits").
    data_dir: where it is prepared ("": TFDS's default).
    train_split: TFDS split to train on.
    eval_split: TFDS split to evaluate on (all of it).
    image_key: the image feature.
    label_key: the class-label feature.
    image_size: side of the square model input.
    eval_resize: eval images are resized to this short side, then centre
      cropped to `image_size` (0: resize straight to `image_size`).
    crop_area_min: smallest Inception-crop area fraction (1.0: no crop).
    flip: random horizontal flips.
    randaug_layers: RandAugment ops per image (0: off).
    randaug_magnitude: RandAugment magnitude (official: 15).
    mixup_alpha: mixup's Beta parameter (0: off; labels then stay indices).
  """

  name: str = "images"
  dataset: str = "adatape_digits"
  data_dir: str = ""
  train_split: str = "train"
  eval_split: str = "test"
  image_key: str = "image"
  label_key: str = "label"
  image_size: int = 32
  eval_resize: int = 0
  crop_area_min: float = 0.05
  flip: bool = True
  randaug_layers: int = 0
  randaug_magnitude: float = 15.0
  mixup_alpha: float = 0.0

  def __post_init__(self):
    check = run_config.check
    check(
        self.image_size >= 1, f"data.image_size={self.image_size} must be >= 1"
    )
    check(
        self.eval_resize == 0 or self.eval_resize >= self.image_size,
        f"data.eval_resize={self.eval_resize} must be 0 or >= "
        f"data.image_size={self.image_size}",
    )
    check(
        0.0 < self.crop_area_min <= 1.0,
        f"data.crop_area_min={self.crop_area_min} must be in (0, 1]",
    )
    check(
        self.randaug_layers >= 0,
        f"data.randaug_layers={self.randaug_layers} must be >= 0",
    )
    check(
        self.mixup_alpha >= 0,
        f"data.mixup_alpha={self.mixup_alpha} must be >= 0",
    )


def prepared_builder(config: Config) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder, or a ConfigError saying how to prepare it."""
  try:
    builder = tfds.builder(config.dataset, data_dir=config.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise run_config.ConfigError(
        f"data.dataset={config.dataset!r} is not a TFDS dataset"
    ) from None
  hint = _PREPARE_HINT.get(
      config.dataset, f"tfds build {config.dataset} --data_dir=DIR"
  )
  run_config.check(
      builder.is_prepared(),
      f"data.dataset={config.dataset!r} is not prepared in "
      f"{builder.data_dir} (data.data_dir={config.data_dir!r}); nothing is "
      f"downloaded at run time; prepare it with: {hint}",
  )
  return builder


def _load(builder, config: Config, split: str) -> dict[str, np.ndarray]:
  run_config.check(
      split in builder.info.splits,
      f"data split {split!r} is not one of "
      f"{sorted(builder.info.splits)} of {config.dataset}",
  )
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  return {
      "image": data[config.image_key],
      "label": data[config.label_key].astype(np.int32),
  }


def augment(image, seeds, config: Config) -> tf.Tensor:
  """Flip and RandAugment a cropped uint8 image, then scale to [-1, 1].

  `seeds` holds two stateless seeds, one per random op.
  """
  if config.flip:
    image = image_ops.random_flip(image, seeds[0])
  if config.randaug_layers:
    image = image_ops.randaugment(
        image, config.randaug_layers, config.randaug_magnitude, seeds[1]
    )
  return image_ops.value_range(image)


def eval_image(image, config: Config) -> tf.Tensor:
  """Eval preprocessing: resize (short side), centre crop, [-1, 1]."""
  size = config.eval_resize or config.image_size
  image = image_ops.central_crop(
      image_ops.resize_small(image, size), config.image_size
  )
  return image_ops.value_range(image)


class Source(data_lib.HostSource):
  """Augmented training batches and the eval split, from host memory."""

  def __init__(self, config: Config, **kwargs):
    super().__init__(config, **kwargs)
    builder = prepared_builder(config)
    features = builder.info.features
    for key in (config.image_key, config.label_key):
      run_config.check(
          key in features,
          f"data.{'image' if key == config.image_key else 'label'}"
          f"_key={key!r} is not a feature of {config.dataset}: "
          f"{sorted(features.keys())}",
      )
    shape = features[config.image_key].shape
    run_config.check(
        None not in shape[:2],
        f"data.dataset={config.dataset!r} has variable-size images; this "
        "in-memory source serves fixed-size datasets only",
    )
    self.num_classes = features[config.label_key].num_classes
    self.input_shape = (config.image_size, config.image_size, 3)
    self._train = _load(builder, config, config.train_split)
    self._eval_split = _load(builder, config, config.eval_split)

  def _augment(self, image, seed):
    cfg = self.config
    seeds = tf.random.experimental.stateless_split(seed, 3)
    image = tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image
    if cfg.crop_area_min < 1.0:
      image = image_ops.inception_crop(
          image, cfg.image_size, seeds[0], area_min=cfg.crop_area_min
      )
    else:
      image = tf.cast(tf.image.resize(image, (cfg.image_size,) * 2), tf.uint8)
    return augment(image, seeds[1:], cfg)

  def train_batch(self, step: int, local_batch: int) -> dict[str, np.ndarray]:
    """This process's slice of the global batch of step `step`."""
    total = len(self._train["label"])
    start = (step * self.process_count + self.process_index) * local_batch
    positions = np.arange(start, start + local_batch)
    epochs = positions // total
    index = np.empty_like(positions)
    for epoch in np.unique(epochs):
      perm = np.random.default_rng([self.seed, 7, int(epoch)]).permutation(
          total
      )
      chosen = epochs == epoch
      index[chosen] = perm[positions[chosen] % total]
    seeds = np.stack([np.full_like(positions, self.seed), positions], -1)
    dataset = (
        tf.data.Dataset.from_tensor_slices(
            (self._train["image"][index], seeds.astype(np.int64))
        )
        .map(
            self._augment,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(local_batch)
    )
    images = next(iter(dataset))
    labels = self._train["label"][index]
    if self.config.mixup_alpha > 0:
      onehot = tf.one_hot(labels, self.num_classes)
      images, labels = image_ops.mixup(
          images,
          onehot,
          self.config.mixup_alpha,
          tf.constant([self.seed, start], tf.int64),
      )
      labels = labels.numpy()
    return {"inputs": images.numpy(), "label": labels}

  def eval_set(self) -> dict[str, np.ndarray]:
    """The whole eval split: resize (short side), centre crop, [-1, 1]."""

    def prepare(image):
      image = (
          tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image
      )
      return eval_image(image, self.config)

    dataset = (
        tf.data.Dataset.from_tensor_slices(self._eval_split["image"])
        .map(prepare)
        .batch(1024)
    )
    images = np.concatenate([b.numpy() for b in dataset])
    return {"inputs": images, "label": self._eval_split["label"]}
