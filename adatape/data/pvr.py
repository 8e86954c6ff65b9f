"""Pointer-value retrieval with hops (Zhang et al. 2021; Hyper-UT's C-PVR).

An example is a sequence x of S values in [0, S) and a hop count h. Start at
position 0 and follow h pointers, p_0 = 0 and p_j = x[p_{j-1}]; the label is
the value found there, x[p_h]. The number of hops is the complexity axis:
training uses h in [1, train_hops] and the fixed eval set h in
[1, eval_hops], so that eval can ask for more hops than training saw.

Chains without cycles. Values drawn uniformly make chains fall into cycles,
and then the h-hop label often equals a shorter chase's (at S = 8, the 4-
to 6-hop labels equal the 3-hop one 39-67% of the time), so a "more hops"
row would measure a shorter chase. Here the chain p_1..p_h visits distinct
positions other than 0, and the label x[p_h] is drawn from the values that
are not on it, so for every j < h the j-hop answer x[p_j] = p_{j+1} differs
from the h-hop label by construction. Positions off the chain hold uniform
values. This needs S >= eval_hops + 2 (two label choices at the most hops).

Hop encoding. Tokens 0..S-1 are one-hot(x_i), so a pointer is a token
position; they are followed by eval_hops marker tokens, the first h of them
HOP and the rest BLANK (vocabulary: the S values, HOP, BLANK). An unseen
count is more markers, each made of symbols and positions seen in
training (HOP, and a marker position that held BLANK), rather than a
symbol never seen, so a model can extend a count it learned by counting.

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
        self.seq_len >= self.eval_hops + 2,
        f"data.seq_len={self.seq_len} must be >= data.eval_hops + 2 = "
        f"{self.eval_hops + 2} (a chain of distinct positions, and two "
        "label choices at the most hops)",
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


def chains(
    rng: np.random.Generator, seq_len: int, hops_B: np.ndarray
) -> np.ndarray:
  """Values whose pointer chain from position 0 has no cycle for h hops and
  whose h-hop label differs from every shorter chase's answer."""
  batch = hops_B.shape[0]
  values = rng.integers(0, seq_len, size=(batch, seq_len), dtype=np.int32)
  for b, h in enumerate(hops_B):
    # p_1..p_h: distinct positions other than 0, a random order of them.
    path = 1 + rng.permutation(seq_len - 1)[:h]
    values[b, np.concatenate([[0], path[:-1]])] = path
    # The label x[p_h]: any value not on the chain p_1..p_h.
    free = np.setdiff1d(np.arange(seq_len), path)
    values[b, path[-1]] = free[rng.integers(0, free.size)]
  return values


def sample(
    rng: np.random.Generator, batch_size: int, config: Config, max_hops: int
) -> dict[str, np.ndarray]:
  """Draws examples with hop counts uniform in [1, max_hops]."""
  s = config.seq_len
  hops = rng.integers(1, max_hops + 1, size=(batch_size,), dtype=np.int32)
  values = chains(rng, s, hops)
  hop, blank = s, s + 1
  markers = np.where(
      np.arange(config.eval_hops)[None] < hops[:, None], hop, blank
  )
  tokens = np.concatenate([values, markers], axis=1)
  return {
      "inputs": np.eye(s + 2, dtype=np.float32)[tokens],
      "label": follow(values, hops),
      "hops": hops,
      "values": values,
  }


def _rng(seed: int, split: str, step: int) -> np.random.Generator:
  key = np.random.SeedSequence([seed, _SPLIT_IDS[split], step, 1])
  return np.random.Generator(np.random.Philox(key))


class Source(data_lib.HostSource):
  """Per-process PVR batches, with the trainer's data-source interface."""

  def __init__(self, config: Config, **kwargs):
    super().__init__(config, **kwargs)
    self.input_shape = (config.seq_len + config.eval_hops, config.seq_len + 2)
    self.num_classes = config.seq_len

  def train_batch(self, step: int, local_batch: int) -> dict[str, np.ndarray]:
    """This process's slice of the global batch of training step `step`."""
    batch = sample(
        _rng(self.seed, "train", step),
        local_batch * self.process_count,
        self.config,
        self.config.train_hops,
    )
    del batch["hops"], batch["values"]
    return data_lib.process_slice(batch, local_batch, self.process_index)

  def eval_set(self) -> dict[str, np.ndarray]:
    """The fixed eval set, hop counts in [1, eval_hops]."""
    return sample(
        _rng(self.seed, "eval", 0),
        self.config.eval_examples,
        self.config,
        self.config.eval_hops,
    )
