"""Launchers: the TPU commands, and a local sweep end to end."""

import json
import os
import signal
import subprocess
import sys
import time

from launch import sweep
from launch import tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(*args):
  args = list(args)
  cut = args.index("--") if "--" in args else len(args)
  return subprocess.run(
      [sys.executable, "-m", *args[:cut], "--dry-run", *args[cut:]],
      cwd=REPO,
      capture_output=True,
      text=True,
  )


def test_tpu_dry_run_prints_exactly_the_commands():
  result = _dry_run(
      "launch.tpu",
      "--tpu=slice-2w",
      "--zone=us-z1-a",
      "--project=proj",
      "--config=configs/parity/adatape.py:seq_len=64",
      "--workdir=gs://bucket/run",
      "--commit=abc123",
      "--env=TFDS_DATA_DIR=gs://bucket/tfds",
      "--env=LIBTPU_INIT_ARGS=--xla_a --xla_b",
      "--follow",
      "--",
      "--config.seed=3",
  )
  assert result.returncode == 0, result.stderr
  ssh = "gcloud compute tpus tpu-vm ssh slice-2w --zone us-z1-a --project proj"
  assert result.stdout.splitlines() == [
      f"git -C {REPO} archive --format=tar.gz -o /tmp/adatape-abc123.tar.gz "
      "abc123",
      "gcloud compute tpus tpu-vm scp /tmp/adatape-abc123.tar.gz "
      "'slice-2w:~/adatape-abc123.tar.gz' --worker=all --zone us-z1-a "
      "--project proj",
      f"{ssh} --worker=all --command 'mkdir -p ~/adatape-abc123 && tar -xzf "
      "~/adatape-abc123.tar.gz -C ~/adatape-abc123 && cd ~/adatape-abc123 "
      "&& mkdir -p ~/adatape-logs && ln -sfn run.log ~/adatape-logs/latest.log"
      " && { setsid nohup env TFDS_DATA_DIR=gs://bucket/tfds "
      "'\"'\"'LIBTPU_INIT_ARGS=--xla_a --xla_b'\"'\"' bash "
      "launch/tpu_worker.sh --config=configs/parity/adatape.py:seq_len=64 "
      "--workdir=gs://bucket/run --config.seed=3 > ~/adatape-logs/run.log "
      "2>&1 < /dev/null & } && echo started on $(hostname): "
      "~/adatape-logs/run.log'",
      f"{ssh} --worker=0 --command 'tail -n +1 -F ~/adatape-logs/latest.log'",
  ]


def test_tpu_stop_and_logs_commands():
  stop = _dry_run("launch.tpu", "--tpu=s", "--zone=z", "--stop")
  assert stop.stdout.splitlines() == [
      "gcloud compute tpus tpu-vm ssh s --zone z --worker=all --command "
      "'pkill -TERM -f '\"'\"'[a]datape.main|[l]aunch.sweep'\"'\"' || echo "
      "no job on $(hostname)'"
  ]
  logs = _dry_run("launch.tpu", "--tpu=s", "--zone=z", "--logs")
  assert logs.stdout.splitlines() == [
      "gcloud compute tpus tpu-vm ssh s --zone z --worker=0 --command "
      "'tail -n +1 -F ~/adatape-logs/latest.log'"
  ]
  bad = _dry_run(
      "launch.tpu",
      "--tpu=s",
      "--zone=z",
      "--config=configs/parity/adatape.py",
      "--workdir=gs://b/r",
      "--env=NOT AN ASSIGNMENT",
  )
  assert bad.returncode == 2
  assert (
      bad.stderr.strip() == "error: --env 'NOT AN ASSIGNMENT' is not KEY=VALUE"
  )


