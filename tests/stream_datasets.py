"""Small TFDS datasets for the streamed-source tests, built locally.

`imagenet2012` is built by TFDS's own builder from a manual dir of
generated JPEG tars in ImageNet's layout (train: a tar of per-synset tars;
val: a flat tar), in both file formats; a JFT-style multi-label dataset is
built by a small builder defined here. Nothing is downloaded. Both
`test_stream.py` (the source) and `test_stream_training.py` (runs on it)
prepare them, so that the two files can run on different workers.
"""

import io
import os
import tarfile

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

SYNSETS = ("n01440764", "n01443537", "n01484850")
PER_SYNSET = 6  # 18 train images; 2 processes read 9 each.
VAL = 11  # Uneven: 6 + 5 over 2 processes, 4 + 2 / 4 + 1 in batches of 4.
JFT_CLASSES = 12


def _jpeg(rng) -> bytes:
  h, w = rng.integers(36, 72, 2)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  return tf.io.encode_jpeg(image).numpy()


def _add(tar, name: str, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _imagenet_manual_dir(path: str) -> str:
  """ILSVRC2012_img_{train,val}.tar with generated JPEGs of random sizes."""
  rng = np.random.default_rng(0)
  os.makedirs(path)
  with tarfile.open(
      os.path.join(path, "ILSVRC2012_img_train.tar"), "w"
  ) as outer:
    for synset in SYNSETS:
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for i in range(PER_SYNSET):
          _add(inner, f"{synset}_{i}.JPEG", _jpeg(rng))
      _add(outer, f"{synset}.tar", inner_bytes.getvalue())
  with tarfile.open(os.path.join(path, "ILSVRC2012_img_val.tar"), "w") as t:
    for i in range(VAL):
      _add(t, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(rng))
  return path


class FakeJft(tfds.core.GeneratorBasedBuilder):
  """A JFT-shaped dataset: JPEGs with a set of 1-3 labels each."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "labels": tfds.features.Sequence(
                    tfds.features.ClassLabel(num_classes=JFT_CLASSES)
                ),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
        "train": self._generate_examples(24, 1),
        "validation": self._generate_examples(7, 2),
    }

  def _generate_examples(self, count, seed):  # pylint: disable=arguments-differ
    rng = np.random.default_rng(seed)
    for i in range(count):
      labels = rng.choice(JFT_CLASSES, rng.integers(1, 4), replace=False)
      yield i, {"image": _jpeg(rng), "labels": sorted(labels.tolist())}


def prepare(root: str) -> dict[str, str]:
  """{"tfrecord": dir, "array_record": dir, "jft": dir} under `root`."""
  manual = _imagenet_manual_dir(os.path.join(root, "manual"))
  dirs = {}
  for file_format in ("tfrecord", "array_record"):
    dirs[file_format] = os.path.join(root, file_format)
    tfds.builder(
        "imagenet2012", data_dir=dirs[file_format], file_format=file_format
    ).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual)
    )
  dirs["jft"] = os.path.join(root, "jft")
  FakeJft(data_dir=dirs["jft"]).download_and_prepare()
  return dirs
