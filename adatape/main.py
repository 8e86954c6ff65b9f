r"""Command line: train any config, resuming from the workdir.

  python -m adatape.main --config=configs/parity/adatape.py[:ARGS] \
      --workdir=DIR [--config.KEY=VALUE ...] [--compilation_cache=DIR]

Bad input (missing config file, unknown key, wrong type, impossible value)
ends with one line on stderr naming the problem and exit status 2, before
anything is written to the workdir. SIGTERM (preemption) saves a checkpoint
at the current step and exits with status 0; the same command resumes.
Set ADATAPE_DISTRIBUTED=1 to call
`jax.distributed.initialize()` first (multi-host jobs); off a TPU VM, also
set ADATAPE_COORDINATOR=host:port, ADATAPE_NUM_PROCESSES and
ADATAPE_PROCESS_ID.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a config file, optionally with :ARGS.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs and results."
)
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    os.environ.get("ADATAPE_COMPILATION_CACHE", ""),
    "A folder (local or gs://) for JAX's persistent compilation cache: a "
    "repeated run or sweep point loads its compiled steps instead of "
    "compiling them again. Default: $ADATAPE_COMPILATION_CACHE, else off.",
)


def _fail(message: str, status: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses flags, turning every config problem into one line."""
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is None:
      _fail("--config is required (e.g. --config=configs/parity/adatape.py)")
    # The config file loads lazily; touch it so that a missing or broken
    # file is reported here, as one line.
    list(_CONFIG.value.keys())
  except flags.Error as e:
    _fail(_one_line(e))
  except (AttributeError, KeyError) as e:
    # A --config.KEY=VALUE override naming a key the config does not have.
    key = str(e).strip("\"' ")
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    named = [o for o in overrides if o.split(".")[-1] == key]
    _fail(
        f"{named[0] if named else '--config'}: {key!r} is not a key of "
        "the config (it is locked; see the config file for valid keys)"
    )
  except Exception as e:  # pylint: disable=broad-except
    # Errors raised while executing the config file (a bad `:ARG`, a typo).
    _fail(f"--config: {_one_line(e)}")
  if not _WORKDIR.value:
    _fail("--workdir is required")
  return rest


def _one_line(error: BaseException) -> str:
  text = str(error).strip()
  # absl wraps errors as "flag --config=...: <message>"; keep the message
  # and any "valid keys" hint, drop multi-line tracebacks.
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def main(argv: list[str]) -> None:
  del argv
  # Imported here so that flag errors are reported without importing jax.
  from adatape import checkpointing  # pylint: disable=g-import-not-at-top
  from adatape import models  # pylint: disable=g-import-not-at-top
  from adatape import preemption  # pylint: disable=g-import-not-at-top
  from adatape import reporting  # pylint: disable=g-import-not-at-top
  from adatape import run_config  # pylint: disable=g-import-not-at-top
  from adatape import train  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  if os.environ.get("ADATAPE_DISTRIBUTED") == "1":
    # On TPU VMs (and SLURM) JAX finds the coordinator itself; elsewhere
    # name it, e.g. for several processes on one machine.
    explicit = {}
    if "ADATAPE_COORDINATOR" in os.environ:
      explicit = dict(
          coordinator_address=os.environ["ADATAPE_COORDINATOR"],
          num_processes=int(os.environ["ADATAPE_NUM_PROCESSES"]),
          process_id=int(os.environ["ADATAPE_PROCESS_ID"]),
      )
    jax.distributed.initialize(**explicit)
  if _COMPILATION_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE.value)
    # Cache every compilation of a second or more (the train and eval steps).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value
  try:
    results = train.train_and_evaluate(_CONFIG.value, workdir)
  except run_config.ConfigError as e:
    _fail(str(e))
  except train.NonFiniteError as e:
    _fail(str(e), status=1)
  except checkpointing.CheckpointError as e:
    _fail(str(e), status=1)
  except preemption.Preempted as e:
    # A clean stop: the state is saved and the same command resumes.
    print(str(e), flush=True)
    return
  if jax.process_index() == 0:
    print(reporting.summary(results, models.metrics(results["model"])))
    print(f"results:     {os.path.join(workdir, 'results.json')}")
    print(f"checkpoints: {os.path.join(workdir, 'checkpoints')}")
    print(f"tensorboard: tensorboard --logdir {workdir}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
