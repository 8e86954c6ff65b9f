"""Parity data, generated on the host (the official `parity_dataset.py`
task, seeded from the config).

Two variants:
  uniform  every element i.i.d. uniform in {+1, 0, -1} (the official AdaTape
           task); label = parity of the number of +1s.
  graves   a uniformly random number k in [1, S] of positions hold +1 or -1,
           the rest 0 (Graves 2016 / PonderNet); same label.

Inputs are one-hot `[S, 3]` with index 0 <-> -1, 1 <-> 0, 2 <-> +1.

Every global batch is a pure function of (seed, split, step), drawn from its
own numpy Philox stream, and each process takes its slice (by process
index). So a resumed run sees exactly the batches an uninterrupted run
would, no two processes, steps or splits share examples, and the data do
not depend on how devices are spread over processes. The eval set is fixed:
the same examples at every eval.
"""

import dataclasses

import numpy as np

from adatape import data as data_lib
from adatape import run_config

VARIANTS = ("uniform", "graves")
_SPLIT_IDS = {"train": 0, "eval": 1}


@dataclasses.dataclass(frozen=True)
class Config:
  """`data.*` keys for parity.

  Attributes:
    name: "parity".
    seq_len: S, the number of elements.
    variant: "uniform" or "graves".
    eval_examples: size of the fixed eval set.
  """

  name: str = "parity"
  seq_len: int = 32
  variant: str = "uniform"
  eval_examples: int = 4096

  def __post_init__(self):
    run_config.check(
        self.seq_len >= 1, f"data.seq_len={self.seq_len} must be >= 1"
    )
    run_config.check_choice("data.variant", self.variant, VARIANTS)
    run_config.check(
        self.eval_examples >= 1,
        f"data.eval_examples={self.eval_examples} must be >= 1",
    )


def sample(
    rng: np.random.Generator, batch_size: int, seq_len: int, variant: str
) -> dict[str, np.ndarray]:
  """Draws `batch_size` examples: inputs `[B, S, 3]`, label, values `[B, S]`."""
  if variant == "uniform":
    values = rng.integers(-1, 2, size=(batch_size, seq_len), dtype=np.int8)
  else:
    signs = rng.choice(np.array([-1, 1], np.int8), size=(batch_size, seq_len))
    nonzero = rng.integers(1, seq_len + 1, size=(batch_size, 1))
    # A random permutation rank per position; the k lowest are non-zero.
    ranks = np.argsort(rng.random((batch_size, seq_len)), axis=1)
    values = np.where(ranks < nonzero, signs, 0).astype(np.int8)
  label = (np.sum(values == 1, axis=1) % 2).astype(np.int32)
  inputs = np.eye(3, dtype=np.float32)[values + 1]
  return {"inputs": inputs, "label": label, "values": values}


def _rng(seed: int, split: str, step: int) -> np.random.Generator:
  # The trailing 0 is where the process index stood before batches became
  # independent of the process layout; it keeps single-process streams (and
  # the results recorded with them) unchanged.
  key = np.random.SeedSequence([seed, _SPLIT_IDS[split], step, 0])
  return np.random.Generator(np.random.Philox(key))


class Source(data_lib.HostSource):
  """Per-process parity batches for the trainer.

  Attributes:
    input_shape: shape of one example's input.
    num_classes: 2.
  """

  num_classes = 2

  def __init__(self, config: Config, **kwargs):
    super().__init__(config, **kwargs)
    self.input_shape = (config.seq_len, 3)

  def train_batch(self, step: int, local_batch: int) -> dict[str, np.ndarray]:
    """This process's slice of the global batch of training step `step`.

    The global batch depends only on (seed, step), so a run on 2 processes
    trains on exactly the data of a run on 1 process with 2 devices.
    Generating the whole batch on every host is cheap for synthetic data.
    """
    rng = _rng(self.seed, "train", step)
    batch = sample(
        rng,
        local_batch * self.process_count,
        self.config.seq_len,
        self.config.variant,
    )
    del batch["values"]
    return data_lib.process_slice(batch, local_batch, self.process_index)

  def eval_set(self) -> dict[str, np.ndarray]:
    """The whole fixed eval set (identical on every process)."""
    rng = _rng(self.seed, "eval", 0)
    return sample(
        rng, self.config.eval_examples, self.config.seq_len, self.config.variant
    )
