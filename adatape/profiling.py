"""A profiler trace of chosen training steps (`profile_steps`).

`profile_steps=(first, last)` records a `jax.profiler` trace of steps
first..last-1 into WORKDIR/profile, which TensorBoard's profile tab reads
(`pip install tensorboard-plugin-profile`, then `tensorboard --logdir
WORKDIR`): the trace viewer shows each device op on a timeline, and the
op profile shows where step time goes. Pick steps after the first ones, so
that compilation is not in the window. On a remote workdir the trace is
written locally and copied there when it stops. Only process 0 traces.

`op_profile` reads such a trace without TensorBoard (which a remote
accelerator job cannot show): the XLA ops of the train step (or another
program), ranked by their own time, and how much of each run the device
was busy. `python -m experiments.profile_ops WORKDIR` prints it;
`experiments/throughput.py --profile=DIR` traces and ranks its steps.
"""

import collections
import os
import re
import shutil
import tempfile
from typing import Any, NamedTuple

import jax

from adatape import run_config
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


# Lines of a device plane that repeat or summarise the ops' own events.
_DERIVED_LINES = ("XLA Modules", "Steps", "Framework", "Source", "Launch")


class OpTime(NamedTuple):
  """One XLA op of a profiled program, over the whole trace."""

  name: str
  seconds: float  # Its own time: nested ops (a while's body) excluded.
  calls: int


class OpProfile(NamedTuple):
  """Where the time of a trace went, per XLA op.

  Attributes:
    path: the .xplane.pb read.
    plane: the device (or host, on a CPU) the ops ran on.
    module: the compiled program (`hlo_module`) whose ops are ranked.
    runs: how many times it ran in the trace (1 when the trace does not
      number its runs).
    busy_s: time during which at least one of its ops ran.
    span_s: summed over its runs, from the run's first op starting to its
      last op ending; `span_s - busy_s` is time the device waited inside
      the program (on the host, on launches, on a loop's condition).
    ops: by own time, largest first.
  """

  path: str
  plane: str
  module: str
  runs: int
  busy_s: float
  span_s: float
  ops: list[OpTime]


def find_trace(path: str) -> str:
  """The newest .xplane.pb of `path`: the file itself, a trace folder, or
  a workdir whose `profile` folder holds traces (`profile_steps`)."""
  if path.endswith(".xplane.pb"):
    run_config.check(storage.exists(path), f"no trace at {path}")
    return path
  for base in (path, storage.join(path, "profile")):
    runs = storage.join(base, "plugins", "profile")
    for stamp in reversed(storage.listdir(runs)):
      names = [
          n
          for n in storage.listdir(storage.join(runs, stamp))
          if n.endswith(".xplane.pb")
      ]
      if names:
        return storage.join(runs, stamp, names[0])
  raise run_config.ConfigError(
      f"no .xplane.pb trace under {path} (nor {path}/profile): record one "
      "with --config.profile_steps=(FIRST, LAST)"
  )


def _op_events(plane) -> list[tuple[int, str, int, str, int, int]]:
  """(line, module, run id, op, start ns, end ns) of every XLA op event;
  lines (threads, streams) by their index, since several may be unnamed."""
  lines = list(enumerate(plane.lines))
  if any(line.name == "XLA Ops" for _, line in lines):
    lines = [(i, line) for i, line in lines if line.name == "XLA Ops"]
  else:
    lines = [
        (i, line)
        for i, line in lines
        if not line.name.startswith(_DERIVED_LINES)
    ]
  events = []
  for index, line in lines:
    for event in line.events:
      stats = dict(event.stats)
      op = stats.get("hlo_op") or (event.name if line.name == "XLA Ops" else "")
      if not op:
        continue
      start = int(event.start_ns)
      events.append(
          (
              index,
              str(stats.get("hlo_module", "")),
              int(stats.get("run_id", 0)),
              str(op),
              start,
              start + int(event.duration_ns),
          )
      )
  return events


def own_times(events) -> dict[tuple[str, str], list[int]]:
  """Per (module, op): each event's time minus that of the events nested
  in it on the same line (a CPU `while` thunk contains its body's)."""
  times = collections.defaultdict(list)
  by_line = collections.defaultdict(list)
  for line, module, _, op, start, end in events:
    by_line[line].append((start, -end, module, op))
  for items in by_line.values():
    items.sort()
    stack = []  # [end, module, op, own ns]
    # A last item starting after every end closes whatever is still open.
    for start, neg_end, module, op in items + [(float("inf"), 0, "", "")]:
      end = -neg_end
      while stack and stack[-1][0] <= start:
        _, closed_module, closed_op, own = stack.pop()
        times[(closed_module, closed_op)].append(own)
      if stack:
        stack[-1][3] -= end - start
      stack.append([end, module, op, end - start])
  return times


