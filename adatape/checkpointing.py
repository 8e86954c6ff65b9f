"""Orbax checkpoints of the train state plus the run's host-side position.

A checkpoint holds the train state (parameters, optimizer state, step, RNG
key) and a small JSON `meta` item: the data position and the accumulated
training time. Data batches are a pure function of the step, so the step is
the data position and a resumed run continues exactly. Saves are
asynchronous; a save interrupted by a kill leaves only a temporary folder,
which Orbax never treats as a checkpoint, so the latest finished step is
always the one restored.

No error deletes a checkpoint. When the latest one cannot be restored:
- if it is shown to be damaged (its metadata is missing or unparsable, or
  reading its arrays fails with a data error: a truncated or missing
  file), it is moved to `checkpoints/damaged/STEP` with a warning, and the
  previous one is tried;
- otherwise (the model's parameters differ from the checkpoint's: a
  renamed or reshaped parameter; out of memory; a transient I/O error) the
  run stops with one line naming the cause, every checkpoint intact.
The errors that the failed read leaves behind are not printed (see
`StrayReads`), so that line is what the user sees.
"""

import json
import logging
import os
import re
import sys
import traceback
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp

from adatape import storage

# Where damaged checkpoints are moved, inside the checkpoint directory.
DAMAGED = "damaged"

# Status codes (absl / TensorStore) and errors that mean the bytes on disk
# are bad, as opposed to a failure to read them right now.
_DATA_ERRORS = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND", "Error decoding")
_DATA_EXCEPTIONS = (
    json.JSONDecodeError,
    UnicodeDecodeError,
    EOFError,
    FileNotFoundError,
)


class CheckpointError(RuntimeError):
  """Checkpoints exist but cannot be used; none was changed."""


def _absolute(directory: str) -> str:
  """Orbax wants absolute paths (URLs stay as they are)."""
  return directory if "://" in directory else os.path.abspath(directory)


def _chain(error: BaseException) -> list[BaseException]:
  """`error` and its causes."""
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


# TensorStore ends every error with the JSON spec of the store it read (a
# few hundred characters of driver options); the message before it names
# the file and the reason.
_TENSORSTORE_SPEC = re.compile(r"\s*\[tensorstore_spec='.*'\]$")
# A cause longer than this keeps its head (what was being read) and its
# tail: TensorStore nests its messages outside in, so the reason ("...
# not valid for value of size 11784") comes last.
_CAUSE_HEAD, _CAUSE_TAIL, _ELISION = 140, 260, " ... "


def _first_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  line = _TENSORSTORE_SPEC.sub("", (lines or [""])[0])
  if len(line) > _CAUSE_HEAD + len(_ELISION) + _CAUSE_TAIL:
    line = line[:_CAUSE_HEAD] + _ELISION + line[-_CAUSE_TAIL:]
  return f"{type(error).__name__}: {line}"


def is_damage(error: BaseException) -> bool:
  """Whether a restore error shows that the checkpoint's files are bad."""
  for e in _chain(error):
    if isinstance(e, _DATA_EXCEPTIONS):
      return True
    if any(code in str(e) for code in _DATA_ERRORS):
      return True
  return False


def _cause(error: BaseException) -> str:
  """The most specific line of an error chain (the root cause)."""
  return _first_line(_chain(error)[-1])


