"""The core install (no `images` extra) trains without TensorFlow.

`pip install -e .` leaves out TensorFlow, TFDS and scikit-learn. Building a
venv per test run is too slow, so these tests hide the packages from a
subprocess (imports of them fail as if they were not installed) and check
that the command line still trains parity end to end, writing results,
checkpoints and TensorBoard events, and that an image config says which
extra to install. The README gives the command that checks it in a real
venv.
"""

import json
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing import event_file_loader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs adatape.main with the image packages unimportable, then checks that
# none of them was imported.
_WITHOUT_IMAGE_PACKAGES = """
import sys
HIDDEN = ("tensorflow", "tensorflow_datasets", "sklearn", "clu")
for name in HIDDEN:
  sys.modules[name] = None  # `import name` fails; find_spec says absent.
from absl import app
from adatape import main
try:
  app.run(main.main, flags_parser=main._parse_flags)
finally:
  loaded = [m for m, v in sys.modules.items()
            if v is not None and m.split(".")[0] in HIDDEN]
  assert not loaded, loaded
"""


def _main(*args):
  return subprocess.run(
      [sys.executable, "-c", _WITHOUT_IMAGE_PACKAGES, *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )


def test_parity_trains_without_tensorflow(tmp_path):
  workdir = tmp_path / "run"
  proc = _main(
      f"--workdir={workdir}",
      "--config=configs/parity/adatape.py:tiny",
      "--config.mesh.data=1",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "final eval accuracy" in proc.stdout
  with open(workdir / "results.json") as f:
    assert json.load(f)["steps"] == 6
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
  assert sorted(losses) == [2, 4, 6]

  # The event file is a valid TFRecord stream (TensorFlow's own reader
  # checks every CRC) with the logged scalars.
  (events,) = [n for n in os.listdir(workdir) if n.startswith("events.")]
  loader = event_file_loader.LegacyEventFileLoader(str(workdir / events))
  logged = {}
  for event in loader.Load():
    for value in event.summary.value:
      if value.tag == "train/loss":
        logged[event.step] = value.simple_value
  assert logged == pytest.approx(losses, rel=1e-7)


def test_an_image_config_names_the_extra_to_install(tmp_path):
  proc = _main(
      f"--workdir={tmp_path / 'run'}",
      f"--config=configs/digits/vit.py:data_dir={tmp_path}",
  )
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: data.name='images' needs tensorflow")
  assert "pip install -e '.[images]'" in last
  assert not (tmp_path / "run").exists()
