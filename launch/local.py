"""Training runs started as subprocesses on this machine.

Sweeps and the experiment scripts train each point through the normal
command line (`python -m adatape.main`), so every run keeps the workdir
contract: it resumes from its checkpoints, and a finished one is skipped.
This module is the one place that builds that command and starts it.
"""

import os
import subprocess
import sys
from typing import Mapping

from adatape import storage
from adatape import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def override_flags(overrides: Mapping[str, object]) -> list[str]:
  """`--config.KEY=VALUE` flags, sorted by key."""
  return [f"--config.{k}={v}" for k, v in sorted(overrides.items())]


def command(
    config: str, workdir: str, overrides: Mapping[str, object] | None = None
) -> list[str]:
  """The command line that trains `config` (`PATH[:ARGS]`) in `workdir`."""
  return [
      sys.executable,
      "-m",
      "adatape.main",
      f"--config={config}",
      f"--workdir={workdir}",
      *override_flags(overrides or {}),
  ]


def finished(workdir: str) -> bool:
  """Whether the run in `workdir` (local or not) has written its results."""
  return storage.exists(storage.join(workdir, workdir_lib.RESULTS))


def train(
    config: str,
    workdir: str,
    overrides: Mapping[str, object] | None = None,
    *,
    log: str | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> int:
  """Trains one run to completion (resuming it if it was started).

  Args:
    config: `PATH[:ARGS]` of the config file.
    workdir: the run's workdir.
    overrides: `--config.KEY=VALUE` overrides.
    log: a file to append the run's output to (default: this process's
      stdout and stderr).
    check: raise CalledProcessError if the run fails.
    env: variables to set for the run (e.g. CUDA_VISIBLE_DEVICES).

  Returns:
    The run's exit status.
  """
  cmd = command(config, workdir, overrides)
  full_env = {**os.environ, **env} if env else None
  if log is None:
    result = subprocess.run(cmd, cwd=REPO, check=check, env=full_env)
    return result.returncode
  with open(log, "a") as out:
    result = subprocess.run(
        cmd,
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
        check=check,
        env=full_env,
    )
  return result.returncode
