"""Reading profiler traces as text: `profiling.op_profile` and
`experiments/profile_ops.py` (the train loop's own traces are tested in
test_main.py)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from adatape import profiling
from adatape import run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_own_time_leaves_out_nested_ops_and_busy_time_counts_overlap_once():
  # A loop op [0, 100) holding two body ops; another thread's op overlaps.
  events = [
      ("t0", "m", 1, "while", 0, 100),
      ("t0", "m", 1, "body_a", 10, 30),
      ("t0", "m", 1, "body_b", 40, 60),
      ("t0", "m", 1, "after", 100, 110),
      ("t1", "m", 1, "other_thread", 50, 130),
  ]
  own = profiling.own_times(events)
  assert own[("m", "while")] == [60]
  assert own[("m", "body_a")] == [20]
  assert own[("m", "body_b")] == [20]
  assert own[("m", "after")] == [10]
  assert own[("m", "other_thread")] == [80]
  assert profiling.busy_ns([(e[4], e[5]) for e in events]) == 130
  assert profiling.busy_ns([(0, 10), (20, 30)]) == 20


def test_a_loop_body_counts_one_call_per_iteration(tmp_path):
  @jax.jit
  def looped(x, n):
    def body(state):
      i, y = state
      return i + 1, jnp.sin(y) @ x

    return jax.lax.while_loop(lambda s: s[0] < n, body, (0, x))[1]

  x = jnp.eye(64) * 0.5
  jax.block_until_ready(looped(x, 5))  # Compile outside the trace.
  jax.profiler.start_trace(str(tmp_path))
  for _ in range(3):
    jax.block_until_ready(looped(x, 5))
  jax.profiler.stop_trace()

  profile = profiling.op_profile(str(tmp_path), module="looped")
  assert "looped" in profile.module
  assert profile.runs == 3
  assert 0 < profile.busy_s <= profile.span_s
  calls = {o.name: o.calls for o in profile.ops}
  assert any(name.startswith("while") for name in calls)
  # In each of the 3 runs the body (sine, matmul) ran 5 times and the
  # loop's condition 6 times.
  assert {15, 18} <= set(calls.values())
  assert max(calls.values()) == 18
  lines = profiling.report(profile, top=2)
  assert "3 run(s); per step of 3" in lines[1]
  assert lines[-1].endswith("other ops)")


def test_missing_traces_are_one_line_errors(tmp_path):
  with pytest.raises(run_config.ConfigError, match="no .xplane.pb trace"):
    profiling.find_trace(str(tmp_path))
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.profile_ops", str(tmp_path)],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=False,
  )
  assert proc.returncode == 2
  assert (
      proc.stderr.strip()
      .splitlines()[-1]
      .startswith("error: no .xplane.pb trace under")
  )
  assert proc.stdout == ""
