r"""What a user sees when a run resumes past a damaged checkpoint.

Trains the tiny parity config for 6 steps (a checkpoint every 2), truncates
the array files of the latest checkpoint to half, as a disk that filled up
mid-write would, then resumes the run with `python -m adatape.main` and
reports what the resume printed on stderr (absl's own `W0000`/`I0000` log
lines left out): its exit status, its lines, the Python tracebacks among
them, the checkpointer's warning and the step it resumed from.

  python -m experiments.damaged_resume [--workdir=/tmp/damaged_resume]
"""

import argparse
import os
import shutil
import subprocess
import sys

_OVERRIDES = ("--config.total_steps=6", "--config.checkpoint_every_steps=2")


def _main_command(workdir: str) -> list[str]:
  return [
      sys.executable,
      "-m",
      "adatape.main",
      "--config=configs/parity/adatape.py:tiny",
      f"--workdir={workdir}",
      *_OVERRIDES,
  ]


def truncate_arrays(state_dir: str) -> int:
  """Halves every file of the OCDBT `d/` folders; returns how many."""
  count = 0
  for folder, _, names in os.walk(state_dir):
    if os.path.basename(folder) != "d":
      continue
    for name in names:
      path = os.path.join(folder, name)
      os.truncate(path, os.path.getsize(path) // 2)
      count += 1
  return count


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/damaged_resume")
  workdir = parser.parse_args().workdir
  shutil.rmtree(workdir, ignore_errors=True)
  subprocess.run(_main_command(workdir), check=True, capture_output=True)
  os.remove(os.path.join(workdir, "results.json"))
  files = truncate_arrays(os.path.join(workdir, "checkpoints", "6", "state"))
  print(f"truncated {files} array files of checkpoint 6 to half")
  resumed = subprocess.run(
      _main_command(workdir), capture_output=True, text=True, check=False
  )
  lines = [
      line
      for line in resumed.stderr.splitlines()
      if not line.startswith(("W0000", "I0000"))
  ]
  tracebacks = sum("Traceback (most recent call last)" in l for l in lines)
  print(f"resume: exit {resumed.returncode}; stderr: {len(lines)} lines")
  print(f"tracebacks on stderr: {tracebacks}")
  for number, line in enumerate(lines, 1):
    if "warning: checkpoint" in line:
      # Other threads' output may share the line.
      warning = line[line.index("warning: checkpoint") :]
      print(f"stderr line {number}: {warning}")
  for line in resumed.stdout.splitlines():
    if line.startswith("resumed from"):
      print(line)


if __name__ == "__main__":
  main()