def _tree_of(metadata: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{path: (shape, dtype)} of a checkpoint's saved state (from its
  metadata) or of an abstract state."""
  leaves = jax.tree_util.tree_leaves_with_path(
      metadata, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
  )
  return {
      jax.tree_util.keystr(path, simple=True, separator="/"): (
          tuple(leaf.shape),
          str(leaf.dtype),
      )
      for path, leaf in leaves
  }


def mismatch(saved: Any, abstract: Any) -> str | None:
  """What differs between a saved state's metadata and the state this run
  builds, in one phrase; None if they have the same leaves and shapes."""
  have, want = _tree_of(saved), _tree_of(abstract)
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  if missing or extra:
    parts = []
    if missing:
      parts.append(
          f"this model has {missing[0]}"
          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
          + " which the checkpoint lacks"
      )
    if extra:
      parts.append(
          f"the checkpoint has {extra[0]}"
          + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
          + " which this model lacks"
      )
    return "; ".join(parts)
  for path in sorted(want):
    if have[path][0] != want[path][0]:
      return (
          f"{path} has shape {have[path][0]} in the checkpoint but "
          f"{want[path][0]} in this model"
      )
  return None


# When one of a checkpoint's concurrent reads fails, Orbax closes the event
# loop that ran them while TensorStore is still finishing the others. Each
# of those then wakes the closed loop from its own thread (Python prints the
# RuntimeError as "Exception ignored"), and a task that failed as well is
# logged as "Task exception was never retrieved" once collected: 25 to 114
# tracebacks on stderr in five resumes past a truncated tiny parity
# checkpoint, the one line that says what happened somewhere among them
# (experiments/results/damaged_resume_cpu.txt).


def is_stray_read(unraisable: Any) -> bool:
  """Whether an unraisable error is a failed read's leftover: a closed
  event loop woken from another thread."""
  error = unraisable.exc_value
  if not isinstance(error, RuntimeError):
    return False
  if str(error) != "Event loop is closed":
    return False
  frames = traceback.extract_tb(unraisable.exc_traceback)
  return any(frame.name == "call_soon_threadsafe" for frame in frames)


def is_unretrieved_damage(record: logging.LogRecord) -> bool:
  """Whether an asyncio log record is a failed read's leftover: a task's
  data error (`is_damage`) that nothing retrieved."""
  if not str(record.msg).startswith("Task exception was never retrieved"):
    return False
  error = record.exc_info[1] if record.exc_info else None
  return error is not None and is_damage(error)


class StrayReads(logging.Filter):
  """Drops a failed read's leftovers while installed: a `sys.unraisablehook`
  that hands every other error to the hook it replaced, and a filter on
  asyncio's logger."""

  def __init__(self):
    super().__init__()
    self._previous = None  # The hook this one replaced, while chained.
    self._dropping = False

  def __call__(self, unraisable: Any) -> None:
    if self._dropping and is_stray_read(unraisable):
      return
    (self._previous or sys.__unraisablehook__)(unraisable)

  def filter(self, record: logging.LogRecord) -> bool:
    return not (self._dropping and is_unretrieved_damage(record))

  def install(self) -> None:
    if self._previous is None:
      self._previous = sys.unraisablehook
      sys.unraisablehook = self
    logging.getLogger("asyncio").addFilter(self)
    self._dropping = True

  def remove(self) -> None:
    """Stops dropping, and unhooks unless a later hook wraps this one (it
    then stays in the chain, passing everything on)."""
    self._dropping = False
    logging.getLogger("asyncio").removeFilter(self)
    if sys.unraisablehook is self:
      sys.unraisablehook = self._previous
      self._previous = None


