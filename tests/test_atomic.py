"""priorkit.distill.core.atomic: whole files or nothing, with the permissions of a plain open()."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from priorkit.distill.core import atomic
from priorkit.distill.core.atomic import atomic_open, write_bytes


def test_written_files_have_the_permissions_of_open_not_mkstemps(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "sub" / "mesh.glb", b"glTF")
    with atomic_open(tmp_path / "report.json", "w") as fh:
        json.dump({"ok": True}, fh)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.read_bytes() == b"glTF"
    assert json.loads((tmp_path / "report.json").read_text()) == {"ok": True}
    for p in (path, tmp_path / "report.json"):
        assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == atomic.FILE_MODE


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = write_bytes(tmp_path / "a.png", b"old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    with pytest.raises(ValueError, match="mode"), atomic_open(target, "a"):
        pass
