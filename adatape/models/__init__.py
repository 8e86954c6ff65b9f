"""Models, chosen by module name: `model.name=adatape` is `models/adatape.py`.

Each model module defines a frozen `Config` dataclass (with an `encoder`
field, plus `num_classes` and `input_shape` taken from the data), a Linen
`Model(config)` whose `__call__(inputs, *, train)` returns a ModelOutput,
and `METRICS`, the per-example metrics that output carries (exactly one
marked `cost`). A module with all three is a model; adding a model is
adding a module, and nothing here changes.
"""

import dataclasses
import functools
import importlib
import pkgutil
import types
from typing import Any

import flax.linen as nn
import ml_collections

from adatape import run_config
from adatape.models import encoder
from adatape.models import outputs
from adatape.tape import config as tape_config

# What makes a module a model: the three names every trainer-facing tool
# relies on.
_MODEL_API = ("Config", "Model", "METRICS")


def _module(name: str) -> types.ModuleType:
  return importlib.import_module(f"adatape.models.{name}")


@functools.cache
def available() -> tuple[str, ...]:
  """Names of the modules here that define a model (see `_MODEL_API`)."""
  return tuple(
      sorted(
          m.name
          for m in pkgutil.iter_modules(__path__)
          if all(hasattr(_module(m.name), attr) for attr in _MODEL_API)
      )
  )


def config_class(name: str) -> type:
  """The typed `Config` dataclass of model `name`."""
  run_config.check_choice("model.name", name, available())
  return _module(name).Config


def metrics(name: str) -> tuple[outputs.Metric, ...]:
  """The per-example metrics model `name` reports, GFLOPs included."""
  run_config.check_choice("model.name", name, available())
  return tuple(_module(name).METRICS) + (outputs.GFLOPS,)


def cost_metric(name: str) -> outputs.Metric:
  """The metric model `name` calls its compute used."""
  return next(m for m in metrics(name) if m.cost)


def build(
    config: ml_collections.ConfigDict,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> nn.Module:
  """Builds `config.model.name` with validated typed configs.

  Args:
    config: the run config (`model.*`, and `tape.*` for models that read a
      tape).
    input_shape: shape of one example, from the data source.
    num_classes: number of classes, from the data source.

  Returns:
    The Linen model.
  """
  name = config.model.name
  run_config.check_choice("model.name", name, available())
  module = _module(name)
  values = config.model.to_dict()
  del values["name"]
  encoder_keys = {f.name for f in dataclasses.fields(encoder.EncoderConfig)}
  model_keys = {f.name for f in dataclasses.fields(module.Config)} - {
      "encoder",
      "num_classes",
      "input_shape",
      "tape",
  }
  unknown = sorted(set(values) - encoder_keys - model_keys)
  run_config.check(
      not unknown,
      f"model.{unknown[0] if unknown else ''} is not a key of model "
      f"{name!r}; valid: {', '.join(sorted(encoder_keys | model_keys))}",
  )
  enc = run_config.to_dataclass(
      encoder.EncoderConfig,
      {k: v for k, v in values.items() if k in encoder_keys},
      "model",
  )
  extra: dict[str, Any] = dict(
      encoder=enc, num_classes=num_classes, input_shape=tuple(input_shape)
  )
  if "tape" in {f.name for f in dataclasses.fields(module.Config)}:
    run_config.check(
        "tape" in config, f"model.name={name!r} needs a `tape` config section"
    )
    extra["tape"] = run_config.to_dataclass(
        tape_config.TapeConfig, config.tape, "tape"
    )
  model_config = run_config.to_dataclass(
      module.Config,
      {k: v for k, v in values.items() if k not in encoder_keys},
      "model",
      **extra,
  )
  return module.Model(model_config)
