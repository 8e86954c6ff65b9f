"""The workdir contract: one run per workdir, and the files it holds.

  config.json    the run's config, written when it starts;
  checkpoints/   Orbax step folders (`checkpointing.py`);
  metrics.jsonl  one JSON object per logged step (`reporting.py`);
  results.json   final metrics, written once when the run finishes.

Running the same command again resumes; running another config in a
workdir that holds a run is refused, so two experiments never mix their
checkpoints and logs.
"""

import json
from typing import Any, Mapping

import ml_collections

from adatape import reporting
from adatape import run_config
from adatape import storage

CONFIG = "config.json"
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"


def holds_run(workdir: str) -> bool:
  """Whether `workdir` holds a started run (its config.json)."""
  return storage.exists(storage.join(workdir, CONFIG))


def check(
    config: ml_collections.ConfigDict,
    workdir: str,
    defaults: Mapping[str, Any] | None = None,
) -> None:
  """Refuses to continue a workdir that holds a run of another config.

  A key the saved config lacks but `config` holds at its default (from
  `defaults`, flattened: a key added to the code since the run started,
  e.g. `model.dtype`) is no difference: the run goes on as it was.
  """
  path = storage.join(workdir, CONFIG)
  if not storage.exists(path):
    return
  saved = upgrade(reporting.read_json(path))
  current = json.loads(config.to_json())
  defaults = defaults or {}
  differing = sorted(
      key
      for key in _flat_diff(saved, current)
      if not (
          _lookup(saved, key) is _ABSENT
          and key in defaults
          and _lookup(current, key) == defaults[key]
      )
  )
  if differing:
    raise run_config.ConfigError(
        f"workdir {workdir} holds a run with a different config "
        f"({', '.join(differing[:5])} differ); use a new --workdir"
    )


_ABSENT = object()

# Keys removed from the code, with the value under which a saved run means
# the same without them. A run saved with another value used a feature
# that no longer exists.
REMOVED = {
    # Dropped: it averaged zeroed slots, which is not what the official
    # code did (there padded slots depend on the batch).
    "model.pool_include_padded_tape": False,
}


# Keys whose values were renamed, old value -> today's. `tape.exit_early`
# was a bool (default True); it changes no output, only how inference
# reads, so the old default becomes today's ("auto").
RENAMED_VALUES = {
    "tape.exit_early": {True: "auto", False: "never"},
}


def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config (JSON) without the keys `REMOVED` lists and with the
  values `RENAMED_VALUES` renames; raises ConfigError for a run that used
  a removed feature."""
  saved = json.loads(json.dumps(saved))
  for key, renamed in RENAMED_VALUES.items():
    found = _lookup(saved, key)
    if isinstance(found, bool) and found in renamed:
      node, last = _parent(saved, key)
      node[last] = renamed[found]
  for key, value in REMOVED.items():
    found = _lookup(saved, key)
    if found is _ABSENT:
      continue
    if found != value:
      raise run_config.ConfigError(
          f"the run was saved with {key}={found}, a setting this code no "
          "longer has; use the code the run was made with"
      )
    node, last = _parent(saved, key)
    del node[last]
  return saved


def _parent(tree: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
  """The dict holding key "a.b.c" of `tree` (`tree["a"]["b"]`), and "c"."""
  *parents, last = key.split(".")
  for part in parents:
    tree = tree[part]
  return tree, last


def _lookup(tree: Any, key: str) -> Any:
  """`tree["a"]["b"]` for key "a.b", or _ABSENT."""
  for part in key.split("."):
    if not isinstance(tree, dict) or part not in tree:
      return _ABSENT
    tree = tree[part]
  return tree


def _flat_diff(a: Any, b: Any, prefix: str = "") -> set[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    keys = set(a) | set(b)
    return (
        set().union(
            *[_flat_diff(a.get(k), b.get(k), f"{prefix}{k}.") for k in keys]
        )
        if keys
        else set()
    )
  return set() if a == b else {prefix.rstrip(".")}