def busy_ns(intervals: list[tuple[int, int]]) -> int:
  """Length of the union of [start, end) intervals."""
  busy, reach = 0, None
  for start, end in sorted(intervals):
    if reach is None or start > reach:
      busy += end - start
      reach = end
    elif end > reach:
      busy += end - reach
      reach = end
  return busy


def op_profile(path: str, module: str = "train_step") -> OpProfile:
  """Reads the newest trace of `path` (`find_trace`) and ranks the XLA ops
  of one compiled program: the busiest whose name contains `module` (the
  train step by default: an eval inside the traced steps is left out), or
  the busiest of all when none does. The first device plane (GPU, TPU)
  with op events is read, else the host's (a CPU's ops run on its
  threads); `plane` says which."""
  # Imported here: a core install reads traces only when asked to.
  from jax import profiler  # pylint: disable=g-import-not-at-top

  trace = find_trace(path)
  data = profiler.ProfileData.from_serialized_xspace(storage.read_bytes(trace))
  planes = [p for p in data.planes if p.name.startswith("/device:")]
  planes += [p for p in data.planes if p.name.startswith("/host:")]
  found = [(p.name, _op_events(p)) for p in planes]
  found = [(name, events) for name, events in found if events]
  run_config.check(bool(found), f"no XLA op events in {trace}")
  plane, events = found[0]
  totals = collections.Counter()
  for _, program, _, _, start, end in events:
    totals[program] += end - start
  named = [m for m, _ in totals.most_common() if module and module in m]
  module = named[0] if named else totals.most_common(1)[0][0]
  events = [e for e in events if e[1] == module]
  own = own_times(events)
  ops = sorted(
      (OpTime(op, sum(ns) / 1e9, len(ns)) for (_, op), ns in own.items()),
      key=lambda o: -o.seconds,
  )
  runs = collections.defaultdict(list)
  for _, _, run, _, start, end in events:
    runs[run].append((start, end))
  return OpProfile(
      path=trace,
      plane=plane,
      module=module,
      runs=len(runs),
      busy_s=busy_ns([(e[4], e[5]) for e in events]) / 1e9,
      span_s=sum(
          max(e for _, e in spans) - min(s for s, _ in spans)
          for spans in runs.values()
      )
      / 1e9,
      ops=ops,
  )


