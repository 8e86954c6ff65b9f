r"""The handwritten digits that ship with scikit-learn, as a local TFDS dataset.

A real image-classification dataset available offline, for CPU learning
checks of the image models: 1797 8x8 grey digits (values 0-16), scaled to
0-255 and upsampled 4x (nearest) to 32x32 RGB. A fixed shuffle splits them
into 1500 train and 297 test images. Built with TFDS's own machinery
(`tfds.builder("adatape_digits")` finds it once this module is imported),
so the image source reads it exactly as it reads CIFAR or ImageNet.

  python -m adatape.data.digits_builder --data_dir=~/tensorflow_datasets
"""

import argparse

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1500


class AdatapeDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's digits, 32x32 RGB, 1500 train / 297 test."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "scikit-learn load_digits, 4x nearest upsample."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn's handwritten digits, 32x32 RGB.",
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(32, 32, 3)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }
        ),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded: scikit-learn ships the data.
    from sklearn import datasets  # pylint: disable=g-import-not-at-top

    digits = datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    images = (digits.images[order] * (255.0 / 16.0)).round().astype(np.uint8)
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)
    images = np.repeat(images[..., None], 3, axis=-1)
    labels = digits.target[order].astype(np.int64)
    return {
        "train": self._generate_examples(
            images[:NUM_TRAIN], labels[:NUM_TRAIN]
        ),
        "test": self._generate_examples(images[NUM_TRAIN:], labels[NUM_TRAIN:]),
    }

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": label}


def prepare(data_dir: str) -> str:
  """Builds the dataset under `data_dir`; returns the dataset's folder."""
  builder = AdatapeDigits(data_dir=data_dir)
  builder.download_and_prepare()
  return builder.data_dir


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True)
  args = parser.parse_args()
  print(f"prepared {prepare(args.data_dir)}")


if __name__ == "__main__":
  main()
