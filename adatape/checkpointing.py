"""Orbax checkpoints of the train state plus the run's host-side position.

A checkpoint holds the train state (parameters, optimizer state, step, RNG
key) and a small JSON `meta` item: the data position and the accumulated
training time. Data batches are a pure function of the step, so the step is
the data position and a resumed run continues exactly. Saves are
asynchronous; a save interrupted by a kill leaves only a temporary folder,
which Orbax never treats as a checkpoint, so the latest finished step is
always the one restored; a finished checkpoint that was damaged afterwards
(truncated) is skipped for the previous one, with a warning.
"""

import os
import sys
from typing import Any

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """Checkpoints exist but none can be restored."""


class Checkpointer:
  """Saves every `every_steps` steps (and on request); restores the latest."""

  def __init__(self, directory: str, *, every_steps: int, max_to_keep: int):
    if "://" not in directory:
      directory = os.path.abspath(directory)  # Orbax wants absolute paths.
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps,
            max_to_keep=max_to_keep,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
        ),
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
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
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
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return restored.state, dict(restored.meta)

  def restore_latest(
      self, abstract_state: Any
  ) -> tuple[int, Any, dict[str, Any]] | None:
    """Restores the newest readable checkpoint, or None if there is none.

    A checkpoint that fails to restore (a truncated file, a disk error) is
    reported, deleted so that its step can be saved again, and the previous
    one is tried. If checkpoints exist but none is readable, that is an
    error: silently training from scratch would discard the run.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        state, meta = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(
            f"warning: checkpoint {step} in {self._manager.directory} is "
            f"unreadable ({type(e).__name__}: {first_line[:200]}); "
            "falling back to the previous one",
            file=sys.stderr,
            flush=True,
        )
        self._manager.delete(step)
        continue
      return step, state, meta
    if steps:
      raise CheckpointError(
          f"no readable checkpoint among steps {sorted(steps)} in "
          f"{self._manager.directory}; move them away to start over"
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
  restores the whole sharded state through `Checkpointer` instead.
  """
  directory = os.path.join(workdir, "checkpoints")
  if "://" not in directory:
    directory = os.path.abspath(directory)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True)
  )
  steps = sorted(manager.all_steps())
  if not steps:
    raise CheckpointError(f"no checkpoint in {directory}")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise CheckpointError(
        f"no checkpoint at step {step} in {directory}; steps: {steps}"
    )
  state = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
  ).state
  manager.close()
  return step, state["params"]