def op_sources(hlo_text: str) -> dict[str, str]:
  """Instruction name -> the jax op it came from (`op_name` metadata, e.g.
  `jit(train_step)/jvp(Model)/tape_1/bank_norm/mul`), from a compiled
  program's text (`compiled.as_text()`), whose names the trace's ops
  carry. An op XLA made without metadata of its own takes that of the
  computation it calls (a fusion's) or, inside a loop's body, of the
  computation it is in: their root's, or their first op that has one."""
  sources, calls, where, inner = {}, {}, {}, {}
  computation, entry = "", ""
  for line in hlo_text.splitlines():
    if not line.startswith(" "):
      header = re.match(r"(ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
      computation = header.group(2) if header else ""
      if header and header.group(1):
        entry = computation
      continue
    instruction = re.match(r"\s*(ROOT )?%?([\w.\-]+) = ", line)
    if not instruction:
      continue
    name = instruction.group(2)
    where[name] = computation
    op_name = re.search(r'op_name="([^"]*)"', line)
    if op_name:
      sources[name] = op_name.group(1)
      if instruction.group(1) or computation not in inner:
        inner[computation] = op_name.group(1)
    called = re.search(r"calls=%?([\w.\-]+)", line)
    if called:
      calls[name] = called.group(1)
  for name, computation in where.items():
    if name in sources:
      continue
    if calls.get(name) in inner:
      sources[name] = inner[calls[name]]
    elif computation != entry and computation in inner:
      sources[name] = inner[computation]
  return sources


# Scopes jax itself puts in op names (control flow), not modules.
_JAX_SCOPES = frozenset(("while", "body", "cond", "scan", "checkpoint"))


def model_part(op_name: str) -> str:
  """The model's submodule an op belongs to, by its `op_name`: the first
  module of its path (`encoderblock_3` -> `encoderblock_*`, `tape_1` ->
  `tape_*`, `bank`, ...), with `(backward)` for a gradient's op. Ops of
  the model outside its submodules (pooling, joining the tape) and ops
  outside the model (loss, optimizer, metrics) are named so."""
  if not op_name:
    return "(no op_name)"
  segments = [
      seg
      for seg in op_name.split("/")
      if seg
      and "(" not in seg
      and "->" not in seg  # An einsum's scope.
      and seg != "Model"
      and seg not in _JAX_SCOPES
  ]
  backward = " (backward)" if "transpose(" in op_name else ""
  if len(segments) >= 2:
    part = re.sub(r"_\d+$", "_*", segments[0])
  elif re.search(r"\bModel\b", op_name):
    part = "the model, outside its submodules"
  else:
    part = "outside the model (loss, optimizer, metrics)"
  return part + backward


def _in_command_buffer(op: str) -> bool:
  """Whether a GPU trace's op is a command buffer: XLA runs a whole
  sequence of a program's kernels as one CUDA graph, named so, and the
  trace times only the graph (the H200's ViT-S/16 train step: 93% of its
  ops' time in one, experiments/results/throughput_nvidia_h200.txt)."""
  return op.startswith("command_buffer")


def _kind(op: str) -> str:
  """An op's name without its instance number (`loop_add_fusion.12`)."""
  return re.sub(r"\.\d+$", "", op)


def _where(op_name: str) -> str:
  """An `op_name` without the program's scope and with each numbered
  module starred (`encoderblock_3` -> `encoderblock_*`), so that the same
  op of every layer adds up."""
  return re.sub(r"_\d+(?=/|$)", "_*", re.sub(r"^jit\([^)]*\)/", "", op_name))


def report(
    profile: OpProfile,
    steps: int = 0,
    top: int = 20,
    sources: dict[str, str] | None = None,
) -> list[str]:
  """The profile as text, per step: per run of the program, or per one of
  `steps` when given (a trace that does not number its runs). Tables: the
  `top` ops, then the ops added up by kind (the name without its
  instance number: the one matmul op of each layer, the one LayerNorm
  fusion of each block, add up there), and with the program's `sources`
  (`op_sources`) by the part of the model they compute (`model_part`),
  and by kind and the jax op they came from: the finest of the tables,
  which on the H200 showed ViT-S/16's LayerNorms moving through
  transposing fusions (experiments/results/
  throughput_nvidia_h200_sources.txt)."""
  steps = steps or profile.runs
  total = sum(o.seconds for o in profile.ops)
  tables = [("op", profile.ops)]
  groups = [("kind of op", _kind)]
  if sources is not None:
    groups.append(
        ("part of the model", lambda name: model_part(sources.get(name, "")))
    )
    groups.append(
        (
            "kind of op | where (layers as *)",
            lambda name: f"{_kind(name)} | {_where(sources.get(name, ''))}",
        )
    )
  for title, key in groups:
    added = {}
    for o in profile.ops:
      name = key(o.name)
      seconds, calls = added.get(name, (0.0, 0))
      added[name] = (seconds + o.seconds, calls + o.calls)
    tables.append(
        (
            title,
            sorted(
                (OpTime(k, *v) for k, v in added.items()),
                key=lambda o: -o.seconds,
            ),
        )
    )
  lines = [
      f"trace {profile.path}",
      f"{profile.plane}, program {profile.module}, {profile.runs} run(s); "
      f"per step of {steps}: ops busy {profile.busy_s * 1e3 / steps:.3f} ms"
      f" of {profile.span_s * 1e3 / steps:.3f} ms inside the program "
      f"({profile.busy_s / profile.span_s:.0%}), their own times "
      f"{total * 1e3 / steps:.3f} ms in "
      f"{sum(o.calls for o in profile.ops) / steps:g} calls of "
      f"{len(profile.ops)} ops",
  ]
  graphs = sum(o.seconds for o in profile.ops if _in_command_buffer(o.name))
  if graphs:
    lines.append(
        f"{graphs / total:.0%} of it ran in XLA command buffers (CUDA "
        "graphs), which a trace does not break into ops; for per-op times "
        "trace again with XLA_FLAGS=--xla_gpu_enable_command_buffer="
    )
  for title, rows in tables:
    lines.append(f"{'ms/step':>9}{'share':>7}{'calls/step':>11}  {title}")
    shown, rest = rows[:top], rows[top:]
    if rest:
      shown.append(
          OpTime(
              f"({len(rest)} others)",
              sum(o.seconds for o in rest),
              sum(o.calls for o in rest),
          )
      )
    for o in shown:
      lines.append(
          f"{o.seconds * 1e3 / steps:>9.3f}{o.seconds / total:>7.1%}"
          f"{o.calls / steps:>11g}  {o.name}"
      )
  return lines
