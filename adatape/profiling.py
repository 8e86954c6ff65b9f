"""A profiler trace of chosen training steps (`profile_steps`).

`profile_steps=(first, last)` records a `jax.profiler` trace of steps
first..last-1 into WORKDIR/profile, which TensorBoard's profile tab reads
(`pip install tensorboard-plugin-profile`, then `tensorboard --logdir
WORKDIR`): the trace viewer shows each device op on a timeline, and the
op profile shows where step time goes. Pick steps after the first ones, so
that compilation is not in the window. On a remote workdir the trace is
written locally and copied there when it stops. Only process 0 traces.
"""

import os
import shutil
import tempfile
from typing import Any

import jax

from adatape import storage


class StepTrace:
  """Starts the trace before step `first`, stops it after step `last - 1`."""

  def __init__(self, workdir: str, steps: tuple[int, ...], enabled: bool):
    self._first, self._last = steps if steps else (-1, -1)
    self._enabled = enabled and bool(steps)
    self._target = storage.join(workdir, "profile")
    self._local = (
        self._target
        if storage.is_local(workdir)
        else tempfile.mkdtemp(prefix="adatape_profile_")
    )
    self._running = False

  def before(self, step: int) -> None:
    """Call before running step `step` (0-based)."""
    if self._enabled and step == self._first:
      jax.profiler.start_trace(self._local)
      self._running = True

  def after(self, step: int, state: Any) -> None:
    """Call after step `step` ran, with what it returned."""
    if self._running and step + 1 == self._last:
      self.stop(state)

  def stop(self, state: Any = None) -> None:
    """Ends the trace (waiting for the traced steps) and saves it."""
    if not self._running:
      return
    if state is not None:
      jax.block_until_ready(state)
    jax.profiler.stop_trace()
    self._running = False
    if self._local != self._target:
      for folder, _, names in os.walk(self._local):
        for name in names:
          path = os.path.join(folder, name)
          relative = os.path.relpath(path, self._local)
          with open(path, "rb") as f:
            storage.write_atomic(storage.join(self._target, relative), f.read())
      shutil.rmtree(self._local, ignore_errors=True)
    print(f"profile of steps {self._first}..{self._last - 1}: {self._target}")
