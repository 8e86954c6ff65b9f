"""Pointer-value retrieval with hops (Zhang et al. 2021; Hyper-UT's C-PVR).

An example is a sequence x of S values in [0, S) and a hop count h. Start at
position 0 and follow h pointers, p_0 = 0 and p_j = x[p_{j-1}]; the label is
the value found there, x[p_h]. The number of hops is the complexity axis:
training uses h in [1, train_hops] and the fixed eval set h in
[1, eval_hops], so that eval can ask for more hops than training saw. The
hop count is part of the input: token 0 is one-hot(S + h), tokens 1..S are
one-hot(x_i), over a vocabulary of S + eval_hops + 1 symbols.

Deterministic like parity: every global batch is a pure function of
(seed, split, step), and each process takes its slice.
"""

import dataclasses

import numpy as np

from adatape import data as data_lib
from adatape import run_config

_SPLIT_IDS = {"train": 0, "eval": 1}


@dataclasses.dataclass(frozen=True)
class Config:
  """`data.*` keys for PVR.

  Attributes:
    name: "pvr".
    seq_len: S, the number of values (and of addressable positions).
    train_hops: largest hop count in training.
    eval_hops: largest hop count in the eval set (>= train_hops).
    eval_examples: size of the fixed eval set.
  """

  name: str = "pvr"
  seq_len: int = 16
  train_hops: int = 3
  eval_hops: int = 6
  eval_examples: int = 4096

  def __post_init__(self):
    check = run_config.check
    check(self.seq_len >= 2, f"data.seq_len={self.seq_len} must be >= 2")
    check(
        self.train_hops >= 1, f"data.train_hops={self.train_hops} must be >= 1"
    )
    check(
        self.eval_hops >= self.train_hops,
        f"data.eval_hops={self.eval_hops} must be >= data.train_hops="
        f"{self.train_hops}",
    )
    check(
        self.eval_examples >= 1,
        f"data.eval_examples={self.eval_examples} must be >= 1",
    )


def follow(values_BxS: np.ndarray, hops_B: np.ndarray) -> np.ndarray:
  """The label x[p_h] of each example, following its pointers."""
  rows = np.arange(values_BxS.shape[0])
  position = np.zeros_like(hops_B)
  for hop in range(int(hops_B.max(initial=0))):
    moving = hop < hops_B
    position = np.where(moving, values_BxS[rows, position], position)
  return values_BxS[rows, position].astype(np.int32)


def sample(
    rng: np.random.Generator, batch_size: int, config: Config, max_hops: int
) -> dict[str, np.ndarray]:
  """Draws examples with hop counts uniform in [1, max_hops]."""
  s = config.seq_len
  values = rng.integers(0, s, size=(batch_size, s), dtype=np.int32)
  hops = rng.integers(1, max_hops + 1, size=(batch_size,), dtype=np.int32)
  vocab = s + config.eval_hops + 1
  tokens = np.concatenate([(s + hops)[:, None], values], axis=1)
  return {
      "inputs": np.eye(vocab, dtype=np.float32)[tokens],
      "label": follow(values, hops),
      "hops": hops,
  }


def _rng(seed: int, split: str, step: int) -> np.random.Generator:
  key = np.random.SeedSequence([seed, _SPLIT_IDS[split], step, 1])
  return np.random.Generator(np.random.Philox(key))


class Source(data_lib.HostSource):
  """Per-process PVR batches, with the trainer's data-source interface."""

  def __init__(self, config: Config, **kwargs):
    super().__init__(config, **kwargs)
    self.input_shape = (
        config.seq_len + 1,
        config.seq_len + config.eval_hops + 1,
    )
    self.num_classes = config.seq_len

  def train_batch(self, step: int, local_batch: int) -> dict[str, np.ndarray]:
    """This process's slice of the global batch of training step `step`."""
    batch = sample(
        _rng(self.seed, "train", step),
        local_batch * self.process_count,
        self.config,
        self.config.train_hops,
    )
    del batch["hops"]
    return data_lib.process_slice(batch, local_batch, self.process_index)

  def eval_set(self) -> dict[str, np.ndarray]:
    """The fixed eval set, hop counts in [1, eval_hops]."""
    return sample(
        _rng(self.seed, "eval", 0),
        self.config.eval_examples,
        self.config,
        self.config.eval_hops,
    )
