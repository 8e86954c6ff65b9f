"""Launchers: the TPU commands, and a local sweep end to end."""

import os
import subprocess
import sys

from launch import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tpu_dry_run_prints_exactly_the_commands():
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "launch.tpu",
          "--tpu=slice-2w",
          "--zone=us-z1-a",
          "--project=proj",
          "--config=configs/parity/adatape.py:seq_len=64",
          "--workdir=gs://bucket/run",
          "--commit=abc123",
          "--dry-run",
          "--",
          "--config.seed=3",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
  )
  assert result.stdout.splitlines() == [
      f"git -C {REPO} archive --format=tar.gz -o /tmp/adatape-abc123.tar.gz "
      "abc123",
      "gcloud compute tpus tpu-vm scp /tmp/adatape-abc123.tar.gz "
      "'slice-2w:~/adatape-abc123.tar.gz' --worker=all --zone us-z1-a "
      "--project proj",
      "gcloud compute tpus tpu-vm ssh slice-2w --worker=all --zone us-z1-a "
      "--project proj --command 'mkdir -p ~/adatape-abc123 && tar -xzf "
      "~/adatape-abc123.tar.gz -C ~/adatape-abc123 && cd ~/adatape-abc123 "
      "&& bash launch/tpu_worker.sh "
      "--config=configs/parity/adatape.py:seq_len=64 "
      "--workdir=gs://bucket/run --config.seed=3'",
  ]


def test_tpu_launcher_rejects_a_missing_config():
  result = subprocess.run(
      [
          sys.executable,
          "-m",
          "launch.tpu",
          "--tpu=t",
          "--zone=z",
          "--config=configs/parity/nope.py",
          "--workdir=gs://b/r",
          "--dry-run",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
  )
  assert result.returncode == 2
  assert "configs/parity/nope.py does not exist" in result.stderr


def test_sweep_names_are_deterministic():
  a = sweep.slug({"tape.epsilon": 2.0, "tape.num_tokens": 8})
  b = sweep.slug({"tape.num_tokens": 8, "tape.epsilon": 2.0})
  assert a == b == "tape.epsilon=2.0,tape.num_tokens=8"
  assert sweep.slug({"data.name": "a/b c"}) == "data.name=a_b_c"


def test_local_sweep_runs_aggregates_and_skips_finished(tmp_path):
  root = tmp_path / "sweep"
  args = [
      sys.executable,
      "-m",
      "launch.sweep",
      "--config=tests/sweep_config.py",
      f"--root={root}",
      "--parallel=2",
  ]
  first = subprocess.run(
      args, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert first.returncode == 0, first.stdout + first.stderr
  names = ["tape.loss_weight=0.0", "tape.loss_weight=0.05"]
  for name in names:
    assert (root / name / "results.json").exists()
  for out in ("sweep.md", "sweep.csv", "sweep.png"):
    assert (root / out).exists(), out
  with open(root / "sweep.csv") as f:
    assert len(f.read().strip().splitlines()) == 3
  again = subprocess.run(
      args, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert again.returncode == 0
  assert again.stdout.count("skip (finished)") == 2
