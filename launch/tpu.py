r"""Launch, follow and stop a run on every worker of a TPU VM slice.

  python -m launch.tpu --tpu=NAME --zone=ZONE [--project=P] \
      --config=configs/parity/adatape.py --workdir=gs://BUCKET/run \
      [--env TFDS_DATA_DIR=gs://BUCKET/tfds ...] [--follow] [--dry-run] \
      [-- --config.seed=3 ...]
  python -m launch.tpu --tpu=NAME --zone=ZONE --logs    # follow worker 0
  python -m launch.tpu --tpu=NAME --zone=ZONE --stop    # save and stop

Launching packs the committed tree (`git archive`), copies it to all
workers, unpacks it into ~/adatape-<commit>, and starts
`launch/tpu_worker.sh` on all workers at once, detached (`setsid nohup`):
the job outlives the SSH session, and each worker writes its own log,
~/adatape-logs/<name>.log (<name> from the workdir; `latest.log` links to
it). The worker script bootstraps a virtualenv with a supported Python and
`pip install -e .[tpu]`, then starts `python -m adatape.main` with
`jax.distributed.initialize()`; each host reads its own data shard,
process 0 writes logs, Orbax writes checkpoints collectively.

`--env KEY=VALUE` sets a variable for the job on every worker (data
locations, XLA or libtpu flags). `--follow` streams worker 0's log after
launching (Ctrl-C stops following, not the job). `--stop` sends SIGTERM
to the job on every worker: it saves a checkpoint at the current step
and exits; the same launch command resumes it. `--dry-run` prints the
exact commands and runs nothing.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGS = "~/adatape-logs"
# What --stop signals: the training (or sweep) processes of this project.
# The brackets keep the pattern from matching the shell that runs pkill.
_JOB_PATTERN = "[a]datape.main|[l]aunch.sweep"


def _gcloud(tpu: str, zone: str, project: str | None) -> list[str]:
  """The `gcloud ... tpu-vm ssh` prefix (without the command)."""
  return [
      "gcloud",
      "compute",
      "tpus",
      "tpu-vm",
      "ssh",
      tpu,
      "--zone",
      zone,
      *(["--project", project] if project else []),
  ]


def run_name(workdir: str) -> str:
  """A log name for a workdir: its last component, filesystem-safe."""
  base = workdir.rstrip("/").rsplit("/", 1)[-1] or "run"
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", base)


def env_assignments(pairs: list[str]) -> list[str]:
  """Validated `KEY=VALUE` strings; raises ValueError naming a bad one."""
  for pair in pairs:
    key, sep, _ = pair.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
      raise ValueError(f"--env {pair!r} is not KEY=VALUE")
  return list(pairs)


def detached(command: str, name: str) -> str:
  """`command`, started in its own session with output to the log."""
  log = f"{LOGS}/{name}.log"
  return (
      f"mkdir -p {LOGS} && ln -sfn {name}.log {LOGS}/latest.log && "
      f"{{ setsid nohup {command} > {log} 2>&1 < /dev/null & }} && "
      f"echo started on $(hostname): {log}"
  )


def commands(
    *,
    tpu: str,
    zone: str,
    project: str | None,
    commit: str,
    worker_args: list[str],
    name: str,
    env: list[str] | None = None,
    follow: bool = False,
) -> list[list[str]]:
  """The commands that launch a detached job on all workers, in order.

  Args:
    tpu, zone, project: the slice.
    commit: what to run (a commit of this repository).
    worker_args: the arguments of `launch/tpu_worker.sh`.
    name: the job's log name.
    env: `KEY=VALUE` variables for the job.
    follow: end with a command streaming worker 0's log.
  """
  archive = f"/tmp/adatape-{commit}.tar.gz"
  remote_dir = f"~/adatape-{commit}"
  target = ["--zone", zone] + (["--project", project] if project else [])
  job = " ".join(
      [
          *(["env", *[shlex.quote(a) for a in env]] if env else []),
          "bash",
          "launch/tpu_worker.sh",
          *[shlex.quote(a) for a in worker_args],
      ]
  )
  remote = (
      f"mkdir -p {remote_dir} && tar -xzf ~/adatape-{commit}.tar.gz "
      f"-C {remote_dir} && cd {remote_dir} && {detached(job, name)}"
  )
  result = [
      [
          "git",
          "-C",
          REPO,
          "archive",
          "--format=tar.gz",
          "-o",
          archive,
          commit,
      ],
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
      [*_gcloud(tpu, zone, project), "--worker=all", "--command", remote],
  ]
  if follow:
    result.append(follow_command(tpu=tpu, zone=zone, project=project))
  return result


def follow_command(*, tpu: str, zone: str, project: str | None) -> list[str]:
  """Streams worker 0's latest log (until Ctrl-C; the job goes on)."""
  return [
      *_gcloud(tpu, zone, project),
      "--worker=0",
      "--command",
      f"tail -n +1 -F {LOGS}/latest.log",
  ]


