"""Large TFDS image datasets, streamed from disk: ImageNet-1K, JFT-style.

`data.name=stream` reads any prepared TFDS image-classification dataset,
`imagenet2012` from its manual-download directory included, without
holding it in memory. Each process reads its own part of each split
(`tfds.even_splits`), so hosts never read the same file bytes; the mesh
assembles the global batch from the processes' slices.

Training is a stream over epochs of the process's part. It is a pure
function of (seed, process index, step), which is what makes resume exact:
- TFRecord datasets (TFDS's default format) are read in file order and
  shuffled with a buffer whose seed is a function of the epoch; a run that
  resumes at step s rebuilds the stream and skips the records before
  position s * local_batch of that epoch (raw records, not decoded: the
  cost is reading at most one epoch of this process's part once).
- ArrayRecord datasets (`tfds build --file_format=array_record`) are read
  by random access in a per-epoch permutation (`index_shuffle`), so resume
  reads nothing extra.
Each example's augmentation seed is (seed, process index, position), and
mixup's is (seed, process index, step).

Labels: a `ClassLabel` is a class index (one-hot when mixup is on); a
sequence of class ids or a multi-hot vector is a multi-label target
(JFT-style, with `loss=sigmoid_xent`).

Eval reads the whole eval split: every process its part, padded to the
same number of batches with a `mask`, so every example counts once.
"""

import dataclasses
import math
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from adatape import data as data_lib
from adatape import run_config
from adatape.data import image_ops
from adatape.data import images

# Far beyond any run: the training stream is infinite in practice.
_FOREVER = 2**62


@dataclasses.dataclass(frozen=True)
class Config(images.Config):
  """`data.*` keys for streamed datasets (the official ImageNet recipe).

  The keys of the in-memory source (`images.py`) apply, with ImageNet
  defaults, plus:

  Attributes:
    num_classes: the label count, for a label feature that does not carry
      one (a plain integer or integer-list tensor); 0: from the feature.
    shuffle_buffer: records in each process's shuffle buffer (TFRecord
      datasets; the official config: 250,000 per host).
    prefetch: batches prepared ahead of the trainer.
  """

  name: str = "stream"
  dataset: str = "imagenet2012"
  eval_split: str = "validation"
  image_size: int = 224
  eval_resize: int = 256
  randaug_layers: int = 2
  mixup_alpha: float = 0.5
  num_classes: int = 0
  shuffle_buffer: int = 250_000
  prefetch: int = 2

  def __post_init__(self):
    super().__post_init__()
    check = run_config.check
    check(
        self.num_classes >= 0,
        f"data.num_classes={self.num_classes} must be >= 0",
    )
    check(
        self.shuffle_buffer >= 1,
        f"data.shuffle_buffer={self.shuffle_buffer} must be >= 1",
    )
    check(self.prefetch >= 1, f"data.prefetch={self.prefetch} must be >= 1")


def label_kind(feature: Any, num_classes: int) -> tuple[int, str]:
  """(class count, "index" | "ids" | "multi_hot") of a label feature."""
  if isinstance(feature, tfds.features.ClassLabel):
    count, kind = feature.num_classes, "index"
  elif isinstance(feature, tfds.features.Sequence) and isinstance(
      feature.feature, tfds.features.ClassLabel
  ):
    count, kind = feature.feature.num_classes, "ids"
  elif isinstance(feature, tfds.features.Tensor):
    shape, dtype = tuple(feature.shape), np.dtype(feature.np_dtype)
    run_config.check(
        len(shape) <= 1,
        f"data.label_key names a tensor of shape {shape}; labels must be a "
        "class index, a list of class ids or a multi-hot vector",
    )
    if not shape:
      count, kind = 0, "index"
    elif shape[0] is None:
      count, kind = 0, "ids"
    else:
      count, kind = shape[0], "multi_hot"
    run_config.check(
        kind == "multi_hot" or np.issubdtype(dtype, np.integer),
        f"data.label_key names a {dtype} tensor; class ids " "must be integers",
    )
  else:
    raise run_config.ConfigError(
        f"data.label_key names a {type(feature).__name__} feature; labels "
        "must be a ClassLabel, a Sequence of ClassLabel or a tensor"
    )
  run_config.check(
      not (count and num_classes and count != num_classes),
      f"data.num_classes={num_classes} but the label feature has {count} "
      "classes (set data.num_classes=0)",
  )
  count = count or num_classes
  run_config.check(
      count > 0,
      "data.num_classes must be set: the label feature does not "
      "say how many classes there are",
  )
  return count, kind


