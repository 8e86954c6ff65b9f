"""A run's files on any filesystem: local paths and URLs alike.

Workdirs live on local disk for a laptop run and in a bucket
(`gs://BUCKET/run`) for a TPU pod. Every tool reads and writes them
through these functions, which go through fsspec: local paths, `gs://`
(gcsfs), `s3://`, and `memory://` (what the tests use as a non-local
filesystem) all work the same way, and no tool needs TensorFlow's gfile.

Object stores have no append and no rename; the functions here say what
they do there: `write_atomic` writes a whole object (objects appear only
when complete), `append_text` rewrites the object, `move` copies then
deletes.
"""

import contextlib
import io
import os
import posixpath
from typing import IO, Any, Iterator

import fsspec


def _split(path: str) -> tuple[Any, str]:
  """(filesystem, path within it) of a local path or a URL."""
  try:
    fs, inner = fsspec.core.url_to_fs(path)
  except ImportError as e:
    # gs:// without gcsfs, s3:// without s3fs: say what to install.
    raise OSError(f"{path}: {e}") from None
  return fs, inner


def is_local(path: str) -> bool:
  """Whether `path` is on this machine's own filesystem."""
  return "://" not in path or path.startswith("file://")


def join(base: str, *parts: str) -> str:
  """`base/part/...`, keeping a URL's scheme intact."""
  if is_local(base):
    return os.path.join(base, *parts)
  return posixpath.join(base, *parts)


def exists(path: str) -> bool:
  fs, inner = _split(path)
  return fs.exists(inner)


def isdir(path: str) -> bool:
  fs, inner = _split(path)
  return fs.isdir(inner)


def makedirs(path: str) -> None:
  """Creates `path` and its parents (a no-op on object stores, which
  have no directories, except in the memory filesystem)."""
  fs, inner = _split(path)
  fs.makedirs(inner, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names (not paths) of the entries of directory `path`, sorted; empty
  if it does not exist."""
  fs, inner = _split(path)
  if not fs.exists(inner):
    return []
  names = {
      posixpath.basename(e.rstrip("/")) for e in fs.ls(inner, detail=False)
  }
  return sorted(n for n in names if n)


@contextlib.contextmanager
def open_file(path: str, mode: str = "r") -> Iterator[IO[Any]]:
  """Opens `path` for reading or writing, text or binary."""
  fs, inner = _split(path)
  with fs.open(inner, mode) as f:
    yield f


def read_text(path: str) -> str:
  with open_file(path) as f:
    return f.read()


def read_bytes(path: str) -> bytes:
  with open_file(path, "rb") as f:
    return f.read()


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes `path` so that a reader sees the old content or the new one,
  never a part: locally through a temporary file and a rename; on an
  object store, an object only becomes visible once completely written."""
  binary = isinstance(data, bytes)
  if not is_local(path):
    with open_file(path, "wb" if binary else "w") as f:
      f.write(data)
    return
  local = path[len("file://") :] if path.startswith("file://") else path
  tmp = f"{local}.tmp"
  with open(tmp, "wb" if binary else "w") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, local)


def append_text(path: str, text: str) -> None:
  """Appends `text` to `path` (created if missing). On an object store
  this rewrites the whole object: call it rarely (buffered writers)."""
  if is_local(path):
    with open_file(path, "a") as f:
      f.write(text)
    return
  old = read_text(path) if exists(path) else ""
  write_atomic(path, old + text)


def append_bytes(path: str, data: bytes) -> None:
  """`append_text` for bytes."""
  if is_local(path):
    with open_file(path, "ab") as f:
      f.write(data)
    return
  old = read_bytes(path) if exists(path) else b""
  write_atomic(path, old + data)


def remove(path: str) -> None:
  fs, inner = _split(path)
  fs.rm(inner, recursive=True)


def move(source: str, destination: str) -> None:
  """Moves a file or directory (on object stores: copy, then delete)."""
  fs, src = _split(source)
  _, dst = _split(destination)
  fs.mv(src, dst, recursive=True)


def save_figure(fig: Any, path: str, **kwargs: Any) -> None:
  """Saves a matplotlib figure to `path` (local or not)."""
  buffer = io.BytesIO()
  fmt = os.path.splitext(path)[1].lstrip(".") or "png"
  fig.savefig(buffer, format=fmt, **kwargs)
  write_atomic(path, buffer.getvalue())
