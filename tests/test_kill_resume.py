"""Runs killed half-way (SIGKILL: no handler runs, nothing is flushed) resume with nothing lost, and refuse to resume
with other settings (issue 24). Each test starts the real command in a subprocess, kills it once it has written
part of its work, and resumes it.

The kill lands at a random moment after the first resumable state exists (a checkpoint, two finished images), so
runs of the suite kill at different points — inside a checkpoint write, between images, mid-step. The draw comes
from ``PRIORKIT_KILL_SEED`` (default: a fresh seed per session, printed with each kill so a failure can be
replayed)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from priorkit.distill.core.training import ResumeMismatchError, run_settings

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
KILL_SEED = int(os.environ.get("PRIORKIT_KILL_SEED", random.SystemRandom().randrange(2**31)))
_kills = random.Random(KILL_SEED)


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "priorkit.apps.cli", *map(str, args)]


def kill_when(cmd: list[str], ready: Callable[[], bool], within: float = 0.0, timeout: float = 240.0) -> bool:
    """Start ``cmd``; SIGKILL it at a random moment within ``within`` seconds after ``ready()`` first holds (drawn
    from ``PRIORKIT_KILL_SEED``). True when it was killed (False: it finished first)."""
    delay = _kills.uniform(0.0, within)
    print(f"{cmd[3]}: kill {delay:.3f} s after the first resumable state (PRIORKIT_KILL_SEED={KILL_SEED})")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0, armed = time.monotonic(), None
    try:
        while proc.poll() is None:
            if armed is None and ready():
                armed = time.monotonic()
            if armed is not None and time.monotonic() - armed >= delay:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            if time.monotonic() - t0 > timeout:
                pytest.fail(f"{cmd[3]} wrote nothing to resume from within {timeout:.0f} s")
            time.sleep(0.01 if armed is not None else 0.05)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()


def finish(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def test_run_settings_are_recorded_and_a_different_resume_is_refused(tmp_path: Path) -> None:
    run_settings(tmp_path / "run", {"steps": 10, "lr": 1e-3, "init": tmp_path}, resume=False)
    run_settings(tmp_path / "run", {"steps": 10, "lr": 1e-3, "init": tmp_path}, resume=True)  # same: fine
    with pytest.raises(ResumeMismatchError, match=r"steps 10 -> 20.*resume with the same settings"):
        run_settings(tmp_path / "run", {"steps": 20, "lr": 1e-3, "init": tmp_path}, resume=True)
    with pytest.raises(ResumeMismatchError, match="seed None -> 3"):  # a setting the run did not have
        run_settings(tmp_path / "run", {"steps": 10, "lr": 1e-3, "init": tmp_path, "seed": 3}, resume=True)
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["steps"] == 10  # the record is kept


def test_distill_killed_half_way_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["distill", "shortcut", "--teacher", "toy:gmm", "--steps", "300", "--batch", "16", "--out", out]
    checkpoint = out / "checkpoint" / "state.json"
    killed = kill_when(cli(*args), checkpoint.is_file, within=1.0)
    if killed:
        step = json.loads(checkpoint.read_text())["step"]  # the checkpoint is whole whenever the kill came
        assert 0 < step <= 300
        assert step == 300 or not (out / "student").exists()  # no student before the last step
    other = finish(cli(*args[:-2], "--lr", "1e-3", "--out", out, "--resume"))
    assert other.returncode == 2, other.stderr
    assert "other settings" in other.stderr and "lr None -> 0.001" in other.stderr
    assert "Traceback" not in other.stderr and len(other.stderr.strip().splitlines()) == 1
    done = finish(cli(*args, "--resume"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(checkpoint.read_text())["step"] == 300
    assert (out / "student" / "priorkit.json").is_file()
    # the resumed student equals an uninterrupted run's: batches are drawn from (seed, step), the optimiser and EMA
    # come back from the checkpoint
    whole = tmp_path / "whole"
    assert finish(cli(*args[:-2], "--out", whole)).returncode == 0
    a, b = _tensors(whole / "student"), _tensors(out / "student")
    assert sorted(a) == sorted(b) and a
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)


def _photos(folder: Path, n: int, size: int = 64) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        x = np.linspace(0, 1, size)
        img = np.stack([np.outer(x, x), np.outer(x[::-1], x), np.full((size, size), 0.5)], -1)
        img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)
        paths.append(folder / f"img{i}.png")
        Image.fromarray((img * 255).astype(np.uint8)).save(paths[-1])
    return paths


def test_restore_killed_half_way_keeps_what_it_wrote_and_finishes_the_rest(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = _photos(src, 6)
    args = ["restore", src, out, "--task", "deblur_gaussian", "--simulate", "--nfe", "6", "--prior", "photos"]

    def two_done() -> bool:
        try:
            files = json.loads((out / "report.json").read_text())["files"]
        except (OSError, ValueError, KeyError):
            return False
        return sum(e["status"] == "done" for e in files.values()) >= 2

    killed = kill_when(cli(*args), two_done, within=1.5)
    report = json.loads((out / "report.json").read_text())  # written before the first image
    written = {name: (out / e["output"]).stat().st_mtime_ns for name, e in report["files"].items()
               if e["status"] == "done"}
    if killed:  # (the kill may come after the last image, before the process ended)
        assert 2 <= len(written) <= len(inputs)
    other = finish(cli(*args[:-4], "--nfe", "7", "--prior", "photos", "--resume"))
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr
    done = finish(cli(*args, "--resume"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.glob("img*.png")) == sorted(p.name for p in inputs)
    for name, mtime in written.items():  # what the report marked done before the kill is kept, not redone
        assert (out / Path(name).with_suffix(".png").name).stat().st_mtime_ns == mtime, name
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["files"]) == sorted(p.name for p in inputs)  # each image once, after the resume too
    assert all(entry["status"] == "done" for entry in report["files"].values())
    # every image equals the uninterrupted batch's (each file's seed is seed + crc32(name))
    whole = tmp_path / "whole"
    assert finish(cli("restore", src, whole, *args[3:])).returncode == 0
    for p in inputs:
        name = p.with_suffix(".png").name
        assert np.array_equal(np.asarray(Image.open(whole / name)), np.asarray(Image.open(out / name))), name


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every safetensors tensor of a saved model folder, by file and name."""
    from safetensors.numpy import load_file

    return {f"{f.name}:{k}": v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _field_tensors(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v for k, v in load_file(str(out / "checkpoint" / "state.safetensors")).items()
            if k.startswith("field")}


def test_3d_killed_half_way_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL ``priorkit 3d`` after its first checkpoint; ``--resume`` ends where an uninterrupted run with the same
    seed ends, bit for bit (step k's draws depend on (seed, k) only); other settings and a missing --resume are
    refused with one line and exit code 2, the killed run's checkpoint intact."""
    args = ["3d", "a red sphere", "--steps", "24", "--checkpoint-every", "6", "--resolution", "16",
            "--mesh-resolution", "24", "--seed", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = finish(cli(*args, "--out", whole))
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = cut / "checkpoint" / "state.json"
    killed = kill_when(cli(*args, "--out", cut), checkpoint.is_file, within=1.0)
    if killed:
        step = json.loads(checkpoint.read_text())["step"]
        assert 0 < step <= 24
        assert step == 24 or not (cut / "asset" / "mesh.glb").exists()  # no asset before the last step
    for extra in ((), ("--seed", "2", "--resume")):  # no --resume; another seed
        refused = finish(cli(*args[:-2], *(extra or args[-2:]), "--out", cut))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    resumed = finish(cli(*args, "--out", cut, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(checkpoint.read_text())["step"] == 24
    a, b = _field_tensors(whole), _field_tensors(cut)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (cut / "asset" / "mesh.glb").is_file() and not list(cut.glob(".checkpoint.tmp*"))