class Source(data_lib.Source):
  """Streamed, augmented training batches and the padded eval split."""

  def __init__(
      self, config: Config, *, seed: int, process_index: int, process_count: int
  ):
    super().__init__(
        config,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    builder = images.prepared_builder(config)
    self._builder = builder
    features = builder.info.features
    for which in ("image", "label"):
      key = getattr(config, f"{which}_key")
      run_config.check(
          key in features,
          f"data.{which}_key={key!r} is not a feature of "
          f"{config.dataset}: {sorted(features.keys())}",
      )
    image = features[config.image_key]
    run_config.check(
        isinstance(image, tfds.features.Image),
        f"data.image_key={config.image_key!r} is not an image "
        f"feature of {config.dataset}",
    )
    self._jpeg = image.encoding_format == "jpeg"
    self.num_classes, self._label_kind = label_kind(
        features[config.label_key], config.num_classes
    )
    self.multi_label = self._label_kind != "index"
    self.input_shape = (config.image_size, config.image_size, 3)
    self._array_record = (
        builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    )
    self._train_splits = self._parts(config.train_split)
    self._eval_splits = self._parts(config.eval_split)
    self._train_count = self._count(self._train_splits[process_index])
    run_config.check(
        self._train_count > 0,
        f"data.train_split={config.train_split!r} leaves process "
        f"{process_index} of {process_count} no examples",
    )
    self._eval_counts = [self._count(s) for s in self._eval_splits]
    self._iterator = None
    self._next = None

  def _parts(self, split: str) -> list[Any]:
    run_config.check(
        split.split("[")[0] in self._builder.info.splits,
        f"data split {split!r} is not one of "
        f"{sorted(self._builder.info.splits)} of {self.config.dataset}",
    )
    return tfds.even_splits(split, n=self.process_count)

  def _count(self, split: Any) -> int:
    return self._builder.info.splits[split].num_examples

  # Reading: (encoded image, raw label) records in a fixed order.

  def _decoders(self):
    return {self.config.image_key: tfds.decode.SkipDecoding()}

  def _tfrecord(self, split: Any) -> tf.data.Dataset:
    dataset = self._builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders=self._decoders(),
        read_config=tfds.ReadConfig(add_tfds_id=False),
    )
    keys = (self.config.image_key, self.config.label_key)
    return dataset.map(lambda ex: tuple(ex[k] for k in keys))

  def _random_access(self, split: Any):
    """A function: index tensor -> record, over an ArrayRecord split."""
    source = self._builder.as_data_source(
        split=split, decoders=self._decoders()
    )
    keys = (self.config.image_key, self.config.label_key)
    label_dtype = tf.int64 if self._label_kind != "multi_hot" else tf.float32

    def fetch(index):
      example = source[int(index)]
      return (
          np.asarray(example[keys[0]], object),
          np.asarray(example[keys[1]]).astype(label_dtype.as_numpy_dtype),
      )

    def read(index):
      data, label = tf.numpy_function(
          fetch, [index], (tf.string, label_dtype), stateful=False
      )
      data.set_shape([])
      return data, label

    return read

  def _train_records(self, start: int) -> tf.data.Dataset:
    """Records at this process's stream positions start, start + 1, ..."""
    split = self._train_splits[self.process_index]
    count = self._train_count
    if self._array_record:
      read = self._random_access(split)
      seed = tf.constant([self.seed, self.process_index], tf.int64)

      def record(position):
        epoch_seed = tf.random.experimental.stateless_fold_in(
            seed, position // count
        )
        index = tf.random.experimental.index_shuffle(
            position % count, epoch_seed, tf.constant(count - 1, tf.int64)
        )
        return read(index)

      return tf.data.Dataset.range(start, _FOREVER).map(
          record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
      )
    records = self._tfrecord(split)
    # One shuffle seed per (seed, process, epoch): int64 arithmetic.
    base = (self.seed * 100_003 + self.process_index) * 2**20
    epoch0, offset = divmod(start, count)
    return (
        tf.data.Dataset.range(epoch0, _FOREVER)
        .flat_map(
            lambda epoch: records.shuffle(
                self.config.shuffle_buffer,
                seed=base + epoch,
                reshuffle_each_iteration=False,
            )
        )
        .skip(offset)
    )

  # Preprocessing.

  def _target(self, label: tf.Tensor) -> tf.Tensor:
    if self._label_kind == "index":
      return tf.cast(label, tf.int32)
    if self._label_kind == "ids":
      hits = tf.one_hot(tf.reshape(label, [-1]), self.num_classes)
      return tf.minimum(tf.reduce_sum(hits, 0), 1.0)
    return tf.reshape(tf.cast(label, tf.float32), [self.num_classes])

  def _train_example(self, position, record):
    cfg = self.config
    data, label = record
    seed = tf.random.experimental.stateless_fold_in(
        tf.constant([self.seed, self.process_index], tf.int64), position
    )
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if cfg.crop_area_min < 1.0:
      image = image_ops.decode_inception_crop(
          data, cfg.image_size, seeds[0], self._jpeg, area_min=cfg.crop_area_min
      )
    else:
      image = tf.cast(
          tf.image.resize(image_ops.decode(data), (cfg.image_size,) * 2),
          tf.uint8,
      )
    return images.augment(image, seeds[1:], cfg), self._target(label)

  def _mixup(self, step, batch):
    inputs, labels = batch
    if self._label_kind == "index":
      labels = tf.one_hot(labels, self.num_classes)
    seed = tf.random.experimental.stateless_fold_in(
        tf.constant([self.seed + 1, self.process_index], tf.int64), step
    )
    return image_ops.mixup(inputs, labels, self.config.mixup_alpha, seed)

  def train_dataset(self, start_step: int, local_batch: int) -> tf.data.Dataset:
    """This process's batches from step `start_step` on."""
    start = start_step * local_batch
    dataset = (
        self._train_records(start)
        .enumerate(start)
        .map(
            self._train_example,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(local_batch, drop_remainder=True)
    )
    if self.config.mixup_alpha > 0:
      dataset = dataset.enumerate(start_step).map(self._mixup)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(self.config.prefetch)

  def train_batch(self, step: int, local_batch: int) -> dict[str, np.ndarray]:
    """This process's slice of the global batch of step `step`.

    Consecutive steps come from one open stream; any other step (a resume)
    reopens the stream there.
    """
    if self._next != (step, local_batch):
      self._iterator = self.train_dataset(step, local_batch).as_numpy_iterator()
    inputs, labels = next(self._iterator)
    self._next = (step + 1, local_batch)
    return {"inputs": inputs, "label": labels}

  def eval_batches(self, local_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's part of the eval split, padded, with a `mask` key.

    Every process yields ceil(largest part / local_batch) batches, the
    count collectives need; padding rows have mask 0.
    """
    split = self._eval_splits[self.process_index]
    count = self._eval_counts[self.process_index]
    if self._array_record:
      records = tf.data.Dataset.range(count).map(
          self._random_access(split),
          num_parallel_calls=tf.data.AUTOTUNE,
          deterministic=True,
      )
    else:
      records = self._tfrecord(split).take(count)

    def prepare(data, label):
      return (
          images.eval_image(image_ops.decode(data), self.config),
          self._target(label),
      )

    batches = (
        records.map(
            prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        .batch(local_batch)
        .prefetch(2)
    )
    label_shape = () if self._label_kind == "index" else (self.num_classes,)
    label_dtype = np.int32 if self._label_kind == "index" else np.float32
    seen = 0
    for inputs, labels in batches.as_numpy_iterator():
      n = len(inputs)
      seen += n
      yield {
          "inputs": _pad(inputs, local_batch),
          "label": _pad(labels, local_batch),
          "mask": (np.arange(local_batch) < n).astype(np.float32),
      }
    if seen != count:
      raise RuntimeError(
          f"{self.config.dataset} {split} gave {seen} examples; its "
          f"metadata says {count}: the prepared files are incomplete"
      )
    for _ in range(
        math.ceil(max(self._eval_counts) / local_batch)
        - math.ceil(count / local_batch)
    ):
      yield {
          "inputs": np.zeros((local_batch,) + self.input_shape, np.float32),
          "label": np.zeros((local_batch,) + label_shape, label_dtype),
          "mask": np.zeros((local_batch,), np.float32),
      }


def _pad(x: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([x, np.zeros((rows - len(x),) + x.shape[1:], x.dtype)])
