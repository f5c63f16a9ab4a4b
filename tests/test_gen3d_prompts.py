"""``priorkit 3d --prompts FILE``: one asset per prompt, a gallery page, resumable, split across processes."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trimesh
from typer.testing import CliRunner

from priorkit.apps.cli import app
from priorkit.apps.cli_3d import DONE, prompt_folder, read_prompts

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red cube", "a blue sphere", "a green cone"]
TINY = dict(field_resolution=16, n_samples=16, turntable_frames=2, turntable_size=32, texture_size=64,
            preview_views=1, preview_size=8, blob_density=40.0)
ARGS = ["--steps", "1", "--resolution", "8", "--mesh-resolution", "16", "--faces", "300"]


def run(*args: str | Path):  # noqa: ANN201 (click's Result)
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def tiny(monkeypatch):
    import priorkit.gen3d.generate as gg
    from priorkit.distill.core.loading import ModelLoadError, bundled_path

    try:
        bundled_path("shapes")
    except ModelLoadError as e:
        pytest.skip(str(e))
    monkeypatch.setattr(gg, "GenerateConfig", functools.partial(gg.GenerateConfig, **TINY))


def write_prompts(path: Path) -> Path:
    path.write_text("# three tiny prompts\n" + "\n".join(PROMPTS) + "\n\n")
    return path


def test_read_prompts_skips_blank_lines_and_comments(tmp_path):
    assert read_prompts(write_prompts(tmp_path / "p.txt")) == PROMPTS
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt")


def test_prompt_and_prompts_together_or_neither_are_one_line_errors(tmp_path):
    result = run("3d", "a red cube", "--prompts", write_prompts(tmp_path / "p.txt"), "--out", tmp_path / "o")
    assert result.exit_code == 2 and "not both" in result.stderr
    result = run("3d", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "missing PROMPT" in result.stderr
    result = run("3d", "--prompts", tmp_path / "nope.txt", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "cannot read the prompt file" in result.stderr


def test_prompts_make_folders_and_a_gallery_and_resume_after_a_kill(tmp_path, tiny):
    file, out = write_prompts(tmp_path / "p.txt"), tmp_path / "out"
    result = run("3d", "--prompts", file, "--out", out, *ARGS)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "made 3 of 3 prompts" in result.stdout
    page = (out / "index.html").read_text()
    for i, p in enumerate(PROMPTS):
        folder = prompt_folder(out, i, p)
        assert (folder / DONE).is_file() and p in page
        glb = folder / "asset" / "mesh.glb"
        assert trimesh.load(glb, force="mesh").visual.kind == "texture"
        assert f'{folder.name}/asset/turntable.gif"' in page and f'{folder.name}/asset/mesh.glb"' in page
    # a kill during the second prompt: its marker and export are gone, its checkpoint stays
    second = prompt_folder(out, 1, PROMPTS[1])
    (second / DONE).unlink()
    (second / "asset" / "mesh.glb").unlink()
    result = run("3d", "--prompts", file, "--out", out, *ARGS)
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stdout.count("done, skipped") == 2 and "resuming" in result.stdout
    assert (second / DONE).is_file() and (second / "asset" / "mesh.glb").is_file()
    # asked again with another method and seed: the done prompts are not passed off as this call's assets
    before = {p: (prompt_folder(out, i, p) / DONE).read_text() for i, p in enumerate(PROMPTS)}
    result = run("3d", "--prompts", file, "--out", out, *ARGS, "--method", "vsd", "--seed", "7")
    assert result.exit_code == 1 and "done, skipped" not in result.stdout
    assert result.stderr.count("with other settings") == 3 and "method 'sds' -> 'vsd'" in result.stderr
    assert {p: (prompt_folder(out, i, p) / DONE).read_text() for i, p in enumerate(PROMPTS)} == before


def test_prompts_refuse_an_output_that_is_a_file_and_negative_intervals_before_work(tmp_path):
    file = write_prompts(tmp_path / "p.txt")
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = run("3d", "--prompts", file, "--out", blocker, *ARGS)
    assert result.exit_code == 2 and "is a file" in result.stderr and "Traceback" not in result.output
    result = run("3d", "--prompts", file, "--out", tmp_path / "o", "--preview-every", "-1", *ARGS)
    assert result.exit_code == 2 and "--preview-every" in result.stderr and not (tmp_path / "o").exists()
    result = run("3d", "a red cube", "--out", tmp_path / "o", "--faces", "0", *ARGS[:2])
    assert result.exit_code == 2 and "--faces must be >= 4" in result.stderr and not (tmp_path / "o").exists()


LAUNCHED = """
import functools, sys
import priorkit.gen3d.generate as gg
gg.GenerateConfig = functools.partial(gg.GenerateConfig, **{tiny!r})
from priorkit.apps.cli import app
app(sys.argv[1:], prog_name="priorkit")
"""


@pytest.mark.slow  # two fresh interpreters importing torch: ~30-90 s on a shared CPU
def test_prompts_under_accelerate_launch_split_across_two_processes(tmp_path):
    from priorkit.distill.core.loading import ModelLoadError, bundled_path

    try:
        bundled_path("shapes")
    except ModelLoadError as e:
        pytest.skip(str(e))
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(tiny=TINY))
    file, out = write_prompts(tmp_path / "p.txt"), tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "0", str(script), "3d", "--prompts", str(file), "--out", str(out),
                           *ARGS], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all((prompt_folder(out, i, p) / DONE).is_file() for i, p in enumerate(PROMPTS))
    assert proc.stdout.count("making") == 3  # each prompt made once, by one of the two processes
    assert proc.stdout.count("made 3 of 3 prompts") == 1  # the gallery written by rank 0 only
    assert (out / "index.html").is_file()
    print(f"two-process prompts: {time.time() - start:.1f}s")
