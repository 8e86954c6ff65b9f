"""What a run writes for people and programs to read.

  console       one progress line per log step: loss, accuracy, the
                model's labelled metrics (tape length, ACT steps, ...),
                steps/s and ETA;
  TensorBoard   event files in the workdir (`tensorboard --logdir DIR`),
                written without TensorFlow;
  metrics.jsonl one JSON object per logged step, `{"step": N, ...}`;
  results.json  written once, atomically, when the run finishes.

Workdirs may be local or URLs (gs://...; see `storage.py`), so a TPU pod
writes its logs straight to a bucket. Only process 0 writes files. Rows
and events are buffered and written by a background thread at every
`flush()` (the trainer flushes at evals, checkpoints and the end, SIGTERM
included): the training loop never waits on a bucket, and on an object
store, where an append rewrites the object, that happens a few times per
run instead of at every log step. On resume, rows of metrics.jsonl past the
restored step (logged after the last checkpoint) are dropped, so the file
always describes the run that the checkpoints continue.
"""

import concurrent.futures
import csv
import io
import json
import math
import os
import socket
import struct
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

from adatape import storage
from adatape.models import outputs


def console_keys(
    metrics: Sequence[outputs.Metric],
) -> tuple[tuple[str, str, str], ...]:
  """(key, label, format) of the progress line: loss and accuracy, each
  of the model's labelled metrics in train and eval, and steps/s."""
  labelled = [m for m in metrics if m.label]
  return (
      (("train/loss", "loss", "{:.4f}"), ("train/accuracy", "acc", "{:.3f}"))
      + tuple((f"train/{m.name}", m.label, "{:.2f}") for m in labelled)
      + (("eval/accuracy", "eval acc", "{:.4f}"),)
      + tuple((f"eval/{m.name}", f"eval {m.label}", "{:.2f}") for m in labelled)
      + (("perf/steps_per_sec", "steps/s", "{:.1f}"),)
  )


def summary(
    results: Mapping[str, Any], metrics: Sequence[outputs.Metric]
) -> str:
  """The one line a finished run ends with: accuracy, the model's
  labelled metrics, steps and time."""
  parts = [f"final eval accuracy {results['eval/accuracy']:.4f}"]
  for m in metrics:
    if m.label and f"eval/{m.name}" in results:
      value = results[f"eval/{m.name}"]
      parts.append(f"mean {m.name.replace('_', ' ')} {value:.2f}")
  parts.append(f"{results['steps']} steps in {results['wall_time_s']:.0f}s")
  return "; ".join(parts)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def progress_line(
    step: int,
    total: int,
    scalars: Mapping[str, Any],
    keys: Sequence[tuple[str, str, str]],
) -> str:
  """`step N/T | loss ... | ETA ...`: the scalars named in `keys`."""
  parts = [f"step {step}/{total}"]
  for key, label, fmt in keys:
    if key in scalars:
      parts.append(f"{label} {fmt.format(float(scalars[key]))}")
  if "perf/eta_sec" in scalars:
    parts.append(f"ETA {_duration(float(scalars['perf/eta_sec']))}")
  return " | ".join(parts)


def read_json(path: str) -> Any:
  """Reads JSON from a local path or a URL (gs://...)."""
  return json.loads(storage.read_text(path))


def atomic_write_json(path: str, payload: Any) -> None:
  """Writes JSON so that a reader sees the whole old or new file."""
  storage.write_atomic(
      path, json.dumps(payload, indent=2, sort_keys=True) + "\n"
  )


def write_table(
    rows: list[dict[str, Any]],
    path_prefix: str,
    keys: list[str],
    markdown_keys: list[str] | None = None,
) -> str:
  """Writes rows as `<prefix>.csv` and `<prefix>.md`; returns the markdown.

  The CSV has `keys` with full precision; the markdown has `markdown_keys`
  (default: the same) with floats to 4 significant digits.
  """
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
  writer.writeheader()
  writer.writerows(rows)
  storage.write_atomic(path_prefix + ".csv", buffer.getvalue())
  keys = markdown_keys or keys
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  for row in rows:
    lines.append(
        "| "
        + " | ".join(
            f"{row[k]:.4g}"
            if isinstance(row.get(k), float)
            else str(row.get(k, "-"))
            for k in keys
        )
        + " |"
    )
  markdown = "\n".join(lines) + "\n"
  storage.write_atomic(path_prefix + ".md", markdown)
  return markdown


