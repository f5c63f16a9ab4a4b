"""Atomic file writes: the data goes to a temporary file in the target's folder, then ``os.replace`` puts it in place.

A reader, or a run resumed after a kill, never sees a half-written file, and a failed write leaves the old file as it
was. Files get the permissions ``open`` would give them (0o666 less the umask), not ``mkstemp``'s private 0o600.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    umask = os.umask(0o022)  # the only way to read it is to set it; done once, at import
    os.umask(umask)
    return umask


#: what ``open`` gives a new file under this process's umask
FILE_MODE = 0o666 & ~_read_umask()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing (``mode`` "wb" or "w"); on a clean exit it replaces ``path``.

    Example::

        with atomic_open("out/report.json", "w") as fh:
            json.dump(report, fh)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


__all__ = ["atomic_open", "write_bytes"]