def test_the_printed_job_runs_detached_and_logs(tmp_path):
  """The worker-side part of the launch command, run here: it returns at
  once, the job runs in its own session (so it outlives the SSH
  connection), and its output goes to the per-worker log."""
  job = "python3 -c 'import os, time; print(os.getsid(0), flush=True); time.sleep(30)'"
  command = tpu.detached(job, "run")
  env = dict(os.environ, HOME=str(tmp_path))
  started = subprocess.run(
      ["bash", "-c", command],
      env=env,
      capture_output=True,
      text=True,
      timeout=10,
  )
  assert started.returncode == 0
  assert "started on" in started.stdout
  log = tmp_path / "adatape-logs" / "run.log"
  for _ in range(100):
    if log.exists() and log.read_text().strip():
      break
    time.sleep(0.1)
  job_session = int(log.read_text().split()[0])
  assert job_session != os.getsid(0)
  assert os.readlink(tmp_path / "adatape-logs" / "latest.log") == "run.log"
  os.killpg(job_session, signal.SIGKILL)


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


def _memory_results(root, points):
  """Finished sweep points on the in-memory filesystem (a stand-in for a
  bucket): each a results.json."""
  from adatape import storage  # pylint: disable=g-import-not-at-top

  for name, results in points.items():
    storage.write_atomic(f"{root}/{name}/results.json", json.dumps(results))


def test_sweep_on_a_bucket_skips_finished_points_and_aggregates_there():
  from adatape import storage  # pylint: disable=g-import-not-at-top

  root = "memory://bucket/sweep"
  done = {
      "model": "adatape",
      "eval/accuracy": 0.75,
      "eval/tape_length": 3.5,
      "steps": 6,
      "wall_time_s": 1.0,
  }
  _memory_results(root, {"tape.loss_weight=0.0": done})
  pending = sweep.pending_points("tests/sweep_config.py", root)
  assert [w for w, _ in pending] == [f"{root}/tape.loss_weight=0.05"]
  _memory_results(
      root, {"tape.loss_weight=0.05": dict(done, **{"eval/accuracy": 0.5})}
  )
  rows = sweep.aggregate(root)
  assert [r["point"] for r in rows] == [
      "tape.loss_weight=0.0",
      "tape.loss_weight=0.05",
  ]
  names = storage.listdir(root)
  for out in ("sweep.md", "sweep.csv", "sweep.png"):
    assert out in names, names
  table = storage.read_text(f"{root}/sweep.md")
  assert "eval/tape_length" in table.splitlines()[0]  # The model's cost.
  assert storage.read_bytes(f"{root}/sweep.png")[:4] == b"\x89PNG"


def test_tpu_sweep_is_one_detached_job_over_every_point():
  result = _dry_run(
      "launch.sweep",
      "--config=tests/sweep_config.py",
      "--root=gs://bucket/sweep",
      "--tpu=s",
      "--zone=z",
      "--commit=abc",
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 3  # Archive, copy, one detached job.
  assert (
      "{ setsid nohup bash launch/tpu_worker.sh --sweep "
      "--config=tests/sweep_config.py --root=gs://bucket/sweep > "
      "~/adatape-logs/sweep_sweep.log" in lines[2]
  )
  local_root = _dry_run(
      "launch.sweep",
      "--config=tests/sweep_config.py",
      "--root=runs/x",
      "--tpu=s",
      "--zone=z",
  )
  assert local_root.returncode == 2
  assert "--tpu needs a --root every worker sees" in local_root.stderr


def test_gpu_sweep_gives_each_running_point_its_own_gpu(tmp_path, monkeypatch):
  running, seen = set(), []

  def fake_train(config, workdir, overrides, *, log, check, env):
    gpu = env["CUDA_VISIBLE_DEVICES"]
    assert gpu not in running  # No two points on one GPU at once.
    running.add(gpu)
    time.sleep(0.2)
    seen.append(gpu)
    running.remove(gpu)
    return 0

  monkeypatch.setattr(sweep.local, "train", fake_train)
  monkeypatch.setattr(sweep, "aggregate", lambda root: [])
  monkeypatch.setattr(
      sweep.run_config,
      "sweep_points",
      lambda config: [{"seed": i} for i in range(5)],
  )
  code = sweep.run_locally(
      "c.py", str(tmp_path / "root"), str(tmp_path / "logs"), 1, ["0", "1"]
  )
  assert code == 0
  assert len(seen) == 5 and set(seen) == {"0", "1"}
