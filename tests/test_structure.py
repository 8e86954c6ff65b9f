"""The layout's rules: imports point down, models are found and name their
metrics, config files load one way."""

import ast
import os

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from adatape import models
from adatape import run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports(path):
  """Modules `path` imports (absolute names, `from X import Y` as X.Y)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.update(f"{node.module}.{alias.name}" for alias in node.names)
  return names


def _package_files(package):
  root = os.path.join(REPO, *package.split("."))
  for folder, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py"):
        yield os.path.join(folder, name)


def test_the_tape_does_not_reach_into_models():
  for path in _package_files("adatape.tape"):
    bad = [n for n in _imports(path) if n.startswith("adatape.models")]
    assert not bad, f"{path} imports {bad}"


def test_only_the_command_line_imports_the_trainer():
  for package in ("adatape", "experiments", "launch"):
    for path in _package_files(package):
      if path.endswith(("adatape/train.py", "adatape/main.py")):
        continue
      uses = [n for n in _imports(path) if n == "adatape.train"]
      # Tools may run the trainer's steps (budget, benchmarks), but losses
      # and configs come from the modules below it.
      if uses:
        with open(path) as f:
          text = f.read()
        for moved in (
            "train.prepare",
            "train.task_loss",
            "train.Run",
            "train.top1_correct",
            "train.example_loss",
            "train.resample_grid",
            "train.Schedule",
        ):
          assert moved not in text, f"{path} uses {moved}"


def test_registry_lists_exactly_the_modules_that_define_a_model():
  names = models.available()
  assert set(names) == {
      "acm",
      "adatape",
      "albert_act",
      "avit",
      "hyper_ut",
      "pondernet",
      "transformer",
      "universal_transformer",
  }
  for helper in ("encoder", "outputs", "stems", "flops"):
    assert helper not in names
  c = ml_collections.ConfigDict({"model": {"name": "flops"}})
  with pytest.raises(run_config.ConfigError, match="model.name='flops'"):
    models.build(c, input_shape=(4, 3), num_classes=2)


def _tiny(name):
  c = ml_collections.ConfigDict()
  c.model = dict(
      name=name,
      width=16,
      depth=2,
      num_heads=2,
      mlp_dim=32,
      stem="flatten" if name == "adatape" else "sequence",
  )
  if name == "adatape":
    c.model.posemb = False
    c.tape = dict(num_tokens=4, epsilon=2.0, key_split=2)
  if name == "acm":
    c.model.stage = "finetune"
  return c


@pytest.mark.parametrize("name", models.available())
def test_each_model_returns_exactly_its_declared_metrics(name):
  model = models.build(_tiny(name), input_shape=(8, 3), num_classes=2)
  x = jax.nn.one_hot(jnp.arange(16).reshape(2, 8) % 3, 3)
  variables = model.init(
      {"params": jax.random.key(0), "halting": jax.random.key(1)},
      x,
      train=False,
  )
  out = model.apply(
      variables, x, train=False, rngs={"halting": jax.random.key(2)}
  )
  declared = models.metrics(name)
  assert sum(m.cost for m in declared) == 1
  assert set(out.metrics_B) | {"gflops"} == {m.name for m in declared}
  for value in out.metrics_B.values():
    assert value.shape == (2,)
  assert models.cost_metric(name).name in out.metrics_B


def test_config_files_load_by_path_with_args():
  c = run_config.load("configs/parity/adatape.py:seq_len=64")
  assert c.data.seq_len == 64
  assert (
      run_config.load(
          os.path.join(REPO, "configs/parity/adatape.py"),
      ).data.seq_len
      == 32
  )
  points = run_config.sweep_points("configs/parity/adatape.py:seq_len=64")
  assert len(points) == 9 and points[0]["tape.num_tokens"] == 4
  with pytest.raises(
      run_config.ConfigError, match="--spec: configs/no.py " "does not exist"
  ):
    run_config.load("configs/no.py", "--spec")
  with pytest.raises(run_config.ConfigError, match="has no sweep"):
    run_config.sweep_points("configs/parity/transformer.py")
  with pytest.raises(run_config.ConfigError, match="defines no get_config"):
    run_config.load("configs/methods.py")


def test_demo_seeds_measures_the_config_make_demo_runs():
  from experiments import demo_seeds  # pylint: disable=g-import-not-at-top

  with open(os.path.join(REPO, "Makefile")) as f:
    lines = [l for l in f if l.startswith("DEMO_CONFIG ?=")]
  assert len(lines) == 1
  assert lines[0].split("?=", 1)[1].strip() == demo_seeds.CONFIG
  assert run_config.load(demo_seeds.CONFIG).data.seq_len == 16
