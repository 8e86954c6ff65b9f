"""What a run writes for people and programs to read.

  TensorBoard   event files in the workdir (clu SummaryWriter);
  console       one progress line per log step (a clu MetricWriter), with
                loss, accuracy, tape length / ponder steps, steps/s and ETA;
  metrics.jsonl one JSON object per logged step, `{"step": N, ...}`;
  results.json  written once, atomically, when the run finishes.

Paths may be local or URLs that TensorFlow's gfile knows (gs://...), so a
TPU pod writes its logs straight to a bucket. Only process 0 writes files.
On resume, rows of metrics.jsonl past the
restored step (logged after the last checkpoint) are dropped, so the file
always describes the run that the checkpoints continue.
"""

import csv
import json
import math
import os
import sys
import time
from typing import Any, Mapping, Sequence

from clu import metric_writers
from clu.metric_writers import interface
from tensorflow.io import gfile

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


class ConsoleWriter(interface.MetricWriter):
  """Prints scalars as one compact progress line to stdout."""

  def __init__(self, total_steps: int, keys: Sequence[tuple[str, str, str]]):
    self._total = total_steps
    self._keys = keys

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    parts = [f"step {step}/{self._total}"]
    for key, label, fmt in self._keys:
      if key in scalars:
        parts.append(f"{label} {fmt.format(float(scalars[key]))}")
    if "perf/eta_sec" in scalars:
      parts.append(f"ETA {_duration(float(scalars['perf/eta_sec']))}")
    print(" | ".join(parts), flush=True)

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    sys.stdout.flush()

  def close(self):
    self.flush()


def read_json(path: str) -> Any:
  """Reads JSON from a local path or a URL (gs://...)."""
  with gfile.GFile(path) as f:
    return json.load(f)


def atomic_write_json(path: str, payload: Any) -> None:
  """Writes JSON to `path` via a temporary file and rename."""
  tmp = f"{path}.tmp"
  with gfile.GFile(tmp, "w") as f:
    f.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
  gfile.rename(tmp, path, overwrite=True)


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
  with gfile.GFile(path_prefix + ".csv", "w") as f:
    writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
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
  with gfile.GFile(path_prefix + ".md", "w") as f:
    f.write(markdown)
  return markdown


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
    self._workdir = workdir
    self._is_main = is_main
    self._total = total_steps
    writers = (
        [ConsoleWriter(total_steps, console_keys(metrics))] if is_main else []
    )
    if is_main:
      writers.append(metric_writers.SummaryWriter(workdir))
    self.writer = metric_writers.MultiWriter(writers)
    self._jsonl = os.path.join(workdir, "metrics.jsonl")
    if is_main:
      self._truncate_jsonl(start_step)
    self._last_step = start_step
    self._last_time = time.monotonic()

  def _truncate_jsonl(self, start_step: int) -> None:
    if not gfile.exists(self._jsonl):
      return
    with gfile.GFile(self._jsonl) as f:
      rows = [
          line
          for line in f
          if line.strip() and json.loads(line)["step"] <= start_step
      ]
    with gfile.GFile(self._jsonl + ".tmp", "w") as f:
      f.write("".join(rows))
    gfile.rename(self._jsonl + ".tmp", self._jsonl, overwrite=True)

  def restart_clock(self, step: int) -> None:
    """Excludes time spent elsewhere (eval, compile) from steps/s."""
    self._last_step = step
    self._last_time = time.monotonic()

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Writes scalars, adding steps/s and ETA when steps have passed."""
    scalars = dict(scalars)
    now = time.monotonic()
    if step > self._last_step and now > self._last_time:
      rate = (step - self._last_step) / (now - self._last_time)
      scalars["perf/steps_per_sec"] = rate
      scalars["perf/eta_sec"] = (self._total - step) / rate
      self._last_step, self._last_time = step, now
    if not self._is_main:
      return
    self.writer.write_scalars(step, scalars)
    row = {"step": step}
    row.update(
        {k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}
    )
    with gfile.GFile(self._jsonl, "a") as f:
      f.write(json.dumps(row) + "\n")

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()
