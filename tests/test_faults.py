"""Fault injection (issue 24; issue 18 part 4): faults a new user hit, each checked to end in one readable line, the
documented exit code, no partial output and previous outputs intact.

Full disk: a patched writer (``os.replace`` / safetensors' ``save_file`` raising ENOSPC), since mounting a tmpfs needs
privileges the tests do not assume. Read-only outputs cannot be simulated with chmod when the tests run as root, so
the same patched writers raise EACCES / EROFS.
"""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from priorkit.apps.cli import app

WIDE = {"COLUMNS": "200", "TERM": "dumb"}


def run(*args: str | Path):  # noqa: ANN201 (click's Result)
    return CliRunner().invoke(app, [str(a) for a in args], env=WIDE)


def one_error_line(result) -> str:  # noqa: ANN001
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ---- priorkit sample --------------------------------------------------------------------------------------------
def test_sample_nan_guidance_is_refused_before_any_work(tmp_path: Path) -> None:
    result = run("sample", "--guidance", "nan", "--out", tmp_path / "s.png", "--n", "1", "--steps", "1")
    assert result.exit_code == 2 and "--guidance must be a finite number" in one_error_line(result)
    assert not (tmp_path / "s.png").exists()


def test_sample_out_is_checked_before_sampling(tmp_path: Path) -> None:
    result = run("sample", "--out", tmp_path, "--n", "1", "--steps", "1")
    assert result.exit_code == 2 and "is a folder" in one_error_line(result)
    result = run("sample", "--out", tmp_path / "s.jpg", "--n", "1", "--steps", "1")
    assert result.exit_code == 2 and "ending in .png" in one_error_line(result)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_sample_on_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch, code: int
                                                                            ) -> None:
    import priorkit.distill.core.atomic as atomic

    out = tmp_path / "s.png"
    out.write_bytes(b"previous")

    def replace(src, dst):  # noqa: ANN001, ANN202
        raise OSError(code, __import__("os").strerror(code), str(dst))

    monkeypatch.setattr(atomic.os, "replace", replace)
    result = run("sample", "--model", "shapes", "--prompt", "a red cube", "--n", "1", "--steps", "1", "--out", out)
    line = one_error_line(result)
    assert result.exit_code == 1 and str(out) in line
    assert out.read_bytes() == b"previous"  # the previous output intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]  # no temporary file left


# ---- priorkit 3d ------------------------------------------------------------------------------------------------
def test_3d_refuses_a_folder_holding_a_run(tmp_path: Path) -> None:
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text("{}")
    result = run("3d", "a red cube", "--out", tmp_path, "--steps", "1")
    assert result.exit_code == 2 and "--resume" in one_error_line(result) and "--overwrite" in result.output
    assert (tmp_path / "checkpoint" / "state.json").read_text() == "{}"


def test_3d_resume_without_checkpoint_says_so(tmp_path: Path, monkeypatch) -> None:
    import priorkit.gen3d.generate as generate

    monkeypatch.setattr(generate, "generate", lambda *a, **k: (_ for _ in ()).throw(ValueError("stop here")))
    result = run("3d", "a red cube", "--out", tmp_path / "new", "--steps", "1", "--resume")
    assert "no checkpoint in" in result.output and result.output.count("no checkpoint") == 1


