"""Data sources, chosen by module name: `data.name=parity` is `data/parity.py`.

A data module defines a frozen `Config` dataclass for the `data.*` keys and
a `Source(config, *, seed, process_index, process_count)` with
`input_shape`, `num_classes`, `train_batch(step, local_batch)` (a pure
function of its arguments, which is what makes resume exact) and
`eval_batches(local_batch)` (padded, with a `mask` key).
"""

import importlib
import pkgutil
from typing import Any

import ml_collections

from adatape import run_config


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def create(config: ml_collections.ConfigDict, *, process_index: int,
           process_count: int) -> Any:
  """Builds the data source named by `config.data.name`."""
  name = config.data.name
  run_config.check_choice("data.name", name, tuple(available()))
  module = importlib.import_module(f"adatape.data.{name}")
  data_config = run_config.to_dataclass(module.Config, config.data, "data")
  return module.Source(data_config, seed=config.seed,
                       process_index=process_index,
                       process_count=process_count)
