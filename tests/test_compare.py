"""The comparison harness end to end: training every stage through the
command line, the ACM conversion chain (init_from, frozen parameters), the
tables, the per-hop breakdown and the depth map."""

import csv
import os
import subprocess
import sys

import flax
import numpy as np
import pytest

from adatape import checkpointing
from adatape import run_config
from adatape import train
from configs.pvr import transformer as pvr_transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args):
  return subprocess.run(
      [sys.executable] + args,
      cwd=REPO,
      text=True,
      capture_output=True,
      timeout=900,
  )


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  """Runs the comparison on tiny PVR runs once for the module."""
  root = tmp_path_factory.mktemp("compare")
  out = str(root / "results" / "table")
  proc = _run(
      [
          "-m",
          "experiments.compare_methods",
          f"--workdir={root}",
          f"--out={out}",
          "--tasks=pvr",
          "--methods=transformer,avit,acm",
          "--tiny",
          "--jobs=2",
      ]
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return root, out


def _read(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_table_has_every_requested_method_with_compute(compared):
  _, out = compared
  rows = _read(out + ".csv")
  assert [r["method"] for r in rows] == ["transformer", "avit", "acm"]
  for row in rows:
    assert 0.0 <= float(row["accuracy"]) <= 1.0
    assert float(row["gflops"]) > 0
  hops = _read(out + "_pvr_hops.csv")
  for method in ("transformer", "avit", "acm"):
    mine = [r for r in hops if r["method"] == method]
    # The tiny PVR config trains on 1-3 hops and evaluates 1-4.
    assert [int(r["hops"]) for r in mine] == [1, 2, 3, 4]
    assert sum(int(r["examples"]) for r in mine) == 40  # The tiny eval set.
    assert [r["seen_in_training"] for r in mine] == ["True"] * 3 + ["False"]
  assert os.path.getsize(out + "_pvr_hops.png") > 1000


def test_acm_distillation_starts_from_the_teacher_and_trains_only_learners(
    compared,
):
  root, _ = compared
  _, teacher = checkpointing.restore_params(str(root / "pvr_transformer"))
  _, distilled = checkpointing.restore_params(str(root / "pvr_acm_distill"))
  teacher = flax.traverse_util.flatten_dict(teacher, sep="/")
  distilled = flax.traverse_util.flatten_dict(distilled, sep="/")
  shared = set(teacher) & set(distilled)
  assert any("/mlp/" in k for k in shared) and len(shared) > 10
  for key in shared:  # Loaded from the teacher and then frozen.
    np.testing.assert_array_equal(teacher[key], distilled[key], err_msg=key)
  fresh = set(distilled) - set(teacher)
  assert fresh and all("/learners/" in k or "/gate/" in k for k in fresh)
  _, gates = checkpointing.restore_params(str(root / "pvr_acm_gates"))
  gates = flax.traverse_util.flatten_dict(gates, sep="/")
  for key in distilled:
    if "/gate/" not in key:
      np.testing.assert_array_equal(gates[key], distilled[key], err_msg=key)
  assert any(
      not np.array_equal(gates[k], distilled[k]) for k in gates if "/gate/" in k
  )


def test_depth_map_png_and_refusal_for_models_without_depth(compared):
  root, _ = compared
  proc = _run(["-m", "experiments.depth_map", f"--workdir={root / 'pvr_avit'}"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert os.path.getsize(root / "pvr_avit" / "depth_map.png") > 1000
  proc = _run(
      ["-m", "experiments.depth_map", f"--workdir={root / 'pvr_transformer'}"]
  )
  assert proc.returncode != 0
  assert "returns no token_depth_BxL" in proc.stderr.strip().splitlines()[-1]


def test_init_from_must_hold_checkpoints(tmp_path):
  config = pvr_transformer.get_config("tiny")
  config.init_from = str(tmp_path / "missing")
  workdir = tmp_path / "run"
  with pytest.raises(run_config.ConfigError, match="init_from="):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_init_from_a_run_sharing_no_parameter_is_refused(compared, tmp_path):
  root, _ = compared
  config = pvr_transformer.get_config("tiny")
  config.model.width = 8  # Every shape differs from the trained run's.
  config.model.mlp_dim = 8
  config.data.seq_len = 7
  config.init_from = str(root / "pvr_transformer")
  with pytest.raises(run_config.ConfigError, match="shares no parameter"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_started_run_does_not_read_init_from_again(compared, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  from configs.pvr import acm as pvr_acm  # pylint: disable=g-import-not-at-top

  # A copy of the comparison's tiny PVR Transformer, to be deleted below.
  root, _ = compared
  shutil.copytree(root / "pvr_transformer", tmp_path / "teacher")
  config = pvr_acm.get_config(f"tiny,stage=distill,init={tmp_path / 'teacher'}")
  first = train.train_and_evaluate(config, str(tmp_path / "run"))
  shutil.rmtree(tmp_path / "teacher")
  # The finished run reports its results without the (now gone) teacher.
  again = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert again["eval/accuracy"] == first["eval/accuracy"]
