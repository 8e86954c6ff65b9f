"""The run-configuration contract: argument parsing, validation, typed views.

Config files are ml-collections `get_config(arg)` functions; models and data
never see a ConfigDict. This module is the one boundary between the two:
`load` reads a config file as the command line does (`PATH[:ARGS]`),
`parse_arg` reads the `:key=value,...` string after a config path,
`to_dataclass` turns a config section into a frozen dataclass and rejects keys
the dataclass does not know, and `ConfigError` is the one exception type whose
message `main.py` prints as a single line. Every message names the offending
key, so a typo in a TPU job fails in seconds with a fix in sight.
"""

import dataclasses
import importlib.util
import os
import types
import typing
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A configuration value is unknown, of the wrong type or impossible."""


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """Parses `key=value,flag,...` against `spec` (defaults carry the types).

  A bare `name` sets a boolean spec key to True. Unknown keys and values that
  do not convert to the default's type raise ConfigError.

  Args:
    arg: the text after `:` in `--config=path.py:ARG`, or None.
    **spec: allowed keys with their default values.

  Returns:
    A ConfigDict with every spec key set.
  """
  result = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return result
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, text = item.partition("=")
    key = key.strip()
    if key not in spec:
      raise ConfigError(
          f"config arg {key!r} is unknown; valid: {', '.join(sorted(spec))}"
      )
    default = spec[key]
    if not sep:
      if not isinstance(default, bool):
        raise ConfigError(f"config arg {key!r} needs a value ({key}=...)")
      result[key] = True
      continue
    result[key] = _convert(text.strip(), default, f"config arg {key!r}")
  return result


def _convert(text: str, default: Any, what: str) -> Any:
  """Converts `text` to the type of `default`."""
  try:
    if isinstance(default, bool):
      if text.lower() in ("1", "true", "yes"):
        return True
      if text.lower() in ("0", "false", "no"):
        return False
      raise ValueError(text)
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
  except ValueError:
    raise ConfigError(
        f"{what}={text!r} is not a valid {type(default).__name__}"
    ) from None
  return text


def to_dataclass(cls: type, section: Any, prefix: str, **extra: Any) -> Any:
  """Builds frozen dataclass `cls` from a config section, checking keys.

  Args:
    cls: the dataclass type.
    section: a ConfigDict or dict with the dataclass fields.
    prefix: the section's dotted name, used in error messages (`tape`).
    **extra: fields supplied by the caller rather than the config.

  Returns:
    An instance of `cls`; its `__post_init__` may raise ConfigError.
  """
  values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ConfigError(
        f"{prefix}.{unknown[0]} is not a known key; valid keys: "
        f"{', '.join(sorted(names - set(extra)))}"
    )
  kwargs = {}
  for name, value in values.items():
    kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}")
  kwargs.update(extra)
  return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str) -> Any:
  """Checks `value` against a simple type hint; lists become tuples."""
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    for option in typing.get_args(hint):
      try:
        return _coerce(value, option, key)
      except ConfigError:
        continue
    raise ConfigError(f"{key}={value!r} has the wrong type ({hint})")
  if origin is tuple:
    if not isinstance(value, (list, tuple)):
      raise ConfigError(f"{key}={value!r} must be a tuple")
    item_hint, *_ = typing.get_args(hint)
    return tuple(_coerce(v, item_hint, key) for v in value)
  if hint is types.NoneType:
    if value is None:
      return None
    raise ConfigError(f"{key}={value!r} must be None")
  if hint is float and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if hint in (int, float, str, bool):
    if isinstance(value, bool) != (hint is bool) or not isinstance(value, hint):
      raise ConfigError(f"{key}={value!r} must be of type {hint.__name__}")
  return value


def set_from_text(
    config: ml_collections.ConfigDict, key: str, text: str, what: str
) -> None:
  """Sets the dotted `key` of `config` (a key it has, holding a bool,
  int, float or str) from command-line `text`, read as the type of the
  value it replaces; `what` names the flag in errors."""
  *parents, leaf = key.split(".")
  node = config
  for depth, name in enumerate(parents):
    node = node.get(name)
    if not isinstance(node, ml_collections.ConfigDict):
      section = ".".join(parents[: depth + 1])
      raise ConfigError(f"{what}: {section} is not a section of the config")
  check(leaf in node, f"{what}: {key} is not a key of the config")
  current = node[leaf]
  check(
      isinstance(current, (bool, int, float, str)),
      f"{what}: {key} holds {type(current).__name__}, not a bool, int, "
      "float or str",
  )
  node[leaf] = _convert(text, current, f"{what}: {key}")


def check(condition: bool, message: str) -> None:
  """Raises ConfigError(message) unless `condition` holds."""
  if not condition:
    raise ConfigError(message)


def check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
  """Raises ConfigError unless `value` is one of `choices`."""
  check(
      value in choices,
      f"{key}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}",
  )


# Config paths are relative to the working directory, or else to the
# repository (so tools started elsewhere still find `configs/...`).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_module(path: str, what: str) -> types.ModuleType:
  """Executes the config file at `path`; `what` names the flag in errors."""
  candidates = (
      [path] if os.path.isabs(path) else [path, os.path.join(_REPO, path)]
  )
  found = next((p for p in candidates if os.path.isfile(p)), None)
  if found is None:
    raise ConfigError(f"{what}: {path} does not exist")
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(found))[0], found
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(spec: str, what: str = "--config") -> ml_collections.ConfigDict:
  """The config of `PATH[:ARGS]`, as `--config=PATH[:ARGS]` would give it.

  Args:
    spec: a config file path, optionally followed by `:ARGS`.
    what: the flag or key that named it, for error messages.

  Returns:
    The file's `get_config(ARGS or None)`.
  """
  path, _, arg = spec.partition(":")
  module = config_module(path, what)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{what}: {path} defines no get_config(arg)")
  return module.get_config(arg or None)


def sweep_points(spec: str, what: str = "--config") -> list[dict[str, Any]]:
  """The override dicts that the config file's `sweep(add)` adds, in order
  (`{"tape.epsilon": 4.0, ...}`: flattened keys, as `--config.KEY=V`)."""
  path = spec.partition(":")[0]
  module = config_module(path, what)
  if not hasattr(module, "sweep"):
    raise ConfigError(f"{what}: {path} has no sweep(add)")
  points = []
  module.sweep(lambda **overrides: points.append(dict(overrides)))
  return points
