"""A run's parts, built and validated from its config before anything runs.

`prepare(config)` turns the ml-collections config into typed parts: the
schedule (top-level keys), the optimizer and mesh settings, the data
source and the model. Every key is checked here, so a typo fails in
seconds with one line naming it, before the trainer touches the workdir.
The trainer, the budget knob, the analysis of finished runs and the
experiment scripts all build a run through this module, so they see the
model and data exactly as training did.
"""

import dataclasses
import json
from typing import Any

import jax
import ml_collections

from adatape import data as data_lib
from adatape import losses
from adatape import models
from adatape import optim
from adatape import parallel
from adatape import run_config
from adatape.models import encoder
from adatape.models import outputs
from adatape.tape import config as tape_config


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Top-level run keys: how long, how big, how often.

  Attributes:
    seed: seeds parameters, dropout and data.
    total_steps: training steps.
    batch_size: global training batch.
    eval_batch_size: global eval batch.
    loss: "softmax_xent" or "sigmoid_xent" (sum over classes, the official
      multi-label loss).
    log_every_steps: train metrics and progress line interval.
    eval_every_steps: eval interval (and always at the end).
    checkpoint_every_steps: checkpoint interval (and always at the end).
    max_checkpoints: checkpoints kept.
    init_from: a workdir whose latest checkpoint initialises every
      parameter with the same path and shape (fine-tuning; the stages of
      the ACM conversion); the others keep their fresh initialisation,
      except that an image model's position embeddings are resampled to
      its patch grid (`adatape/init_from.py`).
    profile_steps: (first, last): record a `jax.profiler` trace of steps
      first..last-1 into WORKDIR/profile (TensorBoard's profile tab);
      empty: no trace.
  """

  seed: int = 0
  total_steps: int = 1000
  batch_size: int = 128
  eval_batch_size: int = 1024
  loss: str = "softmax_xent"
  log_every_steps: int = 100
  eval_every_steps: int = 1000
  checkpoint_every_steps: int = 1000
  max_checkpoints: int = 3
  init_from: str = ""
  profile_steps: tuple[int, ...] = ()

  def __post_init__(self):
    for name in (
        "total_steps",
        "batch_size",
        "eval_batch_size",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "max_checkpoints",
    ):
      value = getattr(self, name)
      run_config.check(value >= 1, f"{name}={value} must be >= 1")
    run_config.check(self.seed >= 0, f"seed={self.seed} must be >= 0")
    run_config.check_choice("loss", self.loss, losses.LOSSES)
    if self.profile_steps:
      run_config.check(
          len(self.profile_steps) == 2
          and 0
          <= self.profile_steps[0]
          < self.profile_steps[1]
          <= self.total_steps,
          f"profile_steps={self.profile_steps} must be (first, last) with "
          f"0 <= first < last <= total_steps={self.total_steps}",
      )


# The config's sections; every other top-level key belongs to `Schedule`.
SECTIONS = ("model", "tape", "data", "optim", "mesh")


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything validated from a config, before anything is written."""

  schedule: Schedule
  optim: optim.Config
  mesh: parallel.Config
  source: data_lib.Source
  model: Any
  metrics: tuple[outputs.Metric, ...]  # The model's, GFLOPs included.


def typed_defaults(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The default of every key the typed sections of `config` define,
  flattened (`{"model.dtype": "float32", ...}`), as JSON would hold them:
  what a key added to the code after a run started means for that run."""
  sections = [
      ("", Schedule),
      ("optim.", optim.Config),
      ("mesh.", parallel.Config),
      ("model.", encoder.EncoderConfig),
  ]
  if config.get("model", {}).get("name") in models.available():
    sections.append(("model.", models.config_class(config.model.name)))
  if "tape" in config:
    sections.append(("tape.", tape_config.TapeConfig))
  result = {}
  for prefix, cls in sections:
    for field in dataclasses.fields(cls):
      if field.default is not dataclasses.MISSING:
        result[prefix + field.name] = json.loads(json.dumps(field.default))
  return result


def prepare(config: ml_collections.ConfigDict) -> Run:
  """Validates the whole config; raises ConfigError naming the bad key."""
  for section in SECTIONS:
    if section == "tape" and section not in config:
      continue
    run_config.check(
        section in config, f"the config has no `{section}` section"
    )
  top = {k: v for k, v in config.items() if k not in SECTIONS}
  schedule = run_config.to_dataclass(Schedule, top, "config")
  optim_config = run_config.to_dataclass(optim.Config, config.optim, "optim")
  mesh_config = run_config.to_dataclass(parallel.Config, config.mesh, "mesh")
  source = data_lib.create(
      config,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  model = models.build(
      config, input_shape=source.input_shape, num_classes=source.num_classes
  )
  return Run(
      schedule,
      optim_config,
      mesh_config,
      source,
      model,
      models.metrics(config.model.name),
  )