def stop_command(*, tpu: str, zone: str, project: str | None) -> list[str]:
  """SIGTERM to the job on every worker: it checkpoints and exits."""
  return [
      *_gcloud(tpu, zone, project),
      "--worker=all",
      "--command",
      f"pkill -TERM -f {shlex.quote(_JOB_PATTERN)} || echo no job on "
      "$(hostname)",
  ]


def head_commit() -> str:
  return subprocess.run(
      ["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"],
      check=True,
      capture_output=True,
      text=True,
  ).stdout.strip()


def execute(cmds: list[list[str]], dry_run: bool) -> None:
  """Prints each command; runs it unless `dry_run`."""
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if not dry_run:
      subprocess.run(cmd, check=True)


def add_slice_flags(parser: argparse.ArgumentParser) -> None:
  """The flags naming a slice and what to pass to its job."""
  parser.add_argument("--tpu", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None)
  parser.add_argument(
      "--env",
      action="append",
      default=[],
      metavar="KEY=VALUE",
      help="an environment variable for the job on every worker",
  )
  parser.add_argument(
      "--commit",
      default=None,
      help="what to run (default: HEAD; uncommitted changes are not sent)",
  )
  parser.add_argument(
      "--follow",
      action="store_true",
      help="stream worker 0's log after launching",
  )


def main(argv: list[str]) -> int:
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1 :]
  else:
    extra = []
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_slice_flags(parser)
  parser.add_argument(
      "--config", help="config path relative to the repo, with :ARGS"
  )
  parser.add_argument(
      "--workdir", help="shared by all workers, e.g. gs://bucket/run"
  )
  parser.add_argument(
      "--logs", action="store_true", help="only follow worker 0's log"
  )
  parser.add_argument(
      "--stop",
      action="store_true",
      help="SIGTERM the job on every worker (it checkpoints and exits)",
  )
  parser.add_argument(
      "--dry-run", action="store_true", help="print the commands, run nothing"
  )
  args = parser.parse_args(argv)
  where = dict(tpu=args.tpu, zone=args.zone, project=args.project)
  if args.stop:
    execute([stop_command(**where)], args.dry_run)
    return 0
  if args.logs:
    execute([follow_command(**where)], args.dry_run)
    return 0
  if not args.config or not args.workdir:
    parser.error("--config and --workdir are required to launch")
  config_path = args.config.split(":")[0]
  if not os.path.exists(os.path.join(REPO, config_path)):
    print(
        f"error: --config: {config_path} does not exist in {REPO}",
        file=sys.stderr,
    )
    return 2
  try:
    env = env_assignments(args.env)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  cmds = commands(
      **where,
      commit=args.commit or head_commit(),
      worker_args=[f"--config={args.config}", f"--workdir={args.workdir}"]
      + extra,
      name=run_name(args.workdir),
      env=env,
      follow=args.follow,
  )
  execute(cmds, args.dry_run)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
