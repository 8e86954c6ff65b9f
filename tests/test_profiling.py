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


def _profile_ops(*args):
  return subprocess.run(
      [sys.executable, "-m", "experiments.profile_ops", *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=False,
  )


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
  # The command line prints the same tables, and with the program's
  # optimized HLO (as XLA dumps it) the table by part of the model.
  dump = tmp_path / "xla_dump"
  dump.mkdir()
  (dump / "module_0001.jit_looped.cpu_after_optimizations.txt").write_text(
      looped.lower(x, 5).compile().as_text()
  )
  proc = _profile_ops(
      str(tmp_path), "--module=looped", "--top=2", f"--hlo={dump}"
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "3 run(s); per step of 3" in proc.stdout
  parts = proc.stdout.split("part of the model\n")[1].splitlines()
  # No Flax module in this program: its ops are all "outside the model".
  assert "outside the model" in parts[0]
  lines = profiling.report(profile, top=2)
  assert "3 run(s); per step of 3" in lines[1]
  assert any(line.endswith("others)") for line in lines)
  # --steps divides by the steps given (3 runs as one step: the loop's
  # condition 18 calls per step, not 6); --out writes what it printed.
  out = tmp_path / "ops.txt"
  proc = _profile_ops(
      str(tmp_path), "--module=looped", "--steps=1", f"--out={out}"
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  written = out.read_text().splitlines()
  assert proc.stdout.splitlines() == written + [f"wrote {out}"]
  assert written[0].endswith(f"--steps=1 --out={out}")
  assert written[1:] == profiling.report(profile, steps=1)
  assert "3 run(s); per step of 1" in written[2]
  kinds = next(i for i, line in enumerate(written) if "kind of op" in line)
  op_rows = written[4:kinds]
  assert max(float(row.split()[2]) for row in op_rows) == 18


def test_missing_traces_are_one_line_errors(tmp_path):
  with pytest.raises(run_config.ConfigError, match="no .xplane.pb trace"):
    profiling.find_trace(str(tmp_path))
  proc = _profile_ops(str(tmp_path))
  assert proc.returncode == 2
  assert (
      proc.stderr.strip()
      .splitlines()[-1]
      .startswith("error: no .xplane.pb trace under")
  )
  assert proc.stdout == ""


HLO = """HloModule jit_train_step

%fused_computation.1 (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %mul.1 = f32[4]{0} multiply(%p, %p), metadata={op_name="jit(train_step)/jvp(Model)/tape_1/bank_norm/mul"}
}

%body.2 (s: f32[4]) -> f32[4] {
  %s = f32[4]{0} parameter(0)
  %dot.3 = f32[4]{0} dot(%s, %s)
  ROOT %add.4 = f32[4]{0} add(%dot.3, %s), metadata={op_name="jit(train_step)/transpose(jvp(Model))/tape_1/while/body/add"}
}

ENTRY %main.5 (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %mul_fusion = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_computation.1
  %while.6 = f32[4]{0} while(%mul_fusion), condition=%cond, body=%body.2
  %copy.7 = f32[4]{0} copy(%while.6)
  ROOT %sub.8 = f32[4]{0} subtract(%copy.7, %x), metadata={op_name="jit(train_step)/sub"}
}
"""


def test_ops_are_traced_to_the_part_of_the_model_they_compute():
  sources = profiling.op_sources(HLO)
  # A fusion without metadata takes its fused computation's; an op of a
  # loop's body, its body's; an op of the entry computation, only its own.
  assert sources["mul_fusion"].endswith("tape_1/bank_norm/mul")
  assert sources["dot.3"].endswith("tape_1/while/body/add")
  assert "copy.7" not in sources
  parts = {
      name: profiling.model_part(sources.get(name, ""))
      for name in ("mul_fusion", "dot.3", "sub.8", "copy.7")
  }
  assert parts == {
      "mul_fusion": "tape_*",
      "dot.3": "tape_* (backward)",
      "sub.8": "outside the model (loss, optimizer, metrics)",
      "copy.7": "(no op_name)",
  }
  assert (
      profiling.model_part("jit(f)/Model/encoderblock_11/mlp/dot_general")
      == "encoderblock_*"
  )
  assert (
      profiling.model_part("jit(f)/jvp(Model)/tape_1/while/body/dot_general")
      == "tape_*"
  )
  assert (
      profiling.model_part("jit(f)/jvp(Model)/bl,bld->bd/dot_general")
      == "the model, outside its submodules"
  )
  ops = [
      profiling.OpTime("dot.3", 2.0, 10),
      profiling.OpTime("mul_fusion", 1.0, 2),
      profiling.OpTime("sub.8", 1.0, 2),
  ]
  profile = profiling.OpProfile("t", "cpu", "train_step", 2, 3.0, 4.0, ops)
  lines = profiling.report(profile, top=5, sources=sources)
  title = f"{'ms/step':>9}{'share':>7}{'calls/step':>11}  part of the model"
  parts_table = lines[lines.index(title) + 1 :]
  # Per step of 2 runs: 2 s / 2 = 1000 ms, half the ops' time, 5 calls.
  assert parts_table[0].split() == [
      "1000.000",
      "50.0%",
      "5",
      "tape_*",
      "(backward)",
  ]
  assert [line.split()[-1] for line in parts_table[1:3]] == [
      "tape_*",
      "metrics)",
  ]
  # The finest table: kind and source, the program's scope dropped and the
  # layer starred, so that one op of every layer adds up.
  title = f"{'ms/step':>9}{'share':>7}{'calls/step':>11}  kind of op | where"
  where = lines[[l.startswith(title) for l in lines].index(True) + 1 :]
  assert [line.split(None, 3)[3] for line in where] == [
      "dot | transpose(jvp(Model))/tape_*/while/body/add",
      "mul_fusion | jvp(Model)/tape_*/bank_norm/mul",
      "sub | sub",
  ]


def test_time_in_command_buffers_is_named_with_the_flag_that_opens_them():
  # A GPU trace times a CUDA graph as one op: the report says how much of
  # the step is so hidden, and how to trace without command buffers.
  ops = [
      profiling.OpTime("command_buffer_110", 3.0, 6),
      profiling.OpTime("cudnn-conv.3", 1.0, 2),
  ]
  profile = profiling.OpProfile("t", "gpu", "train_step", 2, 4.0, 5.0, ops)
  notes = [l for l in profiling.report(profile) if "command buffers" in l]
  assert len(notes) == 1
  assert notes[0].startswith("75% of it ran in XLA command buffers")
  assert notes[0].endswith("XLA_FLAGS=--xla_gpu_enable_command_buffer=")
  ops = [profiling.OpTime("fusion.3", 1.0, 2)]
  profile = profiling.OpProfile("t", "cpu", "train_step", 2, 1.0, 1.0, ops)
  assert not [l for l in profiling.report(profile) if "command" in l]
