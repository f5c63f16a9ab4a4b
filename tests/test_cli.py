"""The ``priorkit`` command line: help, one-line errors before any work, and tiny real runs of every command
(3d, restore -- also with two processes under ``accelerate launch`` --, distill, sample of a student)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from priorkit.apps.cli import app

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"train-prior": "Train a bundled prior", "sample": "Sample a model or a distilled student",
            "3d": "Text to 3D with SDS or VSD", "restore": "Restore a folder of images",
            "distill": "Distil a teacher into a fast few-step student", "app": "The web app"}
WIDE = {"TERMINAL_WIDTH": "120", "COLUMNS": "120"}


def run(*args: str | Path, **env: str):  # noqa: ANN201 (click's Result)
    return CliRunner().invoke(app, [str(a) for a in args], env={**WIDE, **env})


def assert_bad_input(result, *words: str) -> None:
    """Exit code 2, exactly one ``error:`` line (containing ``words``) on stderr, and no traceback."""
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(errors) == 1, result.stderr
    assert all(w.lower() in errors[0].lower() for w in words), errors[0]
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def write_pngs(folder: Path, n: int, size: int = 16, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


# ---- help ----------------------------------------------------------------------------------------
def test_help_lists_every_command_with_a_one_line_summary():
    result = run("--help")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for name, summary in COMMANDS.items():
        assert any(f" {name} " in ln and summary in ln for ln in lines), (name, result.output)


@pytest.mark.parametrize("command, options", [
    ("3d", ["--method", "--particles", "--steps", "--seed", "--prior", "--resolution", "--guidance", "--out",
            "--preview-every", "--checkpoint-every", "--resume"]),
    ("restore", ["--task", "--method", "--mask-dir", "--reference-dir", "--prior", "--sigma-y", "--resume",
                 "--seed", "--simulate", "--uncertainty", "--samples", "input_dir", "output_dir"]),
    ("distill", ["--teacher", "--out", "--steps", "--batch", "--lr", "--guidance", "--resume", "--seed", "--nfe",
                 "--photo-set", "--init", "--gan", "--fake", "--fake-lr-scale", "--unconditional"]),
    ("sample", ["--model", "--steps", "--prompt", "--n", "--guidance", "--out"]),
    ("train-prior", ["--steps", "--resume"]),
    ("app", ["--host", "--port", "--share", "--threads"]),
])
def test_each_command_has_help_naming_its_options(command, options):
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert COMMANDS[command] in result.output
    for opt in options:
        assert opt in result.output, (command, opt)


# ---- bad input: one line, exit 2, nothing written ------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["", ], ["prompt", "non-empty"]),
    (["   "], ["prompt"]),
    (["a red cube", "--prior", "no-such-prior"], ["unknown prior"]),
    (["a red cube", "--resolution", "4"], ["resolution", "[8, 512]"]),
    (["a red cube", "--resolution", "10000"], ["resolution"]),
    (["a red cube", "--steps", "0"], ["steps"]),
    (["a red cube", "--method", "magic"], ["unknown method"]),
    (["a red cube", "--particles", "0"], ["particles"]),
    (["a red cube", "--guidance", "-1"], ["guidance"]),
    (["a red cube", "--checkpoint-every", "-1"], ["checkpoint-every"]),
])
def test_3d_bad_input(tmp_path, args, words):
    out = tmp_path / "out" / "nested"
    assert_bad_input(run("3d", *args, "--out", out), *words)
    assert not (tmp_path / "out").exists()


def test_3d_unwritable_output_and_overlong_prompt(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_bad_input(run("3d", "a red cube", "--out", blocker / "out"), "output folder", "not a folder")
    # the prompt length is checked with the prior's own tokenizer (MiniLM: 512 word pieces), before any step
    _skip_without("shapes")
    out = tmp_path / "new" / "out"
    assert_bad_input(run("3d", "a red cube " * 200, "--out", out), "prompt too long")
    assert not (tmp_path / "new").exists()  # the folders the check created were removed again


def test_restore_bad_input(tmp_path):
    inp = tmp_path / "in"
    write_pngs(inp, 1)
    out = tmp_path / "out"
    cases = [
        (["--task", "sr3"], ["unknown task", "sr4"]),
        (["--task", "sr4", "--method", "magic"], ["unknown method", "pigdm"]),
        (["--task", "sr4", "--sigma-y", "-0.5"], ["--sigma-y", "[0, 1]"]),
        (["--task", "sr4", "--sigma-y", "2"], ["--sigma-y"]),
        (["--task", "sr4", "--nfe", "0"], ["--nfe"]),
        (["--task", "inpaint_mask", "--method", "pinv"], ["--mask-dir"]),
        (["--task", "inpaint_mask", "--method", "pinv", "--mask-dir", tmp_path / "nope"], ["--mask-dir", "not a"]),
        (["--task", "sr4", "--method", "pinv", "--reference-dir", tmp_path / "nope"], ["--reference-dir"]),
        (["--task", "sr4", "--prior", tmp_path / "no_such_model"], ["no such model folder"]),
        (["--task", "sr4", "--uncertainty"], ["--uncertainty", "--samples"]),
    ]
    for extra, words in cases:
        assert_bad_input(run("restore", inp, out, *extra), *words)
    assert_bad_input(run("restore", tmp_path / "missing", out, "--task", "sr4"), "does not exist")
    assert_bad_input(run("restore", inp, inp / "restored", "--task", "sr4", "--method", "pinv"), "inside")
    (tmp_path / "empty").mkdir()
    assert_bad_input(run("restore", tmp_path / "empty", out, "--task", "sr4", "--method", "pinv"), "no files")
    assert not out.exists() and not (inp / "restored").exists()


def test_distill_bad_input(tmp_path):
    out = tmp_path / "run"
    cases = [
        (["magic", "--teacher", "toy:gmm"], ["unknown method", "shortcut"]),
        (["shortcut", "--teacher", "toy:spiral"], ["toy teacher", "toy:moons"]),
        (["shortcut", "--teacher", str(tmp_path / "no_teacher")], ["unknown teacher"]),
        (["shortcut", "--teacher", "toy:gmm", "--steps", "0"], ["--steps"]),
        (["shortcut", "--teacher", "toy:gmm", "--batch", "0"], ["--batch"]),
        (["shortcut", "--teacher", "toy:gmm", "--lr", "-1e-3"], ["--lr"]),
        (["shortcut", "--teacher", "toy:gmm", "--guidance", "0"], ["--guidance"]),
        (["shortcut", "--teacher", "toy:gmm", "--nfe", "2"], ["--nfe", "bespoke"]),   # fixed at training only there
        (["bespoke", "--teacher", "toy:ring12", "--nfe", "0"], ["--nfe"]),           # the held-out family is offered
        (["cd", "--teacher", "photos", "--photo-set", "v9"], ["--photo-set", "v1", "v2"]),
        (["cd", "--teacher", "toy:gmm", "--photo-set", "v2"], ["--photo-set", "photos teacher"]),
        (["cd", "--teacher", "toy:gmm", "--gan", "0.01"], ["--gan", "dmd"]),
        (["dmd2", "--teacher", "toy:gmm", "--gan", "-1"], ["--gan", ">= 0"]),
        (["dmd2", "--teacher", "toy:gmm", "--init", str(tmp_path / "no_run")], ["--init", "no such"]),
        (["dmd2", "--teacher", "toy:gmm", "--fake", "half"], ["--fake", "copy", "lora"]),
        (["reflow", "--teacher", "toy:gmm", "--fake", "lora"], ["--fake", "dmd"]),
        (["dmd2", "--teacher", "toy:gmm", "--fake", "lora"], ["--fake lora", "UNet"]),
        (["cd", "--teacher", "toy:gmm", "--fake-lr-scale", "10"], ["--fake-lr-scale", "dmd"]),
        (["dmd2", "--teacher", "toy:gmm", "--fake-lr-scale", "0"], ["--fake-lr-scale", "> 0"]),
        (["reflow", "--teacher", "photos", "--unconditional"], ["--unconditional", "shapes prior"]),
        (["reflow", "--teacher", "toy:gmm", "--unconditional"], ["--unconditional", "shapes prior"]),
        (["guidance", "--teacher", "shapes", "--unconditional"], ["--unconditional", "guidance weight"]),
        (["reflow", "--teacher", "shapes", "--unconditional", "--guidance", "3"], ["--unconditional", "guidance"]),
    ]
    for args, words in cases:
        assert_bad_input(run("distill", *args, "--out", out), *words)
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_bad_input(run("distill", "shortcut", "--teacher", "toy:gmm", "--out", out), "not empty", "--resume")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_sample_bad_input(tmp_path):
    assert_bad_input(run("sample", "--model", tmp_path / "no_model", "--out", tmp_path / "s.png"), "no such model")
    assert_bad_input(run("sample", "--steps", "0", "--out", tmp_path / "s.png"), "--steps")
    assert_bad_input(run("sample", "--n", "257", "--out", tmp_path / "s.png"), "--n")
    assert_bad_input(run("sample", "--solver", "rk4", "--out", tmp_path / "s.png"), "unknown solver")
    assert_bad_input(run("sample", "--model", tmp_path, "--out", tmp_path / "s.png"), "holds no model")
    assert not (tmp_path / "s.png").exists()


# ---- 3d ------------------------------------------------------------------------------------------
def _skip_without(name: str) -> None:
    from priorkit.distill.core.loading import ModelLoadError, bundled_path

    try:
        bundled_path(name)
    except ModelLoadError as e:
        pytest.skip(str(e))


def test_3d_tiny_run_writes_a_mesh_trimesh_loads_and_resumes(tmp_path, monkeypatch):
    import trimesh

    import priorkit.gen3d.generate as gg

    _skip_without("shapes")
    # the CLI's defaults, shrunk for a test: 16^3 grid, 16 samples per ray, a 2-frame turntable
    tiny = functools.partial(gg.GenerateConfig, views=2, field_resolution=16, n_samples=16, turntable_frames=2,
                             turntable_size=16, preview_views=2, preview_size=16, blob_density=40.0)
    monkeypatch.setattr(gg, "GenerateConfig", tiny)
    out = tmp_path / "cube"
    result = run("3d", "a red cube", "--steps", "2", "--resolution", "12", "--mesh-resolution", "24", "--seed", "3",
                 "--out", out, "--checkpoint-every", "1", "--preview-every", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    glb = out / "asset" / "mesh.glb"
    assert f"mesh: {glb}" in result.stdout and f"turntable: {out / 'asset' / 'turntable.gif'}" in result.stdout
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    for ext in ("obj", "ply"):
        assert len(trimesh.load(out / "asset" / f"mesh.{ext}", force="mesh").faces) == len(mesh.faces)
    assert (out / "previews" / "step_000002.png").is_file()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    # --resume continues from the checkpoint: 1 more step, not 3
    result = run("3d", "a red cube", "--steps", "3", "--resolution", "12", "--mesh-resolution", "24", "--seed", "3",
                 "--out", out, "--resume")
    assert result.exit_code == 0, (result.output, result.exception)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and len(state["history"]) == 3
    # what shapes the run is checked: another guidance scale, learning rate, render size or prior is refused
    for flag, value, words in (("--guidance", "30", "guidance_scale"), ("--lr", "0.2", "lr 0.4 -> 0.2"),
                               ("--resolution", "16", "resolution 12 -> 16"), ("--prior", "shapes", "prior")):
        argv = {"--resolution": "12", flag: value}
        result = run("3d", "a red cube", "--steps", "4", "--mesh-resolution", "24", "--seed", "3", "--out", out,
                     "--resume", *[a for kv in argv.items() for a in kv])
        assert result.exit_code == 2 and "other settings" in result.output and words in result.output, result.output
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 3  # nothing done


# ---- restore -------------------------------------------------------------------------------------
def test_restore_folder_skips_the_corrupt_file_and_resumes(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_pngs(inp, 2)
    (inp / "broken.png").write_bytes(b"this is not a PNG")
    result = run("restore", inp, out, "--task", "sr4", "--method", "pinv", "--sigma-y", "0", "--simulate")
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in out.glob("*.png")) == ["img0.png", "img1.png"]
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["broken.png"]["status"] == "unreadable" and report["files"]["broken.png"]["output"] is None
    assert {report["files"][f]["status"] for f in ("img0.png", "img1.png")} == {"done"}
    assert "restored 2 of 3 files" in result.stdout and "broken.png" in result.stderr
    for f in ("img0.png", "img1.png"):
        assert Image.open(out / f).size == (16, 16)
    # the CLI's output is what the Python API gives for that file (no noise: the seed does not matter)
    from priorkit.inverse.restore import load_image, restore

    expected = restore(load_image(inp / "img0.png"), "sr4", "pinv", sigma_y=0.0, simulate=True).restored
    expected = (expected.clamp(0, 1).numpy().transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(out / "img0.png")), expected)
    stamps = {f: (out / f).stat().st_mtime_ns for f in ("img0.png", "img1.png")}
    result = run("restore", inp, out, "--task", "sr4", "--method", "pinv", "--sigma-y", "0", "--simulate", "--resume")
    assert result.exit_code == 0
    assert stamps == {f: (out / f).stat().st_mtime_ns for f in stamps}  # done files were not redone


def _tiny_prior_folder(folder: Path) -> Path:
    """A tiny unconditional 8x8 UNet2DModel (DDPM, epsilon) saved as a diffusers folder."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    unet.save_pretrained(str(folder), safe_serialization=True)
    (folder / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
        "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon"}))
    return folder


