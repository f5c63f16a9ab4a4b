"""The Gradio app end to end: every endpoint called through gradio_client on a live localhost server (tiny
settings), plus the allow-list of model paths and the cancellation of a streaming job."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from priorkit.apps import web  # noqa: E402

TINY = web.AppConfig(export_resolution=48, turntable_frames=4, turntable_size=32, kde_points=512)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    old = os.environ.get(web.MODEL_DIRS_ENV)
    os.environ[web.MODEL_DIRS_ENV] = str(root)
    yield root
    if old is None:
        os.environ.pop(web.MODEL_DIRS_ENV, None)
    else:
        os.environ[web.MODEL_DIRS_ENV] = old


@pytest.fixture(scope="module")
def client(model_dir):
    app = web.launch(port=free_port(), config=TINY, prevent_thread_lock=True, quiet=True)
    try:
        yield gradio_client.Client(app.local_url, verbose=False)
    finally:
        app.close()


def _error_text(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


# ---- pure functions ----------------------------------------------------------------------------------------------
def test_resolve_model_allow_list(model_dir, tmp_path):
    inside = model_dir / "my-prior"
    inside.mkdir()
    assert web.resolve_model("shapes") == "shapes"
    assert web.resolve_model("my-prior") == str(inside.resolve())
    assert web.resolve_model(str(inside)) == str(inside.resolve())
    assert web.resolve_model("someone/some-model") == "someone/some-model"  # a hub id
    outside = tmp_path / "outside"
    outside.mkdir()
    (model_dir / "escape").symlink_to(outside)
    for bad in (str(outside), "../" + outside.name, "escape", "/etc", "", "a/b/c"):
        with pytest.raises(web.UserInputError):
            web.resolve_model(bad)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # "outside/x" looks like a hub id but is a local folder outside the model dirs
        (outside / "x").mkdir()
        with pytest.raises(web.UserInputError, match="outside the allowed"):
            web.resolve_model("outside/x")
    finally:
        os.chdir(cwd)
    with pytest.raises(web.UserInputError):
        web.resolve_model("someone/some-model", allow_hub=False)


def test_stream_job_cancel_stops_the_worker():
    steps = []

    def work(emit, stop):
        for i in range(10_000):
            time.sleep(0.01)
            steps.append(i)
            emit(step=i)

    gen = web.stream_job(work, poll=0.05)
    kinds = [next(gen)[0] for _ in range(3)]
    assert "progress" in kinds
    gen.close()  # what Gradio does on Cancel
    deadline = time.time() + 5
    while web.ACTIVE_JOBS and time.time() < deadline:
        time.sleep(0.02)
    assert not web.ACTIVE_JOBS
    n = len(steps)
    time.sleep(0.1)
    assert len(steps) == n < 100


def test_stream_job_reraises_errors():
    def work(emit, stop):
        raise ValueError("bad input 42")

    with pytest.raises(ValueError, match="bad input 42"):
        list(web.stream_job(work, poll=0.05))


def test_editor_image_and_mask():
    bg = np.zeros((10, 20, 4), np.uint8)
    bg[..., 0], bg[..., 3] = 255, 255
    layer = np.zeros((10, 20, 4), np.uint8)
    layer[2:5, 3:7, 3] = 255
    image, painted = web.editor_image({"background": bg, "layers": [layer], "composite": None}, 1024)
    assert image.shape == (3, 10, 20) and torch.allclose(image[0], torch.ones(10, 20))
    assert painted.sum() == 12 and painted[2:5, 3:7].min() == 1
    with pytest.raises(web.UserInputError, match="up to 16 pixels"):
        web.editor_image(bg, 16)
    small, _ = web.fit_side(image, painted, 10)
    assert small.shape == (3, 5, 10)


# ---- the endpoints through gradio_client -------------------------------------------------------------------------
def test_status(client):
    text = client.predict(api_name="/status")
    assert "shapes" in text and "Model folders" in text


def test_generate_3d(client):
    preview, status, glb, files, gif = client.predict("a red cube", "SDS", 1, 3, 0, "shapes", 16,
                                                      api_name="/generate_3d")
    import trimesh

    assert status.startswith("done"), status
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
    assert {Path(f).suffix for f in files} == {".glb", ".obj", ".mtl", ".png", ".ply", ".gif"}  # textured OBJ
    assert Image.open(gif).n_frames == TINY.turntable_frames
    assert Image.open(preview).size[0] > 0


def test_generate_3d_cancel(client):
    job = client.submit("a blue sphere", "SDS", 1, 2000, 1, "shapes", 16, api_name="/generate_3d")
    deadline = time.time() + 90
    while time.time() < deadline and not any("step" in str(o[1]) for o in job.outputs() if o):
        time.sleep(0.2)
    assert web.ACTIVE_JOBS, "the job should be running"
    job.cancel()
    deadline = time.time() + 30
    while web.ACTIVE_JOBS and time.time() < deadline:
        time.sleep(0.1)
    assert not web.ACTIVE_JOBS, "Cancel must stop the worker thread"


def test_load_example(client):
    value = client.predict(web.SHAPES_EXAMPLE, api_name="/load_example")
    assert Image.open(value["background"]).size == (32, 32)


def test_restore_example_mode(client, tmp_path):
    bg = client.predict(web.SHAPES_EXAMPLE, api_name="/load_example")["background"]
    editor = {"background": gradio_client.handle_file(bg), "layers": [], "composite": None}
    (before, after), status, download = client.predict(editor, web.SHAPES_EXAMPLE, "super-resolution x2", "PiGDM",
                                                       0.01, web.MODE_EXAMPLE, "auto", 3, 0, 32,
                                                       api_name="/restore")
    assert Image.open(before).size == Image.open(after).size == (32, 32)
    assert Image.open(download).size == (32, 32)
    assert "PSNR" in status and "shapes" in status


def test_restore_painted_mask_observed(client, tmp_path):
    img = web._to_uint8(web.example_image(web.SHAPES_EXAMPLE))
    observed = img.copy()
    observed[10:20, 10:20] = (0, 255, 0)  # garbage under the painted region: the solver must not see it
    Image.fromarray(observed).save(tmp_path / "bg.png")
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[10:20, 10:20] = (255, 0, 255, 255)
    Image.fromarray(layer, "RGBA").save(tmp_path / "layer.png")
    editor = {"background": gradio_client.handle_file(str(tmp_path / "bg.png")),
              "layers": [gradio_client.handle_file(str(tmp_path / "layer.png"))], "composite": None}
    (before, after), status, _ = client.predict(editor, web.NO_EXAMPLE, "inpaint (painted mask)", "PiGDM", 0.0,
                                                web.MODE_OBSERVED, "shapes", 4, 0, 32, api_name="/restore")
    out = np.asarray(Image.open(after).convert("RGB")).astype(float)
    assert out.shape == (32, 32, 3) and "PSNR" not in status
    keep = np.ones((32, 32), bool)
    keep[8:22, 8:22] = False
    assert np.abs(out[keep] - img[keep]).mean() < 12  # the kept pixels are (nearly) kept
    assert np.abs(out[10:20, 10:20] - observed[10:20, 10:20]).mean() > 40  # the hole is filled, not copied


def test_restore_photos(client):
    photo = client.predict("chelsea", api_name="/load_example")["background"]
    editor = {"background": gradio_client.handle_file(photo), "layers": [], "composite": None}
    # a 64-pixel working size: the deblur kernel (13x13) must fit the image, and the photos prior's tile is 64
    args = (editor, "chelsea", "deblur", "PiGDM", 0.01, web.MODE_EXAMPLE, "auto", 2, 0, 64)
    if web.bundled_status()["photos"] is not None:  # weights not trained yet: a clear message, not a stack trace
        with pytest.raises(Exception) as e:
            client.predict(*args, api_name="/restore")
        assert "'photos' prior is not available yet" in _error_text(e)
    else:
        (before, after), status, _ = client.predict(*args, api_name="/restore")
        assert Image.open(after).size == Image.open(before).size and max(Image.open(after).size) == 64
        assert "PSNR" in status


def test_sample_toy(client):
    grid, scatter, status = client.predict("moons", "none", "", 3, "dpm++2m", 200, 1.0, 0, api_name="/sample")
    assert grid is None
    w, h = Image.open(scatter).size
    assert w > 100 and h > 100
    assert "ms per sample" in status and "Sliced W2" in status


def test_sample_shapes(client):
    grid, scatter, status = client.predict("shapes", "none", "a green torus", 2, "euler", 2, 2.0, 0,
                                           api_name="/sample")
    assert scatter is None and "ms per sample" in status
    w, h = Image.open(grid).size
    assert w == 3 * (2 * 33 + 1) and h == 3 * 34  # 2 images of 32 px, 1 px padding, scaled x3


def test_sample_bundled_student(client):
    assert "shapes-cd" in web.find_students()
    grid, scatter, status = client.predict("shapes", "shapes-cd", "a red cube", 2, "euler", 3, 3.0, 0,
                                           api_name="/sample")
    assert scatter is None and "student shapes-cd (2 steps" in status and "ms per sample" in status
    w, h = Image.open(grid).size
    assert w == 3 * (3 * 33 + 1) and h == 3 * 34


def test_sample_a_finetuned_prior_folder(client, model_dir):
    """A prior folder made by `priorkit finetune` (priorkit.json with a "finetune" record) is offered and sampled."""
    import json
    import shutil

    from priorkit.distill.core.loading import bundled_path

    folder = model_dir / "finetuned-judge"
    if not folder.exists():
        shutil.copytree(bundled_path("shapes"), folder)
        spec = json.loads((folder / "priorkit.json").read_text())
        (folder / "priorkit.json").write_text(json.dumps({**spec, "finetune": {"method": "draft", "reward": "judge"}}))
    assert str(folder.resolve()) in web.find_finetuned()
    grid, scatter, status = client.predict(str(folder), "none", "a blue cone", 2, "euler", 2, 2.0, 0,
                                           api_name="/sample")
    assert scatter is None and "ms per sample" in status and Image.open(grid).size == (3 * (2 * 33 + 1), 3 * 34)
    with pytest.raises(Exception) as e:  # a folder outside the allowed model dirs is refused
        client.predict("/etc", "none", "a blue cone", 2, "euler", 2, 2.0, 0, api_name="/sample")
    assert "unknown model" in _error_text(e)


def test_student_of_another_teacher_is_refused(client):
    with pytest.raises(Exception) as e:
        client.predict("moons", "shapes-cd", "", 2, "euler", 10, 1.0, 0, api_name="/sample")
    assert "distilled from 'shapes'; choose that teacher" in _error_text(e)


def test_invalid_inputs_show_our_messages(client, tmp_path):
    cases = [
        (("", "SDS", 1, 3, 0, "shapes", 16), "/generate_3d", "prompt must be a non-empty string"),
        (("a cube", "SDS", 1, 3, 0, "/etc", 16), "/generate_3d", "unknown model"),
        (("a cube", "SDS", 1, 0, 0, "shapes", 16), "/generate_3d", "less than minimum value 1"),  # Gradio's check
        (("a cube", "SDS", 1, 3, 0, "shapes", 200), "/generate_3d", "greater than maximum value 64"),
        (("moons", "none", "", 2.5, "euler", 10, 1.0, 0), "/sample", "steps must be a whole number"),
        (("gmm", "/tmp", "", 2, "euler", 10, 1.0, 0), "/sample", "unknown model"),
        (("shapes", "none", "a cube", 2, "euler", 100, 1.0, 0), "/sample", "samples must lie in [1, 64]"),
    ]
    big = tmp_path / "big.png"
    Image.new("RGB", (1100, 8), "white").save(big)
    editor = {"background": gradio_client.handle_file(str(big)), "layers": [], "composite": None}
    cases.append(((editor, web.NO_EXAMPLE, "deblur", "PiGDM", 0.01, web.MODE_EXAMPLE, "shapes", 2, 0, 32), "/restore",
                  "up to 1024 pixels per side"))
    bg = client.predict(web.SHAPES_EXAMPLE, api_name="/load_example")["background"]
    editor = {"background": gradio_client.handle_file(bg), "layers": [], "composite": None}
    cases.append(((editor, web.NO_EXAMPLE, "inpaint (painted mask)", "PiGDM", 0.01, web.MODE_EXAMPLE, "shapes", 2, 0,
                   32), "/restore", "paint over the region"))
    for args, api, text in cases:
        with pytest.raises(Exception) as e:
            client.predict(*args, api_name=api)
        assert text in _error_text(e), (api, args, _error_text(e))
        assert "Traceback" not in _error_text(e)