def test_a_failed_checkpoint_write_leaves_no_temporary_folder_and_keeps_the_previous(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    import safetensors.torch

    from priorkit.gen3d.checkpoint import find_checkpoint, save_checkpoint

    field = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(field.parameters())
    save_checkpoint(tmp_path, 1, [field], [1.0], opt, None, [{"loss": 1.0}], {"run": 1})
    before = (tmp_path / "checkpoint" / "state.safetensors").read_bytes()

    def full(*a, **k):  # noqa: ANN002, ANN003, ANN202  (what safetensors raises on a full disk)
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="No space left on device"):
        save_checkpoint(tmp_path, 2, [field], [1.0], opt, None, [{"loss": 1.0}], {"run": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint"
    assert (tmp_path / "checkpoint" / "state.safetensors").read_bytes() == before


def test_non_finite_guidance_gradients_are_counted_and_an_all_nan_step_stops() -> None:
    from priorkit.gen3d.guidance import NonFiniteGradientError, finite_gradient

    g = torch.ones(2, 3)
    g[0, 1], g[1, 2] = float("nan"), float("inf")
    fixed, count = finite_gradient(g, "SDS")
    assert count == 2 and torch.isfinite(fixed).all() and float(fixed.sum()) == 4.0
    with pytest.raises(NonFiniteGradientError, match="every value of the SDS gradient"):
        finite_gradient(torch.full((2, 3), float("nan")), "SDS")


# ---- priorkit restore / inverse ---------------------------------------------------------------------------------
def test_conjugate_gradients_at_their_limit_warn_with_the_residual() -> None:
    from priorkit.inverse.operators.base import conjugate_gradient

    a = torch.diag(torch.logspace(0, 6, 50, dtype=torch.float64))
    b = torch.ones(1, 50, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="iteration limit \\(3\\) with relative residual"):
        conjugate_gradient(lambda v: v @ a, b, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        well = torch.diag(torch.linspace(1, 2, 50, dtype=torch.float64))
        conjugate_gradient(lambda v: v @ well, b, max_iter=200)


def _png(path: Path, size: int = 16) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def test_restore_that_restored_nothing_exits_1(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "broken.png").write_bytes(b"not a png")
    result = run("restore", inp, tmp_path / "out", "--task", "sr2", "--method", "pinv")
    assert result.exit_code == 1, result.output
    files = json.loads((tmp_path / "out" / "report.json").read_text())["files"]
    assert files["broken.png"]["status"] != "done"


# ---- the web app ------------------------------------------------------------------------------------------------
def test_an_undecodable_upload_names_the_fault_not_the_server_path(tmp_path: Path) -> None:
    import gradio as gr
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    from priorkit.apps.web_images import safe_image_editor

    bad = tmp_path / "upload.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    editor = safe_image_editor(type="numpy", image_mode="RGBA")
    with pytest.raises(gr.Error) as err:
        editor.preprocess(EditorData(background=FileData(path=str(bad)), layers=[], composite=None))
    assert str(tmp_path) not in str(err.value.message) and "upload" in str(err.value.message)


def _bomb_png(path: Path, side: int = 20000) -> None:
    """A PNG whose header declares side x side pixels (PIL's DecompressionBombError), over a 1x1 image's data."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", side, side) + bytes(data[24:29])
    data[16:24] = ihdr[4:12]
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))


def test_restore_lists_every_bad_file_with_its_reason_and_restores_every_good_one(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for name in ("a.png", "c.png", "z.png"):
        _png(inp / name)
    (inp / "notes.txt").write_text("not an image")
    _png(inp / "whole.png", 64)
    (inp / "truncated.png").write_bytes((inp / "whole.png").read_bytes()[:200])
    (inp / "whole.png").unlink()
    _bomb_png(inp / "bomb.png")
    (inp / "empty.png").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning does not leak
        result = run("restore", inp, out, "--task", "sr2", "--method", "pinv")
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 0, result.output  # skipped files are listed; the README: 1 only for a failed file
    files = json.loads((out / "report.json").read_text())["files"]
    for name in ("a.png", "c.png", "z.png"):
        assert files[name]["status"] == "done" and (out / name).is_file()
    expected = {"notes.txt": ("unsupported", "unsupported file type"), "truncated.png": ("unreadable", "truncated"),
                "bomb.png": ("too_large", "20000x20000"), "empty.png": ("unreadable", "cannot identify")}
    for name, (status, reason) in expected.items():
        assert files[name]["status"] == status and reason in files[name]["reason"], files[name]
        assert f"skipped {name}: {status}" in result.output
    assert "restored 3 of 7 files" in result.output


def test_restore_max_pixels_is_the_limit_and_an_out_of_memory_file_is_skipped(tmp_path: Path, monkeypatch) -> None:
    import priorkit.inverse.restore as restore_mod

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    _png(inp / "small.png", 8)
    _png(inp / "big.png", 32)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(inp / "oom.png")
    real = restore_mod.restore

    def restore(image, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if float(image.sum()) == oom_sum:
            raise MemoryError
        return real(image, *a, **k)

    from priorkit.inverse.files import load_image

    oom_sum = float(load_image(inp / "oom.png").sum())
    monkeypatch.setattr(restore_mod, "restore", restore)
    result = run("restore", inp, out, "--task", "sr2", "--method", "pinv", "--max-pixels", "100")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output  # a failed file: exit 1
    files = json.loads((out / "report.json").read_text())["files"]
    assert files["small.png"]["status"] == "done"
    assert files["big.png"]["status"] == "too_large" and "limit of 100" in files["big.png"]["reason"]
    assert files["oom.png"]["status"] == "failed" and "out of memory" in files["oom.png"]["reason"]


def test_restore_resume_with_other_settings_is_refused_unless_overwrite(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    _png(inp / "a.png", 8)
    assert run("restore", inp, out, "--task", "sr2", "--method", "pinv").exit_code == 0
    before = (out / "report.json").read_text()
    result = run("restore", inp, out, "--task", "sr4", "--method", "pinv", "--seed", "3", "--resume")
    line = one_error_line(result)
    assert result.exit_code == 2 and "task 'sr2' there, 'sr4' now" in line and "seed 0 there, 3 now" in line
    assert "--overwrite" in line and "method" not in line.split("(")[1].split(")")[0]
    assert (out / "report.json").read_text() == before  # nothing touched
    assert run("restore", inp, out, "--task", "sr2", "--method", "pinv", "--resume").exit_code == 0  # same: fine
    result = run("restore", inp, out, "--task", "sr4", "--method", "pinv", "--resume", "--overwrite")
    assert result.exit_code == 2 and "give one" in one_error_line(result)
    (out / "stray.png").write_bytes(b"the user's")
    result = run("restore", inp, out, "--task", "sr4", "--method", "pinv", "--seed", "3", "--overwrite")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "sr4" and report["seed"] == 3 and report["files"]["a.png"]["status"] == "done"
    assert Image.open(out / "a.png").size == (32, 32) and (out / "stray.png").read_bytes() == b"the user's"
    assert run("restore", inp, out, "--task", "sr4", "--method", "pinv", "--seed", "3", "--resume").exit_code == 0


def test_restore_never_replaces_an_earlier_run_or_a_users_file_silently(tmp_path: Path) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    _png(inp / "a.png", 8)
    _png(inp / "b.png", 8)
    assert run("restore", inp, out, "--task", "sr2", "--method", "pinv").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run("restore", inp, out, "--task", "sr4", "--method", "pinv")  # a new run into the old one's folder
    assert result.exit_code == 2 and "earlier run" in one_error_line(result) and "--resume" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "b.png").write_bytes(b"the user's")  # named like an output of this run
    (mine / "notes.txt").write_text("kept")
    result = run("restore", inp, mine, "--task", "sr2", "--method", "pinv")
    line = one_error_line(result)
    assert result.exit_code == 2 and "already holds b.png" in line and "--overwrite" in line
    assert sorted(p.name for p in mine.iterdir()) == ["b.png", "notes.txt"]
    assert (mine / "b.png").read_bytes() == b"the user's"
    (mine / "b.png").unlink()  # no clash left: a folder of other files is fine
    assert run("restore", inp, mine, "--task", "sr2", "--method", "pinv").exit_code == 0
    assert (mine / "notes.txt").read_text() == "kept" and (mine / "a.png").is_file()


# ---- prompts: the text encoder's own limit, the same in sample and 3d ---------------------------------------------
LONG = "a small shiny red cube resting on top of a large matte blue sphere beside a tall green cone at dusk"


def test_long_prompts_are_taken_whole_up_to_the_encoders_limit(single_thread) -> None:
    from priorkit.distill.core.loading import load_denoiser
    from priorkit.distill.core.text import token_limit
    from priorkit.gen3d.generate import _check_prompt_length

    den = load_denoiser("shapes")
    enc = den.text_encoder
    n = len(enc.tokenizer(LONG)["input_ids"])
    assert n > 16 and token_limit(enc) == enc.tokenizer.model_max_length == 512
    a, b = enc([LONG + " one", LONG + " two"]), enc(["a red cube"])
    assert a.shape[1] == 1 + n + 1 and b.shape[1] == 1 + 16  # short prompts: the trained length, unchanged
    assert not torch.equal(a[0, 1:], a[1, 1:])  # the words past 16 word pieces count (no silent truncation)
    _check_prompt_length(den, LONG, view_dependent=True)  # 3d takes it (was: refused over 16)
    x = torch.zeros(2, *den.sample_shape)
    pred = den.guided(x, 0.5, [LONG, "a red cube"], 3.0)  # CFG: the empty prompt padded to the long one
    assert torch.isfinite(pred.x0).all()


def test_a_prompt_past_the_limit_is_one_line_in_sample_and_3d(tmp_path: Path) -> None:
    huge = " ".join(["cube"] * 600)
    result = run("sample", "--prompt", huge, "--n", "1", "--steps", "1", "--out", tmp_path / "s.png")
    assert result.exit_code == 2 and "at most 512" in one_error_line(result) and "prompt too long" in result.output
    result = run("3d", huge, "--steps", "1", "--out", tmp_path / "3d")
    assert result.exit_code == 2 and "at most 512" in one_error_line(result) and "prompt too long" in result.output
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "3d").exists()


# ---- priorkit distill: toy teachers announced and cached ----------------------------------------------------------
def test_distill_announces_a_toy_teacher_and_caches_it(tmp_path: Path, monkeypatch, single_thread) -> None:
    import priorkit.distill.zoo.toy_cache as toy_cache
    from priorkit.distill.zoo.toy import TeacherConfig

    monkeypatch.setenv("PRIORKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(toy_cache, "DEFAULT_CONFIG", TeacherConfig(steps=4, batch=32, hidden=16, depth=1))
    args = ("distill", "shortcut", "--teacher", "toy:moons", "--steps", "2", "--batch", "16")
    first = run(*args, "--out", tmp_path / "a")
    assert first.exit_code == 0, (first.output, first.exception)
    assert "teacher toy:moons must be trained first: 4 steps, about" in first.output  # said before starting
    assert first.output.index("trained first") < first.output.index("student:")
    cached = list((tmp_path / "cache" / "toy-teachers").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".safetensors"

    def no_training(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the cached teacher was trained again")

    monkeypatch.setattr(toy_cache, "train_teacher", no_training)
    second = run(*args, "--out", tmp_path / "b")
    assert second.exit_code == 0, (second.output, second.exception)
    assert "the trained one in the cache" in second.output and "trained first" not in second.output
    from priorkit.distill.students.format import load_student

    a, b = (load_student(tmp_path / r / "student") for r in "ab")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


# ---- a full or read-only disk under restore and distill ---------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_restore_on_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch, code: int
                                                                             ) -> None:
    import priorkit.distill.core.atomic as atomic

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(inp / "a.png")
    (out / "kept.png").write_bytes(b"previous")

    def replace(src, dst):  # noqa: ANN001, ANN202
        raise OSError(code, __import__("os").strerror(code), str(dst))

    monkeypatch.setattr(atomic.os, "replace", replace)
    result = run("restore", inp, out, "--task", "sr2", "--method", "pinv")
    line = one_error_line(result)
    assert result.exit_code == 1 and str(out) in line, result.output
    assert (out / "kept.png").read_bytes() == b"previous"
    assert sorted(p.name for p in out.iterdir()) == ["kept.png"]  # no temporary file, no half-written report


def test_distill_on_a_full_disk_is_one_line_and_keeps_no_temporary_files(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    def full(*a, **k):  # noqa: ANN002, ANN003, ANN202  (what safetensors raises on a full disk)
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "run"
    result = run("distill", "reflow", "--teacher", "toy:gmm", "--steps", "4", "--batch", "8", "--out", out)
    line = one_error_line(result)
    assert result.exit_code == 1 and "No space left on device" in line, result.output
    assert not [p for p in out.rglob("*") if "tmp" in p.name], sorted(out.rglob("*"))


def test_a_nan_loss_in_distill_is_one_line_and_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """The students' losses pass a NaN through (tests/test_students_nan_passthrough.py); `train` refuses it with
    FloatingPointError, which the CLI prints as one line with exit code 1 (the work failed), saying what is kept."""
    from priorkit.distill.students import reflow

    real = reflow.reflow_loss
    calls = []

    def nan_after_two(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > 2 else loss

    monkeypatch.setattr(reflow, "reflow_loss", nan_after_two)
    out = tmp_path / "run"
    result = run("distill", "reflow", "--teacher", "toy:gmm", "--steps", "4", "--batch", "8", "--out", out)
    line = one_error_line(result)
    assert result.exit_code == 1, result.output
    assert "loss became nan at step 2" in line and "checkpoint" in line
    kept = line.split("the last checkpoint is kept in ")[-1]
    assert kept != line and Path(kept).is_dir() and Path(kept).is_relative_to(out)  # the folder named is there


# ---- damaged files a run reads back, and folders a new run would overwrite ---------------------------------------
def test_a_damaged_checkpoint_or_init_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A truncated state.safetensors or a state.json cut mid-way (another tool, a hand edit), and random bytes given
    as --init weights: each refused in one line that names the file (safetensors' own error is not a traceback)."""
    out = tmp_path / "run"
    args = ["distill", "shortcut", "--teacher", "toy:gmm", "--steps", "4", "--batch", "8", "--out", out]
    assert run(*args).exit_code == 0
    state = out / "checkpoint" / "state.safetensors"
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])
    result = run(*args, "--resume")
    line = one_error_line(result)
    assert result.exit_code == 1 and "state.safetensors" in line and "not a readable safetensors" in line, line
    state.write_bytes(whole)
    (out / "checkpoint" / "state.json").write_text('{"step": 4, "log": [')
    result = run(*args, "--resume")
    line = one_error_line(result)
    assert result.exit_code == 1 and "state.json is damaged" in line, line
    init = tmp_path / "init"
    init.mkdir()
    (init / "diffusion_pytorch_model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    result = run("train-prior", "photos", "--init", init, "--out", tmp_path / "tp", "--steps", "1")
    line = one_error_line(result)
    assert result.exit_code == 2 and "diffusion_pytorch_model.safetensors" in line, line
    assert not (tmp_path / "tp").exists()  # refused before anything is written


def test_train_prior_never_writes_over_its_init_an_earlier_run_or_other_files(tmp_path: Path, single_thread
                                                                              ) -> None:
    out = tmp_path / "tp"
    small = ["--steps", "1", "--batch-size", "1"]
    assert run("train-prior", "photos", "--out", out, *small).exit_code == 0
    weights = (out / "diffusion_pytorch_model.safetensors").read_bytes()
    result = run("train-prior", "photos", "--out", out, *small, "--seed", "4")  # a new run into the old one
    assert result.exit_code == 2 and "holds a training run" in one_error_line(result)
    result = run("train-prior", "photos", "--init", out, "--out", out, *small)
    assert result.exit_code == 2 and "same folder" in one_error_line(result)
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    result = run("train-prior", "photos", "--out", mine, *small)
    assert result.exit_code == 2 and "not empty" in one_error_line(result)
    for flag, value, message in (("--lr", "nan", "--lr must be a finite"), ("--n-renders", "0", "--n-renders must")):
        name = "shapes" if flag == "--n-renders" else "photos"
        result = run("train-prior", name, "--out", tmp_path / "bad", flag, value, *small)
        assert result.exit_code == 2 and message in one_error_line(result)
        assert not (tmp_path / "bad").exists()
    from priorkit.distill.zoo.train_prior import train_prior  # the CLI's --threads has min=0; the library checks too

    with pytest.raises(ValueError, match="--threads must be >= 0"):
        train_prior("photos", tmp_path / "bad", steps=1, batch_size=1, threads=-1)
    assert not (tmp_path / "bad").exists()


def test_distill_refuses_a_folder_that_holds_no_teacher_or_init_before_writing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"not a model")
    for extra, message in ((["reflow", "--teacher", empty], str(empty)),
                           (["dmd2", "--teacher", "toy:gmm", "--init", weights], "is a file"),
                           (["dmd2", "--teacher", "toy:gmm", "--init", empty], "holds neither"),
                           (["reflow", "--teacher", "toy:gmm", "--lr", "inf"], "--lr must be a finite")):
        out = tmp_path / "run"
        result = run("distill", *extra, "--steps", "2", "--out", out)
        assert result.exit_code == 2 and message in one_error_line(result), result.output
        assert not out.exists()  # nothing written: a corrected command can use the same --out


# ---- non-finite outputs are never written as images ---------------------------------------------------------------
def test_nan_samples_are_an_error_not_a_black_grid(tmp_path: Path, monkeypatch) -> None:
    import priorkit.apps.sampling as sampling

    monkeypatch.setattr(sampling, "sample", lambda den, x, **k: torch.full_like(x, float("nan")))
    out = tmp_path / "s.png"
    result = run("sample", "--model", "shapes", "--prompt", "a red cube", "--n", "1", "--steps", "1", "--out", out)
    assert result.exit_code == 1 and "NaN or inf" in one_error_line(result) and not out.exists()
    result = run("sample", "--guidance", "1e40", "--out", out, "--n", "1", "--steps", "1")  # inf in float32
    assert result.exit_code == 2 and "[-1000, 1000]" in one_error_line(result)
    result = run("sample", "--model", "photos", "--prompt", "a cat", "--out", out, "--n", "1", "--steps", "1")
    assert result.exit_code == 2 and "takes no --prompt" in one_error_line(result)
    result = run("sample", "--model", "shapes", "--label", "1", "--out", out, "--n", "1", "--steps", "1")
    assert result.exit_code == 2 and "--label applies" in one_error_line(result)
    assert not out.exists()


def test_a_nan_restoration_is_listed_as_failed_not_written(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    import priorkit.inverse.restore as restore_module

    def nan_restore(image, task, method, **k):  # noqa: ANN001, ANN003, ANN202
        x = torch.full((3, 2 * image.shape[-2], 2 * image.shape[-1]), float("nan"))
        return SimpleNamespace(restored=x, residual=torch.tensor([float("nan")]), expected_residual=torch.ones(1),
                               forward=1, backward=0, tiles=1, std=None)

    monkeypatch.setattr(restore_module, "restore", nan_restore)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    _png(inp / "a.png", 8)
    result = run("restore", inp, out, "--task", "sr2", "--method", "pinv")
    assert result.exit_code == 1, result.output
    report = json.loads((out / "report.json").read_text(),  # strict JSON: no bare NaN
                        parse_constant=lambda c: pytest.fail(f"report.json holds {c}"))
    assert report["files"]["a.png"]["status"] == "failed" and "NaN" in report["files"]["a.png"]["reason"]
    assert not (out / "a.png").exists()


# ---- usage errors: one line, exit 2, from the installed entry point ----------------------------------------------
@pytest.mark.parametrize("argv, words", [(["frobnicate"], "No such command 'frobnicate'"),
                                         (["sample", "--n", "abc"], "Invalid value for '--n'"),
                                         (["restore", "in", "out"], "Missing option '--task'"),
                                         (["finetune", "draft", "--steps", "1", "--out", "x"], "'--steps'")])
def test_usage_errors_are_one_line_with_exit_code_2(argv: list[str], words: str, capsys) -> None:
    import tomllib

    from priorkit.apps.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and words in err and "--help" in err, err
    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["priorkit"] == "priorkit.apps.cli:main"  # the installed command goes through main


def test_messages_say_what_the_user_gave_wrong(tmp_path: Path) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    _png(inp / "a.png", 8)
    result = run("restore", inp / "a.png", tmp_path / "o", "--task", "sr2", "--method", "pinv")
    assert result.exit_code == 2 and "is a file: give the folder" in one_error_line(result)
    result = run("restore", inp, tmp_path / "o", "--task", "sr2", "--prior", "judge")
    assert result.exit_code == 2 and "bundled models: shapes, photos" in one_error_line(result)
    result = run("3d", "a red cube", "--prior", "shapes-cd", "--out", tmp_path / "o3", "--steps", "1")
    line = one_error_line(result)
    assert result.exit_code == 2 and "distilled student" in line and "shapes-v2" in line, line
    notaprior = tmp_path / "judge_like"
    notaprior.mkdir()
    (notaprior / "config.json").write_text('{"hidden": 64}')
    (notaprior / "model.safetensors").write_bytes(b"")
    result = run("restore", inp, tmp_path / "o", "--task", "sr2", "--prior", notaprior)
    assert result.exit_code == 2 and "not a diffusers model folder" in one_error_line(result)
    result = run("finetune", "draft", "--out", tmp_path / "f", "--threads", "-1")
    assert result.exit_code == 2 and "--threads" in result.output


def test_a_bad_reference_costs_only_the_scores_and_is_noted(tmp_path: Path) -> None:
    inp, refs, out = tmp_path / "in", tmp_path / "refs", tmp_path / "out"
    inp.mkdir()
    refs.mkdir()
    _png(inp / "a.png", 8)
    _png(inp / "b.png", 8)
    (refs / "a.png").write_bytes(b"not an image")  # unreadable
    _png(refs / "b.png", 5)  # another size than the output
    result = run("restore", inp, out, "--task", "sr2", "--method", "pinv", "--reference-dir", refs)
    assert result.exit_code == 0, result.output  # both restored: a reference is not the restoration
    files = json.loads((out / "report.json").read_text())["files"]
    assert files["a.png"]["status"] == "done" and "unreadable" in files["a.png"]["quality_error"]
    assert files["b.png"]["status"] == "done" and "shape" in files["b.png"]["quality_error"]
    assert "note: a.png: not scored" in result.output and "note: b.png: not scored" in result.output
    assert (out / "a.png").is_file() and (out / "b.png").is_file()


def test_the_long_run_estimate_leaves_out_images_the_run_skips(tmp_path: Path, monkeypatch, capsys) -> None:
    import priorkit.inverse.progress as progress

    _png(tmp_path / "small.png", 8)
    Image.new("RGB", (400, 300)).save(tmp_path / "huge.png")
    monkeypatch.setattr(progress, "estimate_seconds", lambda task, method, hw, **k: (hw[0] * hw[1] / 10.0, 1, 1))
    monkeypatch.setattr(progress, "seconds_per_tile", lambda den: 1.0)
    monkeypatch.setattr(progress, "resolve_prior", lambda prior: None)
    paths = [tmp_path / "small.png", tmp_path / "huge.png"]
    progress.warn_if_long(paths, "sr2", "diffpir", "photos", None, False, {}, max_pixels=1000)
    assert "estimated" not in capsys.readouterr().err  # 6.4 s for the one image that runs: no note
    progress.warn_if_long(paths, "sr2", "diffpir", "photos", None, False, {})
    assert "estimated for 2 images" in capsys.readouterr().err  # 12000 s with the huge one


# ---- the Python API checks what the CLI checks -------------------------------------------------------------------
def test_restore_refuses_bad_numbers_and_a_point_prior_before_work(tmp_path: Path) -> None:
    from priorkit.distill.core.gmm import GaussianMixture
    from priorkit.inverse.restore import restore, restore_folder

    x = torch.rand(3, 16, 16)
    for kwargs, words in (({"sigma_y": -1.0}, "sigma_y must be"), ({"sigma_y": float("nan")}, "sigma_y must be"),
                          ({"nfe": 0}, "nfe must be"), ({"nfe": 1.7}, "nfe must be"),
                          ({"guidance": float("nan")}, "guidance must be")):
        with pytest.raises(ValueError, match=words):
            restore(x, "deblur_gaussian", "classical", **kwargs)
    from priorkit.inverse.operators import Measurement
    from priorkit.inverse.tasks import build_operator, degrade

    with pytest.raises(ValueError, match="sigma_y"):
        Measurement(build_operator("sr2", 16, 16), -0.1)
    with pytest.raises(ValueError, match="sigma_y"):
        degrade(x, "sr2", float("nan"))
    points = GaussianMixture.random(2, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"restore needs an RGB image prior"):
        restore(x, "deblur_gaussian", "diffpir", prior=points, nfe=1)
    inp = tmp_path / "in"
    inp.mkdir()
    _png(inp / "a.png", 8)
    for kwargs, words in (({"nfe": 0}, "--nfe must be"), ({"sigma_y": -1.0}, "--sigma-y must be"),
                          ({"task": "inpaint_mask"}, "needs --mask-dir"), ({"prior": "nope"}, "no such model")):
        args = {"task": "sr2", "method": "diffpir", **kwargs}
        with pytest.raises(Exception, match=words):
            restore_folder(inp, tmp_path / "out", args.pop("task"), args.pop("method"), **args)
        assert not (tmp_path / "out").exists()  # refused before any file, as the CLI does


def test_distill_from_python_checks_what_the_cli_checks_before_writing(tmp_path: Path) -> None:
    from priorkit.distill.students.runner import distill

    out = tmp_path / "run"
    for kwargs, words in (({"steps": 0}, "--steps must be"), ({"batch": 0}, "--batch must be"),
                          ({"lr": float("nan")}, "--lr must be"), ({"guidance": float("nan")}, "--guidance must be"),
                          ({"photo_set": "v9"}, "--photo-set must be"), ({"unconditional": True}, "--unconditional")):
        with pytest.raises(ValueError, match=words):
            distill("reflow", "toy:gmm", out, **kwargs)
        assert not out.exists()
    with pytest.raises(ValueError, match="unknown method"):
        distill("nope", "toy:gmm", out)
    assert not out.exists()
    out.mkdir()
    (out / "student").mkdir()  # a finished run's folder: not replaced without resume
    with pytest.raises(ValueError, match="not empty"):
        distill("reflow", "toy:gmm", out, steps=2)


def test_finetune_and_generate_from_python_refuse_bad_arguments_before_work() -> None:
    from priorkit.distill.core.gmm import GaussianMixture
    from priorkit.distill.finetune.draft import DRaFTConfig
    from priorkit.distill.finetune.reward import CallableReward
    from priorkit.distill.finetune.trainer import finetune, make_config
    from priorkit.gen3d.generate import generate

    base = GaussianMixture.random(2, 2, generator=torch.Generator().manual_seed(0))
    reward = CallableReward(lambda x, cond: -(x**2).sum(-1))
    good = make_config("adjoint_matching", lam=1.0, batch=4)
    for args, kwargs, words in ((("nope", good), {}, "unknown fine-tuning method"),
                                (("adjoint_matching", DRaFTConfig()), {}, "takes a AdjointMatchingConfig"),
                                (("adjoint_matching", good), {"iterations": 0}, "iterations must be"),
                                (("adjoint_matching", good), {"lr": float("nan")}, "lr must be"),
                                (("adjoint_matching", make_config("adjoint_matching", lam=-1.0)), {}, "lam"),
                                (("adjoint_matching", make_config("adjoint_matching", lam=float("nan"))), {}, "lam")):
        with pytest.raises(ValueError, match=words):
            finetune(args[0], base, base, reward, args[1], **{"iterations": 2, **kwargs})
    for kwargs, words in (({"seed": 1.5}, "seed must be"), ({"guidance": "3"}, "guidance must be"),
                          ({"lr": "0.1"}, "lr must be"), ({"preview_every": -1}, "preview_every"),
                          ({"prior": "shapes-dmd2"}, "distilled student")):
        with pytest.raises(ValueError, match=words):
            generate("a red cube", **{"steps": 1, "resolution": 8, **kwargs})
    from priorkit.distill.loading import load_denoiser

    with pytest.raises(ValueError, match="distilled student"):  # the loaded object, not only its name
        generate("a red cube", prior=load_denoiser("shapes-dmd2"), steps=1, resolution=8)


def test_numpy_numbers_are_welcome_where_python_numbers_are() -> None:
    from priorkit.inverse.restore import restore

    x = torch.rand(3, 16, 16)
    a = restore(x, "deblur_gaussian", "classical", nfe=np.int64(3), guidance=np.float32(1.0), sigma_y=np.float64(0.01))
    b = restore(x, "deblur_gaussian", "classical", nfe=3, guidance=1.0, sigma_y=0.01)
    torch.testing.assert_close(a.restored, b.restored)


@pytest.mark.slow  # two fresh interpreters importing torch: ~30-90 s on a shared CPU
def test_distill_under_accelerate_launch_with_two_processes_finishes(tmp_path: Path) -> None:
    """Sharded distill: rank 0 alone checks the folder and records the run, and every rank waits for the student
    before naming it (before: a rank found rank 0's settings.json and refused, or looked for the student too soon)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "-m", "priorkit.apps.cli", "distill", "shortcut", "--teacher", "toy:gmm", "--steps", "4",
                           "--batch", "8", "--out", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "error:" not in proc.stderr and (out / "student" / "priorkit.json").is_file()
    assert json.loads((out / "distill.json").read_text())["student"] == str(out / "student")