# One for the process, installed by its first checkpoint read and kept: a
# failed read's leftovers come after the failure, for as long as its other
# reads take, and nothing else matches them.
_STRAY_READS = StrayReads()


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's standard handler for the train state, except that a single
  process writes each replicated array from one of its devices.

  By default Orbax splits a replicated array into one slice per replica
  ("replica-parallel"), so that several hosts share its writing. On one
  process every replica is local: the split only adds a sliced copy per
  array and device to the part of the save that blocks the train loop,
  and writes each array in as many pieces. On 8 CPU devices that made
  the save call 5-10x longer (parity AdaTape: 410 -> 83 ms, 984 slices;
  a ViT-S/16-sized AdaTape: 1457 -> 198 ms;
  experiments/results/checkpoint_save_cpu.txt). Several processes keep
  Orbax's default. The files are the same format either way: each
  setting restores the other's.
  """
  handlers = {
      t: ocp.type_handlers.get_type_handler(t)
      for t in ocp.type_handlers.supported_types()
  }
  handlers[jax.Array] = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=jax.process_count() > 1,
      # The default handler's per-array metadata store, so that the files
      # are those it writes.
      array_metadata_store=handlers[jax.Array]._array_metadata_store,  # pylint: disable=protected-access
  )
  registry = ocp.type_handlers.create_type_handler_registry(*handlers.items())
  # The concurrency limits StandardCheckpointHandler sets.
  return ocp.PyTreeCheckpointHandler(
      save_concurrent_gb=96,
      restore_concurrent_gb=96,
      type_handler_registry=registry,
  )


class Checkpointer:
  """Saves every `every_steps` steps (and on request); restores the latest."""

  def __init__(self, directory: str, *, every_steps: int, max_to_keep: int):
    self._directory = _absolute(directory)
    self._manager = ocp.CheckpointManager(
        self._directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps,
            max_to_keep=max_to_keep,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
        ),
        item_handlers={
            "state": _state_handler(),
            "meta": ocp.JsonCheckpointHandler(),
        },
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(
      self, step: int, state: Any, meta: dict[str, Any], force: bool = False
  ) -> bool:
    """Saves if `step` is due (or `force`); returns whether it saved."""
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)
        ),
        force=force,
    )

  def restore(
      self, step: int, abstract_state: Any
  ) -> tuple[Any, dict[str, Any]]:
    """Restores into `abstract_state`'s shapes, dtypes and shardings."""
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract_state,
                restore_args=ocp.checkpoint_utils.construct_restore_args(
                    abstract_state
                ),
            ),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored.state, dict(restored.meta)

  def _saved_metadata(self, step: int) -> Any:
    """The saved state's tree of array metadata; raises if unreadable."""
    step_dir = storage.join(self._directory, str(step))
    json.loads(storage.read_text(storage.join(step_dir, "meta", "metadata")))
    metadata = ocp.StandardCheckpointHandler().metadata(
        epath.Path(storage.join(step_dir, "state"))
    )
    return getattr(metadata, "tree", metadata)

  def _set_aside(self, step: int, why: str) -> None:
    """Moves a damaged checkpoint to `damaged/STEP` (never deletes it)."""
    target = storage.join(self._directory, DAMAGED, str(step))
    suffix = 1
    while storage.exists(target):
      target = storage.join(self._directory, DAMAGED, f"{step}.{suffix}")
      suffix += 1
    if jax.process_index() == 0:
      storage.makedirs(storage.join(self._directory, DAMAGED))
      storage.move(storage.join(self._directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices(f"adatape_damaged_{step}")
    self._manager.reload()
    print(
        f"warning: checkpoint {step} in {self._directory} is damaged "
        f"({why}); moved to {target}; falling back to the previous one",
        file=sys.stderr,
        flush=True,
    )

  def restore_latest(
      self, abstract_state: Any
  ) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest usable checkpoint, or None if there is none.

    A damaged checkpoint is moved aside and the previous one tried; any
    other failure raises CheckpointError with every checkpoint intact (see
    the module docstring). Checkpoints that all turn out damaged are an
    error too: silently training from scratch would discard the run.

    A failed read's leftovers (`is_stray_read`, `is_unretrieved_damage`)
    are dropped, not printed.
    """
    _STRAY_READS.install()
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        saved = self._saved_metadata(step)
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, f"unreadable metadata: {_cause(e)}")
        continue
      different = mismatch(saved, abstract_state)
      if different:
        raise CheckpointError(
            f"checkpoint {step} in {self._directory} does not fit this "
            f"model: {different}; no checkpoint was changed (resume with the "
            "code that wrote it, or use a new --workdir)"
        )
      try:
        state, meta = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        if not is_damage(e):
          raise CheckpointError(
              f"checkpoint {step} in {self._directory} could not be "
              f"restored ({_cause(e)}); no checkpoint was changed"
          ) from e
        self._set_aside(step, _cause(e))
        continue
      return step, state, meta
    if steps:
      raise CheckpointError(
          f"every checkpoint in {self._directory} (steps "
          f"{sorted(steps)}) was damaged and has been moved to "
          f"{storage.join(self._directory, DAMAGED)}; run again to start "
          "over"
      )
    return None

  def reached_preemption(self, step: int) -> bool:
    """JAX's multi-host preemption sync point (False on a single process)."""
    return self._manager.reached_preemption(step)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def restore_params(workdir: str, step: int | None = None) -> tuple[int, Any]:
  """(step, params) of a run's checkpoint (default: the latest), on host.

  For evaluation and analysis of finished runs on one process; training
  restores the whole sharded state through `Checkpointer` instead. A
  checkpoint that cannot be read is a one-line CheckpointError naming the
  run's other steps; nothing is moved (this only reads).
  """
  directory = _absolute(storage.join(workdir, "checkpoints"))
  options = ocp.CheckpointManagerOptions(read_only=True)
  with ocp.CheckpointManager(directory, options=options) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise CheckpointError(f"no checkpoint in {directory}")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise CheckpointError(
          f"no checkpoint at step {step} in {directory}; steps: {steps}"
      )
    _STRAY_READS.install()
    try:
      state = manager.restore(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(on_one_device(directory, step))
          ),
      ).state
    except Exception as e:  # pylint: disable=broad-except
      others = [s for s in steps if s != step]
      raise CheckpointError(
          f"checkpoint {step} in {directory} "
          + ("is damaged" if is_damage(e) else "could not be read")
          + f" ({_cause(e)}); other steps there: {others or 'none'}"
      ) from e
  return step, state["params"]


def on_one_device(directory: str, step: int) -> Any:
  """The abstract state of checkpoint `step` in `directory`, placed on
  this process's first device: a run saved by several hosts (another
  topology) then restores on one."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  metadata = ocp.StandardCheckpointHandler().metadata(
      epath.Path(storage.join(directory, str(step), "state"))
  )
  return jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      getattr(metadata, "tree", metadata),
      is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"),
  )