def _record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC-32C, the data, its CRC."""
  header = struct.pack("<Q", len(data))
  crc = pywrap_tensorflow.masked_crc32c
  return (
      header
      + struct.pack("<I", crc(header))
      + data
      + struct.pack("<I", crc(data))
  )


class EventFile:
  """TensorBoard scalars in the event-file format, without TensorFlow.

  Records are kept until `take()`: locally they are appended to one
  event file; on an object store, which cannot append, each flush writes a
  new event file (TensorBoard reads every event file of a directory).
  """

  def __init__(self, logdir: str):
    self._logdir = logdir
    self._name = (
        f"events.out.tfevents.{int(time.time())}."
        f"{socket.gethostname()}.{os.getpid()}"
    )
    self._part = 0
    self._pending: list[bytes] = []

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    summary_proto = summary_pb2.Summary(
        value=[
            summary_pb2.Summary.Value(tag=k, simple_value=float(v))
            for k, v in scalars.items()
        ]
    )
    event = event_pb2.Event(
        wall_time=time.time(), step=step, summary=summary_proto
    )
    self._pending.append(_record(event.SerializeToString()))

  def take(self) -> Callable[[], None] | None:
    """A function writing the records added since the last `take`."""
    if not self._pending:
      return None
    records, self._pending = b"".join(self._pending), []
    first = self._part == 0
    local = storage.is_local(self._logdir)
    name = self._name if local else f"{self._name}.{self._part}"
    self._part += 1
    if first or not local:
      version = event_pb2.Event(
          wall_time=time.time(), file_version="brain.Event:2"
      )
      records = _record(version.SerializeToString()) + records
    path = storage.join(self._logdir, name)
    return lambda: storage.append_bytes(path, records)


class Reporter:
  """Writes metrics of one run segment (from `start_step` on)."""

  def __init__(
      self,
      workdir: str,
      *,
      total_steps: int,
      start_step: int,
      is_main: bool,
      metrics: Sequence[outputs.Metric] = (),
  ):
    self._is_main = is_main
    self._total = total_steps
    self._keys = console_keys(metrics)
    self._jsonl = storage.join(workdir, "metrics.jsonl")
    self._rows: list[str] = []
    self._events = EventFile(workdir)
    # One writer thread: writes happen in order, off the training thread.
    self._writer = concurrent.futures.ThreadPoolExecutor(1)
    self._writes: list[concurrent.futures.Future[None]] = []
    if is_main:
      self._truncate_jsonl(start_step)
    self._last_step = start_step
    self._last_time = time.monotonic()

  def _truncate_jsonl(self, start_step: int) -> None:
    if not storage.exists(self._jsonl):
      return
    rows = [
        line + "\n"
        for line in storage.read_text(self._jsonl).splitlines()
        if line.strip() and json.loads(line)["step"] <= start_step
    ]
    storage.write_atomic(self._jsonl, "".join(rows))

  def restart_clock(self, step: int) -> None:
    """Excludes time spent elsewhere (eval, compile) from steps/s."""
    self._last_step = step
    self._last_time = time.monotonic()

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Prints and buffers scalars, adding steps/s and ETA when steps have
    passed."""
    scalars = dict(scalars)
    now = time.monotonic()
    if step > self._last_step and now > self._last_time:
      rate = (step - self._last_step) / (now - self._last_time)
      scalars["perf/steps_per_sec"] = rate
      scalars["perf/eta_sec"] = (self._total - step) / rate
      self._last_step, self._last_time = step, now
    if not self._is_main:
      return
    print(progress_line(step, self._total, scalars, self._keys), flush=True)
    self._events.scalars(step, scalars)
    row = {"step": step}
    row.update(
        {k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}
    )
    self._rows.append(json.dumps(row) + "\n")

  def flush(self) -> None:
    """Hands everything buffered to the writer thread."""
    if not self._is_main:
      return
    if self._rows:
      text, self._rows = "".join(self._rows), []
      path = self._jsonl
      self._writes.append(self._writer.submit(storage.append_text, path, text))
    write_events = self._events.take()
    if write_events is not None:
      self._writes.append(self._writer.submit(write_events))
    done = [w for w in self._writes if w.done()]
    self._writes = [w for w in self._writes if not w.done()]
    for w in done:
      w.result()  # A failed write is reported, not lost silently.

  def close(self) -> None:
    """Flushes and waits until everything is written."""
    self.flush()
    self._writer.shutdown(wait=True)
    for w in self._writes:
      w.result()
    self._writes = []
    sys.stdout.flush()
