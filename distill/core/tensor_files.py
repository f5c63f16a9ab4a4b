"""Safetensors (and JSON state) files read and written with errors a user can act on: a failed write is an
``OSError`` naming the file (a full disk reads "No space left on device", like any other write), a damaged or foreign
file a ``ValueError`` naming it. safetensors itself raises its own ``SafetensorError`` for both, which no caller
expects."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import safetensors
import safetensors.torch
from torch import Tensor


def save_tensors(tensors: dict[str, Tensor], path: str | os.PathLike) -> None:
    """``safetensors.torch.save_file``; a failed write raises OSError(errno, reason, path)."""
    try:
        safetensors.torch.save_file(tensors, str(path))
    except safetensors.SafetensorError as e:  # "Error while serializing: I/O error: ... (os error 28)"
        found = re.search(r"os error (\d+)", str(e))
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code) if found else str(e).splitlines()[0], str(path)) from e


def load_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """``safetensors.torch.load_file``; a missing file raises FileNotFoundError, a damaged (truncated) or foreign
    one ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    try:
        return safetensors.torch.load_file(str(path))
    except safetensors.SafetensorError as e:  # "Error while deserializing header: ..."
        raise ValueError(f"{path} is not a readable safetensors file (damaged, truncated or of another format: "
                         f"{str(e).splitlines()[0]})") from e


def load_json(path: str | os.PathLike) -> dict:
    """A run's JSON state file; a damaged one (a kill mid-write by another tool, a hand edit) raises ValueError
    naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged (not valid JSON: {e})") from e


__all__ = ["save_tensors", "load_tensors", "load_json"]
