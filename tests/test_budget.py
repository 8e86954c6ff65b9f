"""The budget knob: one checkpoint evaluated at several thresholds/lengths."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from adatape import budget
from adatape import train
from configs.parity import adatape as adatape_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("budget") / "run")
  config = adatape_config.get_config("tiny")
  config.mesh.data = 1
  train.train_and_evaluate(config, workdir)
  return workdir


def test_budget_points_follow_the_threshold(run_dir, capsys):
  # Untimed (the CLI test below times): nothing about speed in the rows.
  rows = budget.evaluate_budgets(
      run_dir, [2.0, 4.0, 1.0], [2, 4], speed_examples=0
  )
  out = capsys.readouterr().out
  by_point = {(r["tape.epsilon"], r["tape.num_tokens"]): r for r in rows}
  # K = T / epsilon = 1 candidate per step has weight 1, so the reader halts
  # after exactly epsilon steps: the tape length is the threshold.
  assert by_point[(4.0, 4)]["eval/tape_length"] == 4.0
  assert by_point[(2.0, 2)]["eval/tape_length"] == 2.0
  assert 2.0 <= by_point[(2.0, 4)]["eval/tape_length"] <= 4.0
  # epsilon > T, and a bank of 8 too small for K * T = 16: skipped, said.
  assert (4.0, 2) not in by_point and (1.0, 4) not in by_point
  assert "skip (tape.epsilon=4.0, tape.num_tokens=2)" in out
  assert "skip (tape.epsilon=1.0, tape.num_tokens=4)" in out
  for r in rows:
    assert r["eval/examples"] == 40
    # One main token (the flattened sequence) plus the mean tape.
    assert r["effective_length"] == 1 + r["eval/tape_length"]
    assert r["eval/gflops"] > 0
    assert not {"speed_examples", "examples_per_s"} & set(r)


def test_every_point_is_timed_in_the_same_rounds(run_dir, monkeypatch):
  """One timing call over every point's elastic and padded runs, so drift
  on a shared machine cannot favour the points timed first; each runner
  is the computation of its own point."""
  from adatape import elastic  # pylint: disable=g-import-not-at-top

  calls = []

  def fake_median_times(runners, repeats):
    calls.append((repeats, runners))
    return {name: 0.5 for name in runners}

  monkeypatch.setattr(elastic, "median_times", fake_median_times)
  # 20 examples in batches of 8, chunks of 4: two whole batches, 16 run.
  rows = budget.evaluate_budgets(
      run_dir,
      [2.0, 4.0],
      [4],
      speed_examples=20,
      speed_repeats=3,
      speed_batch=8,
      speed_chunk=4,
  )
  assert len(calls) == 1 and calls[0][0] == 3
  runners = calls[0][1]
  assert sorted(runners) == [
      (0, "elastic"),
      (0, "padded"),
      (1, "elastic"),
      (1, "padded"),
  ]
  # The runners compute their own point: elastic logits equal the padded
  # forward's per example, and epsilon 2 and 4 read different tapes.
  logits = {}
  for name, call in runners.items():
    batches = call()
    assert [b.shape for b in batches] == [(8, 2), (8, 2)], name
    logits[name] = np.concatenate(batches)
  for point in (0, 1):
    np.testing.assert_allclose(
        logits[point, "elastic"], logits[point, "padded"], rtol=1e-5, atol=1e-5
    )
  assert not np.allclose(logits[0, "elastic"], logits[1, "elastic"])
  for r in rows:  # 16 examples in 0.5 s.
    assert r["speed_examples"] == 16
    assert r["examples_per_s"] == r["padded_examples_per_s"] == 32.0


@pytest.mark.parametrize(
    "speed, message",
    [
        ({"speed_repeats": 0}, "--speed_repeats=0 must be >= 1"),
        (
            {"speed_batch": 12, "speed_chunk": 8},
            "--speed_batch=12 must be 0 (the run's eval batch) or a multiple "
            "of --speed_chunk=8",
        ),
        ({"speed_chunk": 0}, "a multiple of --speed_chunk=0 >= 1"),
    ],
)
def test_bad_timing_flags_are_refused(run_dir, capsys, speed, message):
  with pytest.raises(SystemExit) as exit_info:
    budget.evaluate_budgets(run_dir, [2.0], [4], **speed)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_cli_writes_table_csv_and_plot(run_dir):
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "adatape.budget",
          f"--workdir={run_dir}",
          "--thresholds=2,4",
          "--max_tokens=4",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr
  for name in ("budget.md", "budget.csv", "budget.png"):
    assert os.path.exists(os.path.join(run_dir, name)), name
  with open(os.path.join(run_dir, "budget.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [float(r["tape.epsilon"]) for r in rows] == [2.0, 4.0]
  for r in rows:
    # Timed on whole batches of the run's eval batch (32): 32 of the 40.
    assert int(r["speed_examples"]) == 32
    assert float(r["examples_per_s"]) > 0
    assert float(r["padded_examples_per_s"]) > 0
  assert "inference speed, median of 5 interleaved rounds:" in result.stdout


def test_cli_rejects_a_directory_that_is_not_a_run(tmp_path):
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "adatape.budget",
          f"--workdir={tmp_path}",
          "--thresholds=2",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert result.returncode == 2
  assert "holds no run (no config.json)" in result.stderr


def test_budget_reads_and_writes_a_workdir_on_a_bucket(run_dir, monkeypatch):
  """The in-memory filesystem stands in for gs://: the config is read and
  budget.md/csv/png written there. (Orbax reads the checkpoint itself, from
  any URL it supports; here it is redirected to the local copy.)"""
  from adatape import checkpointing  # pylint: disable=g-import-not-at-top
  from adatape import storage  # pylint: disable=g-import-not-at-top

  remote = "memory://bucket/budget_run"
  storage.write_atomic(
      f"{remote}/config.json",
      storage.read_text(os.path.join(run_dir, "config.json")),
  )
  restore = checkpointing.restore_params
  monkeypatch.setattr(
      checkpointing,
      "restore_params",
      lambda workdir, step=None: restore(
          workdir.replace(remote, run_dir), step
      ),
  )
  rows = budget.evaluate_budgets(remote, [2.0, 4.0], [4], speed_examples=0)
  budget.write_outputs(rows, remote)
  names = storage.listdir(remote)
  assert {"budget.md", "budget.csv", "budget.png"} <= set(names)
  table = list(
      csv.DictReader(storage.read_text(f"{remote}/budget.csv").splitlines())
  )
  assert [float(r["tape.epsilon"]) for r in table] == [2.0, 4.0]
  assert not os.path.exists("memory:")  # Nothing written to a local path.