def test_restore_with_a_prior_folder_tiles_and_reports_nfe(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_pngs(inp, 1, size=12)
    prior = _tiny_prior_folder(tmp_path / "prior")
    result = run("restore", inp, out, "--task", "inpaint_box", "--method", "pigdm", "--prior", prior, "--nfe", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    entry = json.loads((out / "report.json").read_text())["files"]["img0.png"]
    assert entry["status"] == "done" and entry["nfe"] >= 2
    # --nfe 2 is 2 forward passes (each over the 4 tiles of a 12x12 image from an 8x8 prior) and 2 backward passes
    assert (entry["nfe"], entry["forward"], entry["backward"], entry["tiles"]) == (2, 2, 2, 4)
    assert Image.open(out / "img0.png").size == (12, 12)


def test_restore_takes_degraded_inputs_by_default(tmp_path):
    """Inputs are the degraded images: a 16x16 input restored by sr4 is 64x64, with no PSNR (no reference) but the
    measurement residual; --simulate degrades clean inputs (output 16x16, scored); --observed is accepted, noted."""
    inp = tmp_path / "in"
    write_pngs(inp, 1)
    out = tmp_path / "observed"
    result = run("restore", inp, out, "--task", "sr4", "--method", "pinv", "--sigma-y", "0.01")
    assert result.exit_code == 0, (result.output, result.exception)
    assert Image.open(out / "img0.png").size == (64, 64)
    entry = json.loads((out / "report.json").read_text())["files"]["img0.png"]
    assert "psnr" not in entry and entry["seconds"] > 0 and (entry["forward"], entry["backward"]) == (0, 0)
    assert entry["residual_ratio"] == pytest.approx(entry["residual"] / entry["expected_residual"], rel=1e-3)
    assert entry["expected_residual"] == pytest.approx(0.01 * (16 * 16 * 3) ** 0.5, rel=1e-4)
    sim = run("restore", inp, tmp_path / "simulated", "--task", "sr4", "--method", "pinv", "--simulate")
    assert sim.exit_code == 0 and Image.open(tmp_path / "simulated" / "img0.png").size == (16, 16)
    assert json.loads((tmp_path / "simulated" / "report.json").read_text())["files"]["img0.png"]["psnr"] > 5
    old = run("restore", inp, tmp_path / "old", "--task", "sr4", "--method", "pinv", "--no-observed")
    assert old.exit_code == 0 and "deprecated" in old.stderr and "--simulate" in old.stderr
    assert Image.open(tmp_path / "old" / "img0.png").size == (16, 16)  # --no-observed = --simulate


def test_restore_pads_sizes_that_do_not_fit_and_crops_back(tmp_path):
    """A simulated sr4 of an 18x22 photo is padded to 20x24 and cropped back (never cropped to 16x20); an observed
    3x5 input smaller than the prior's 8x8 tile is restored to 6x10 on a canvas padded to 8x10 (2 tiles)."""
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (18, 22, 3), dtype=np.uint8)).save(inp / "odd.png")
    result = run("restore", inp, tmp_path / "sim", "--task", "sr4", "--method", "pinv", "--simulate")
    assert result.exit_code == 0, (result.output, result.exception)
    assert Image.open(tmp_path / "sim" / "odd.png").size == (22, 18)
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (3, 5, 3), dtype=np.uint8)).save(small / "s.png")
    prior = _tiny_prior_folder(tmp_path / "prior")
    result = run("restore", small, tmp_path / "out", "--task", "sr2", "--method", "diffpir", "--prior", prior,
                 "--nfe", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    assert Image.open(tmp_path / "out" / "s.png").size == (10, 6)
    entry = json.loads((tmp_path / "out" / "report.json").read_text())["files"]["s.png"]
    assert (entry["forward"], entry["backward"], entry["tiles"]) == (2, 0, 2)


def test_restore_writes_an_uncertainty_map(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_pngs(inp, 1, size=8)
    prior = _tiny_prior_folder(tmp_path / "prior")
    result = run("restore", inp, out, "--task", "inpaint_box", "--method", "diffpir", "--prior", prior, "--nfe", "2",
                 "--samples", "3", "--uncertainty")
    assert result.exit_code == 0, (result.output, result.exception)
    entry = json.loads((out / "report.json").read_text())["files"]["img0.png"]
    std = np.asarray(Image.open(out / entry["uncertainty"]), dtype=np.float64) / 255 * entry["std_max"]
    assert std.shape == (8, 8, 3) and entry["std_max"] > 0 and std.max() == pytest.approx(entry["std_max"], rel=0.01)


def test_single_process_accelerate_launch_is_pointed_out(tmp_path, monkeypatch):
    """On a CPU-only machine ``accelerate launch --num_processes 2`` (no --multi_gpu) starts one process with
    MASTER_ADDR set and no WORLD_SIZE: the whole folder is restored by it, and the CLI says how to get two."""
    inp = tmp_path / "in"
    write_pngs(inp, 1)
    env = {"ACCELERATE_USE_CPU": "False", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = run("restore", inp, tmp_path / "out", "--task", "sr2", "--method", "pinv", **env)
    assert result.exit_code == 0 and (tmp_path / "out" / "img0.png").is_file()
    assert "single process" in result.stderr and "--multi_gpu" in result.stderr


@pytest.mark.slow  # two fresh interpreters importing torch: ~30-70 s on a shared CPU
def test_restore_under_accelerate_launch_splits_the_files_across_two_processes(tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` runs two CPU processes (gloo): each restores its share,
    no file twice, and rank 0 merges the reports."""
    inp, out = tmp_path / "in", tmp_path / "out"
    names = sorted(p.name for p in write_pngs(inp, 5))
    (inp / "broken.png").write_bytes(b"garbage")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "0", "-m", "priorkit.apps.cli", "restore", str(inp), str(out),
                           "--task", "sr4", "--method", "pinv"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = [set(json.loads((out / f"report.rank{r}.json").read_text())["files"]) for r in (0, 1)]
    assert shards[0] and shards[1] and not shards[0] & shards[1]  # both worked, no file twice
    assert shards[0] | shards[1] == set(names) | {"broken.png"}
    merged = json.loads((out / "report.json").read_text())
    assert merged["world_size"] == 2 and merged["summary"]["done"] == 5 and merged["summary"]["unreadable"] == 1
    assert sorted(p.name for p in out.glob("*.png")) == names
    assert proc.stdout.count("restored 5 of 6 files") == 1  # printed by rank 0 only
    print(f"two-process restore: {time.time() - start:.1f}s")


# ---- distill, students, sample -------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A shortcut student of the exact 2D Gaussian-mixture teacher, distilled for 5 steps by the CLI."""
    out = tmp_path_factory.mktemp("distill") / "run"
    result = run("distill", "shortcut", "--teacher", "toy:gmm", "--steps", "5", "--batch", "64", "--out", out)
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"student: {out / 'student'}" in result.stdout
    return out


def test_distill_writes_a_student_and_resume_continues(toy_run):
    from priorkit.distill.students.format import is_student_folder

    assert is_student_folder(toy_run / "student")
    assert json.loads((toy_run / "distill.json").read_text())["method"] == "shortcut"
    result = run("distill", "shortcut", "--teacher", "toy:gmm", "--steps", "5", "--batch", "64", "--out", toy_run,
                 "--resume")
    assert result.exit_code == 0, (result.output, result.exception)


def test_sample_a_2d_student_writes_a_scatter_plot(toy_run, tmp_path):
    for model in (toy_run / "student", toy_run):  # the student folder, or the run folder that names it
        png = tmp_path / f"{model.name}.png"
        result = run("sample", "--model", model, "--steps", "2", "--n", "300", "--out", png)
        assert result.exit_code == 0, (result.output, result.exception)
        assert f"wrote {png}" in result.stdout and "2 steps, shortcut student" in result.stdout
        im = np.asarray(Image.open(png).convert("RGB"))
        assert im.shape[0] >= 200 and im.shape[1] >= 200
        assert (im.std(axis=2) > 30).sum() > 50  # coloured scatter markers on the white / grey plot
    assert_bad_input(run("sample", "--model", toy_run, "--prompt", "a red cube", "--out", tmp_path / "x.png"),
                     "takes no prompt")


def test_run_folder_is_found_from_another_working_directory(toy_run, tmp_path, monkeypatch):
    from priorkit.apps.sampling import student_folder

    monkeypatch.chdir(tmp_path)
    (toy_run / "distill.json").write_text(json.dumps({**json.loads((toy_run / "distill.json").read_text()),
                                                      "student": "relative/student"}))
    assert student_folder(toy_run) == toy_run / "student"
    assert student_folder(tmp_path) is None


def test_bundled_students_sample_with_their_own_sampler(tmp_path):
    from priorkit.apps.sampling import student_folder
    from priorkit.apps.web_models import bundled_students
    from priorkit.distill.core.loading import BUNDLED_DIR

    for name in bundled_students():  # each bundled student is a student, not a prior for DPM-Solver++
        assert student_folder(name) == BUNDLED_DIR / name
    assert student_folder("shapes") is None and student_folder("photos") is None
    if "shapes-dmd2" in bundled_students():
        out = tmp_path / "s.png"
        res = run("sample", "--model", "shapes-dmd2", "--prompt", "a red cube", "--n", "2", "--out", out)
        assert res.exit_code == 0, res.output
        assert "1 step, dmd2 student" in res.output and out.is_file()


def test_load_denoiser_on_a_student_folder_returns_the_student(toy_run):
    from priorkit.distill.core.denoiser import Denoiser
    from priorkit.distill.loading import load_denoiser
    from priorkit.distill.students.format import load_student

    a, b = load_denoiser(toy_run / "student"), load_student(toy_run / "student")
    assert isinstance(a, Denoiser) and type(a) is type(b) and a.sample_shape == (2,)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    t = torch.rand(16, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    cond = {"d": torch.full((16,), 0.25)}
    with torch.no_grad():
        pa, pb = a(x, t, cond), b(x, t, cond)
    assert torch.equal(pa.x0, pb.x0) and torch.equal(pa.eps, pb.eps)
    assert not torch.equal(pa.x0, a(x, t, {"d": torch.zeros(16)}).x0)  # the step-size input is used


def test_sample_an_image_student_writes_a_grid(tmp_path):
    from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
    from priorkit.distill.loading import load_denoiser
    from priorkit.distill.students.format import copy_teacher, save_student

    teacher = load_denoiser(_tiny_prior_folder(tmp_path / "teacher"))
    assert isinstance(teacher, DiffusersDenoiser)
    folder = save_student(copy_teacher(teacher), tmp_path / "student",
                          {"method": "reflow", "sampler": "ddim", "steps": 1, "teacher": str(tmp_path / "teacher")})
    png = tmp_path / "grid.png"
    result = run("sample", "--model", folder, "--n", "3", "--out", png)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "1 step, reflow student" in result.stdout
    # 3 images of 8x8 in a row, 1-pixel white padding, scaled x4
    assert Image.open(png).size == ((3 * 9 + 1) * 4, (1 * 9 + 1) * 4)


def test_a_student_folder_carries_its_restore_budget(toy_run, tmp_path):
    """``restore_nfe`` in a student's priorkit.json reaches the loaded denoiser (restore's default step budget)."""
    import shutil

    from priorkit.distill.loading import load_denoiser

    folder = tmp_path / "student"
    shutil.copytree(toy_run / "student", folder)
    assert getattr(load_denoiser(folder), "restore_nfe", None) is None
    meta = json.loads((folder / "priorkit.json").read_text())
    (folder / "priorkit.json").write_text(json.dumps({**meta, "restore_nfe": 3}))
    assert load_denoiser(folder).restore_nfe == 3
