"""Stopping cleanly on preemption: save at the current step, exit 0.

A TPU maintenance event or a cluster scheduler sends SIGTERM and allows
some seconds. The trainer checks `Flag.requested` between steps; when it
is set, it saves a checkpoint at the current step and raises `Preempted`,
which the command line turns into a clean exit, so re-running the same
command resumes exactly.
"""

import signal
import threading

import jax

from adatape import checkpointing


class Preempted(Exception):
  """SIGTERM (or a multi-host preemption notice) arrived; state was saved."""


class Flag:
  """Turns SIGTERM into a flag the training loop checks between steps.

  On one process a Python signal handler decides. With several processes
  every host must stop at the same step, so JAX's preemption sync point
  (through Orbax) decides instead. It is fed by the coordination service,
  which hears of the signal through the SIGTERM handler that
  `jax.distributed.initialize()` installs in the runtime; a Python handler
  would replace that one, and no host would ever learn of the preemption,
  so none is installed then.
  """

  def __init__(self):
    self._signalled = False
    self._previous = None
    if (
        jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()
    ):
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled = True

  def requested(self, ckpt: checkpointing.Checkpointer, step: int) -> bool:
    if jax.process_count() > 1:
      return ckpt.reached_preemption(step)
    return self._signalled

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
