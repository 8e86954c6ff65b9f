r"""Launch a training run on every worker of a TPU VM slice.

  python -m launch.tpu --tpu=NAME --zone=ZONE [--project=P] \
      --config=configs/parity/adatape.py --workdir=gs://BUCKET/run \
      [--dry-run] [-- --config.seed=3 ...]

It packs the committed tree (`git archive HEAD`), copies it to all workers,
unpacks it into ~/adatape-<commit>, and runs `launch/tpu_worker.sh` there on
all workers at once: that script bootstraps a virtualenv with
`pip install -e .[tpu]` and starts `python -m adatape.main` with
`jax.distributed.initialize()`. Each host then reads its own data shard;
process 0 writes logs; Orbax writes checkpoints collectively.
`--dry-run` prints the exact commands and runs nothing.
"""

import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commands(
    *,
    tpu: str,
    zone: str,
    project: str | None,
    config: str,
    workdir: str,
    commit: str,
    extra: list[str],
) -> list[list[str]]:
  """The commands that launch the run, in order."""
  archive = f"/tmp/adatape-{commit}.tar.gz"
  remote_dir = f"~/adatape-{commit}"
  target = ["--zone", zone] + (["--project", project] if project else [])
  train_args = " ".join(
      shlex.quote(a)
      for a in [f"--config={config}", f"--workdir={workdir}", *extra]
  )
  remote = (
      f"mkdir -p {remote_dir} && tar -xzf ~/adatape-{commit}.tar.gz "
      f"-C {remote_dir} && cd {remote_dir} && "
      f"bash launch/tpu_worker.sh {train_args}"
  )
  return [
      ["git", "-C", REPO, "archive", "--format=tar.gz", "-o", archive, commit],
      [
          "gcloud",
          "compute",
          "tpus",
          "tpu-vm",
          "scp",
          archive,
          f"{tpu}:~/adatape-{commit}.tar.gz",
          "--worker=all",
          *target,
      ],
      [
          "gcloud",
          "compute",
          "tpus",
          "tpu-vm",
          "ssh",
          tpu,
          "--worker=all",
          *target,
          "--command",
          remote,
      ],
  ]


def head_commit() -> str:
  return subprocess.run(
      ["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"],
      check=True,
      capture_output=True,
      text=True,
  ).stdout.strip()


def main(argv: list[str]) -> int:
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1 :]
  else:
    extra = []
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tpu", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None)
  parser.add_argument(
      "--config",
      required=True,
      help="config path relative to the repo, with :ARGS",
  )
  parser.add_argument(
      "--workdir",
      required=True,
      help="shared by all workers, e.g. gs://bucket/run",
  )
  parser.add_argument(
      "--commit",
      default=None,
      help="what to run (default: HEAD; uncommitted " "changes are not sent)",
  )
  parser.add_argument(
      "--dry-run", action="store_true", help="print the commands, run nothing"
  )
  args = parser.parse_args(argv)
  config_path = args.config.split(":")[0]
  if not os.path.exists(os.path.join(REPO, config_path)):
    print(
        f"error: --config: {config_path} does not exist in {REPO}",
        file=sys.stderr,
    )
    return 2
  cmds = commands(
      tpu=args.tpu,
      zone=args.zone,
      project=args.project,
      config=args.config,
      workdir=args.workdir,
      commit=args.commit or head_commit(),
      extra=extra,
  )
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if not args.dry_run:
      subprocess.run(cmd, check=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
