"""Orbax checkpoints of the train state plus the run's host-side position.

A checkpoint holds the train state (parameters, optimizer state, step, RNG
key) and a small JSON `meta` item: the data position and the accumulated
training time. Data batches are a pure function of the step, so the step is
the data position and a resumed run continues exactly. Saves are
asynchronous; a save interrupted by a kill leaves only a temporary folder,
which Orbax never treats as a checkpoint, so the latest finished step is
always the one restored.
"""

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every `every_steps` steps (and on request); restores the latest."""

  def __init__(self, directory: str, *, every_steps: int, max_to_keep: int):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps,
            max_to_keep=max_to_keep,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any],
           force: bool = False) -> bool:
    """Saves if `step` is due (or `force`); returns whether it saved."""
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        force=force)

  def restore(self, step: int, abstract_state: Any
              ) -> tuple[Any, dict[str, Any]]:
    """Restores into `abstract_state`'s shapes, dtypes and shardings."""
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
