r"""Where a profiled step's time went, per XLA op, as text.

TensorBoard's profile tab shows a trace, but not from a remote accelerator
job whose only output is files. This prints the same first answer: the ops
of the busiest compiled program ranked by their own time (a while loop's
body counted once, in its ops), their calls per step, and how much of each
run of the program the device was busy (the rest: waiting on the host, on
kernel launches, on a loop's condition). Reader-loop ops show as many
calls per step as the tape has reading steps.

  python -m experiments.profile_ops WORKDIR [--steps=N] [--module=train_step]
      [--hlo=XLA_DUMP_DIR] [--top=20] [--out=F]

WORKDIR is a run trained with `--config.profile_steps=(FIRST, LAST)`, a
trace folder, or a .xplane.pb file. Figures are per run of the program
(the trace numbers them), or per one of `--steps` when given. With
`--hlo`, the optimized program XLA dumped during the same run (train with
XLA_FLAGS='--xla_dump_to=DIR --xla_dump_hlo_as_text'), a third table adds
the ops up by the part of the model they compute (encoder blocks, tape
reader, bank, their backward passes, the loss and optimizer).
"""

import argparse
import shlex
import sys

from adatape import profiling
from adatape import run_config
from adatape import storage


def optimized_hlo(path: str, module: str) -> str:
  """`path` itself, or in an XLA dump folder the last (by name) optimized
  HLO text of `module` (`module_0006.jit_train_step.cpu_after_optimizations
  .txt`), whose instruction names are those the trace's ops carry."""
  if not storage.isdir(path):
    run_config.check(storage.exists(path), f"--hlo={path} does not exist")
    return path
  names = [
      name
      for name in storage.listdir(path)
      if f".{module}." in name and name.endswith("_after_optimizations.txt")
  ]
  run_config.check(
      bool(names),
      f"--hlo={path} holds no *.{module}.*_after_optimizations.txt (dump "
      "with XLA_FLAGS='--xla_dump_to=DIR --xla_dump_hlo_as_text')",
  )
  return storage.join(path, names[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("path", help="a workdir, a trace folder or .xplane.pb")
  parser.add_argument(
      "--steps",
      type=int,
      default=0,
      help="steps in the trace (default: the program's runs in it)",
  )
  parser.add_argument(
      "--module",
      default="train_step",
      help="rank the busiest program whose name contains this (else the "
      "busiest of all)",
  )
  parser.add_argument(
      "--hlo",
      default="",
      help="the program's optimized HLO text, or the folder XLA dumped it "
      "to (XLA_FLAGS='--xla_dump_to=DIR --xla_dump_hlo_as_text'): adds the "
      "table by part of the model",
  )
  parser.add_argument("--top", type=int, default=20, help="ops listed")
  parser.add_argument("--out", default="", help="also write the report here")
  args = parser.parse_args()
  try:
    run_config.check(args.steps >= 0, f"--steps={args.steps} must be >= 0")
    run_config.check(args.top >= 1, f"--top={args.top} must be >= 1")
    profile = profiling.op_profile(args.path, args.module)
    sources = None
    if args.hlo:
      sources = profiling.op_sources(
          storage.read_text(optimized_hlo(args.hlo, profile.module))
      )
  except run_config.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  lines = [f"# python -m experiments.profile_ops {shlex.join(sys.argv[1:])}"]
  lines += profiling.report(profile, args.steps, args.top, sources)
  print("\n".join(lines))
  if args.out:
    storage.write_atomic(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
