"""Sharding on 8 simulated devices: DP, FSDP and a 2-D mesh match 1 device."""

import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from adatape import assemble
from adatape import optim
from adatape import parallel
from adatape import train
from configs.parity import adatape as adatape_config


def _tiny(**overrides):
  config = adatape_config.get_config("tiny")
  config.update_from_flattened_dict(overrides)
  return config


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l)["train/loss"] for l in f if "train/loss" in l]


def _abstract_state(config, mesh_config):
  run = assemble.prepare(config)
  tx = optim.create(run.optim, 10)
  abstract = jax.eval_shape(
      lambda k: train.init_state(
          k, model=run.model, tx=tx, input_shape=run.source.input_shape
      ),
      jax.random.key(0),
  )
  mesh = parallel.make_mesh(mesh_config)
  return abstract, mesh, parallel.state_shardings(abstract, mesh, mesh_config)


def _spec(shardings, *keys):
  node = shardings.params
  for key in keys:
    node = node[key]
  return node.spec


def test_fsdp_and_model_axis_shard_parameters_and_optimizer_state():
  config = _tiny()
  mesh_config = parallel.Config(data=4, model=2, sharding="fsdp")
  abstract, mesh, shardings = _abstract_state(config, mesh_config)
  assert dict(mesh.shape) == {"data": 4, "model": 2}
  block = ("encoderblock_0",)
  # MLP hidden units over `model`, then the other dimension over `data`.
  assert _spec(shardings, *block, "mlp", "Dense_0", "kernel") == P(
      "data", "model"
  )
  assert _spec(shardings, *block, "mlp", "Dense_1", "kernel") == P(
      "model", "data"
  )
  # Attention heads over `model`.
  assert _spec(shardings, *block, "attention", "query", "kernel")[1] == (
      "model"
  )
  # Adam moments are laid out like their parameters.
  adam = shardings.opt_state[1][0]
  assert adam.mu["encoderblock_0"]["mlp"]["Dense_0"]["kernel"].spec == P(
      "data", "model"
  )
  # Scalars stay replicated; FSDP divides the state across devices.
  assert shardings.step.spec == P()
  replicated = parallel.state_shardings(
      abstract, mesh, parallel.Config(data=4, model=2)
  )
  full = parallel.bytes_per_device(abstract, replicated)
  split = parallel.bytes_per_device(abstract, shardings)
  assert split < full / 2


def test_indivisible_dimensions_stay_replicated():
  mesh = parallel.make_mesh(parallel.Config(data=8))
  assert parallel.leaf_spec("w", (6, 12), mesh, fsdp=True) == P(None, None)
  assert parallel.leaf_spec("w", (16, 24), mesh, fsdp=True) == P(None, "data")


@pytest.mark.parametrize(
    "mesh_overrides",
    [
        {"mesh.data": 8},
        {"mesh.data": 8, "mesh.sharding": "fsdp"},
        {"mesh.data": 4, "mesh.model": 2, "mesh.sharding": "fsdp"},
    ],
)
def test_sharded_runs_match_one_device(tmp_path, mesh_overrides):
  assert jax.device_count() == 8
  one = str(tmp_path / "one")
  many = str(tmp_path / "many")
  train.train_and_evaluate(_tiny(**{"mesh.data": 1}), one)
  results = train.train_and_evaluate(_tiny(**mesh_overrides), many)
  assert results["num_devices"] == 8
  np.testing.assert_allclose(_losses(one), _losses(many), rtol=2e-5)
