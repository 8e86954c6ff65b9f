"""Data sources, chosen by module name: `data.name=parity` is `data/parity.py`.

A data module defines a frozen `Config` dataclass for the `data.*` keys and
a `Source(config, *, seed, process_index, process_count)`, a subclass of
`Source` below: `HostSource` for data generated or held on the host, or
`Source` itself for data streamed from disk (`stream.py`).
"""

import abc
import collections
import concurrent.futures
import importlib
import pkgutil
from typing import Any, Callable, Iterator

import ml_collections
import numpy as np

from adatape import run_config

# Modules here that are helpers of sources, not sources.
_NOT_SOURCES = ("image_ops", "digits_builder")


def available() -> list[str]:
  return sorted(
      m.name
      for m in pkgutil.iter_modules(__path__)
      if m.name not in _NOT_SOURCES
  )


# What the image sources need beyond the core install.
_IMAGE_PACKAGES = ("tensorflow", "tensorflow_datasets", "sklearn")


def import_source(name: str) -> Any:
  """The module of data source `name`; a source whose packages are not
  installed (the image sources need the `images` extra) is a ConfigError
  saying what to install."""
  try:
    return importlib.import_module(f"adatape.data.{name}")
  except ModuleNotFoundError as e:
    if e.name and e.name.split(".")[0] in _IMAGE_PACKAGES:
      raise run_config.ConfigError(
          f"data.name={name!r} needs {e.name}, which is not installed: "
          "pip install -e '.[images]'"
      ) from None
    raise


def create(
    config: ml_collections.ConfigDict, *, process_index: int, process_count: int
) -> Any:
  """Builds the data source named by `config.data.name`."""
  name = config.data.name
  run_config.check_choice("data.name", name, tuple(available()))
  module = import_source(name)
  data_config = run_config.to_dataclass(module.Config, config.data, "data")
  return module.Source(
      data_config,
      seed=config.seed,
      process_index=process_index,
      process_count=process_count,
  )


def prefetch(
    produce: Callable[[int], Any], start: int, stop: int, depth: int = 2
) -> Iterator[Any]:
  """`produce(step)` for step = start, ..., stop - 1, computed up to
  `depth` steps ahead on a background thread.

  The trainer's batches (host-side generation or decoding, then the copy to
  the devices) are made while the devices run earlier steps, including
  while the loop waits on a logged metric. Close the generator to stop.
  """
  pool = concurrent.futures.ThreadPoolExecutor(1)
  pending = collections.deque()
  step = start
  try:
    while step < stop or pending:
      while step < stop and len(pending) < depth:
        pending.append(pool.submit(produce, step))
        step += 1
      yield pending.popleft().result()
  finally:
    for future in pending:
      future.cancel()
    pool.shutdown(wait=True)


def process_slice(
    batch: dict[str, np.ndarray], local_batch: int, process_index: int
) -> dict[str, np.ndarray]:
  """This process's rows of a global batch."""
  start = process_index * local_batch
  return {k: v[start : start + local_batch] for k, v in batch.items()}


def padded_eval_batches(
    data: dict[str, np.ndarray],
    local_batch: int,
    process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:
  """A process's share of a fixed eval set, padded, with a `mask` key.

  Every process yields the same number of batches (collectives need it);
  padding rows have mask 0, so masked sums over all processes count every
  example exactly once.
  """
  (total,) = {len(v) for v in data.values()}
  global_batch = local_batch * process_count
  for b in range(-(-total // global_batch)):
    start = b * global_batch + process_index * local_batch
    index = np.arange(start, start + local_batch)
    valid = index < total
    batch = {k: v[np.where(valid, index, 0)] for k, v in data.items()}
    batch["mask"] = valid.astype(np.float32)
    yield batch


class Source(abc.ABC):
  """What the trainer needs of a data source.

  Attributes (set by subclasses):
    config: the source's typed `data.*` section.
    input_shape: the shape of one example.
    num_classes: the classifier's output count.
  """

  config: Any
  input_shape: tuple[int, ...]
  num_classes: int

  def __init__(
      self, config: Any, *, seed: int, process_index: int, process_count: int
  ):
    self.config = config
    self.seed = seed
    self.process_index = process_index
    self.process_count = process_count

  @abc.abstractmethod
  def train_batch(self, step: int, local_batch: int) -> dict[str, np.ndarray]:
    """This process's slice of the global batch of step `step`: `inputs`
    and `label`. A pure function of its arguments (and the seed), which is
    what makes a resumed run continue exactly."""

  @abc.abstractmethod
  def eval_batches(self, local_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of the eval set: `inputs`, `label`, a `mask`
    (0 on padding rows; every process yields the same number of batches,
    as collectives need) and any per-example fields the source describes
    its examples with (`hops`, `values`), for analysis."""


class HostSource(Source):
  """Base of sources that hold their eval set in host memory.

  Subclasses set `input_shape` and `num_classes` and define
  `train_batch(step, local_batch)` and `eval_set()`; this class gives every
  process its padded share of the eval set.
  """

  def __init__(self, config: Any, **kwargs):
    super().__init__(config, **kwargs)
    self._eval_data = None  # Generated on first use, then kept.

  @abc.abstractmethod
  def eval_set(self) -> dict[str, np.ndarray]:
    """The whole fixed eval set (identical on every process)."""

  def eval_batches(self, local_batch: int) -> Iterator[dict[str, np.ndarray]]:
    if self._eval_data is None:
      # Generated once: the set is fixed, and every eval reads all of it.
      self._eval_data = self.eval_set()
    return padded_eval_batches(
        self._eval_data, local_batch, self.process_index, self.process_count
    )
