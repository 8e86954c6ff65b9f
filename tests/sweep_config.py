"""A two-point sweep over the tiny parity config, for the launcher tests."""

from configs.parity import adatape


def get_config(arg=None):
  del arg
  config = adatape.get_config("tiny")
  config.mesh.data = 1
  return config


def sweep(add):
  for weight in (0.0, 0.05):
    add(**{"tape.loss_weight": weight})
