"""The web app in a real browser: headless Chromium (the system's, never a downloaded one) driven by Playwright.

Each tab runs one small job through the page's own widgets; the test asserts on what the page shows and saves a
screenshot to outputs/screenshots/<tab>.png (to docs/screenshots/, shown in README, with
PRIORKIT_UPDATE_SCREENSHOTS=1). Skipped, with the reason, when Chromium or Playwright is missing
(``make test`` installs Debian's chromium first when it runs as root).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM = os.environ.get("PRIORKIT_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
if CHROMIUM is None:
    pytest.skip("no system Chromium found (install it: apt-get install -y chromium, or set PRIORKIT_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

from priorkit.apps import web  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
SHOTS = Path(__file__).resolve().parent.parent / (
    "docs" if os.environ.get("PRIORKIT_UPDATE_SCREENSHOTS") == "1" else "outputs") / "screenshots"
TINY = web.AppConfig(export_resolution=64, turntable_frames=8, turntable_size=48)
LONG = 300_000  # ms: the machine may be busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    old = os.environ.get(web.MODEL_DIRS_ENV)
    os.environ[web.MODEL_DIRS_ENV] = str(tmp_path_factory.mktemp("models"))
    app = web.launch(port=free_port(), config=TINY, prevent_thread_lock=True, quiet=True)
    try:
        yield app.local_url
    finally:
        app.close()
        if old is None:
            os.environ.pop(web.MODEL_DIRS_ENV, None)
        else:
            os.environ[web.MODEL_DIRS_ENV] = old


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        except Exception as e:  # noqa: BLE001 - a broken browser install is a reason to skip, not to fail
            pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {e}")
        yield b
        b.close()


@pytest.fixture
def page(browser, url):
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url, wait_until="networkidle")
    yield pg
    pg.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def fit_viewport(page) -> None:
    """Grow the viewport to the page's height (a full-page capture would resize, and so blank, WebGL canvases)."""
    height = int(page.evaluate("document.documentElement.scrollHeight"))
    if height != page.viewport_size["height"]:
        page.set_viewport_size({"width": page.viewport_size["width"], "height": height})


def screenshot(page, name: str) -> Path:
    """A screenshot of the whole page, palette-quantised so it stays small enough to commit."""
    from PIL import Image

    SHOTS.mkdir(parents=True, exist_ok=True)
    fit_viewport(page)
    png = page.screenshot()
    path = SHOTS / f"{name}.png"
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128).save(path, optimize=True)
    return path


def wait_for_drawing(element, timeout: float = 90.0, min_pixels: int = 5000) -> bool:
    """True once the element's screenshot has at least ``min_pixels`` non-white pixels: a drawn mesh (the empty
    viewer has a few hundred, a small mesh tens of thousands)."""
    import time

    import numpy as np
    from PIL import Image

    deadline = time.time() + timeout
    while time.time() < deadline:
        shot = np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("L"))
        if int((shot < 200).sum()) >= min_pixels:
            return True
        time.sleep(1.0)
    return False


def set_number(panel, label: str, value: int) -> None:
    box = panel.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")


def status_contains(page, elem: str, *texts: str) -> None:
    """Wait until the Markdown ``#elem`` shows one of ``texts`` (or an error toast appears), then check it."""
    cond = " || ".join(f"t.includes({t!r})" for t in texts)
    page.wait_for_function(f"(() => {{ const e = document.querySelector('#{elem}'); const t = e ? e.innerText : '';"
                           f" return {cond} || document.querySelector('.toast-body') !== null; }})()", timeout=LONG)
    toast = page.locator(".toast-body")
    assert toast.count() == 0, f"the page showed an error: {toast.first.inner_text()}"


def test_fast_sampling_tab(page):
    page.get_by_role("tab", name="Fast sampling").click()
    panel = page.locator("[role=tabpanel]:visible")
    set_number(panel, "number input for Samples", 1000)
    panel.get_by_role("button", name="Sample", exact=True).click()
    status_contains(page, "status_sampling", "Sliced W2")
    page.wait_for_selector("#scatter img", timeout=LONG)
    assert "ms per sample" in page.inner_text("#status_sampling")
    assert page.locator("#scatter img").evaluate("img => img.naturalWidth") > 100
    assert screenshot(page, "sampling").stat().st_size < 400_000


def choose(panel, label: str, option: str) -> None:
    """Pick ``option`` in the Gradio dropdown labelled ``label``."""
    box = panel.get_by_label(label, exact=True)
    box.click()
    box.fill(option)
    panel.page.get_by_role("option", name=option, exact=True).click()


def test_fast_sampling_bundled_student(page):
    page.get_by_role("tab", name="Fast sampling").click()
    panel = page.locator("[role=tabpanel]:visible")
    choose(panel, "Teacher", "shapes")
    choose(panel, "Student", "shapes-cd")
    set_number(panel, "number input for Steps", 2)
    set_number(panel, "number input for Samples", 8)
    panel.get_by_role("button", name="Sample", exact=True).click()
    status_contains(page, "status_sampling", "ms per sample")
    assert "student shapes-cd (2 steps" in page.inner_text("#status_sampling")
    page.wait_for_selector("#grid img", timeout=LONG)
    assert page.locator("#grid img").evaluate("img => img.naturalWidth") == 3 * (8 * 33 + 1)
    assert screenshot(page, "sampling_student").stat().st_size < 400_000


def test_restore_tab(page):
    page.get_by_role("tab", name="Restore").click()
    panel = page.locator("[role=tabpanel]:visible")
    assert "shapes" in page.inner_text("#prior_status")
    panel.get_by_role("combobox", name="Example").click()
    page.get_by_role("option", name=web.SHAPES_EXAMPLE).click()
    page.wait_for_function("document.querySelectorAll('#editor canvas, #editor img').length > 0", timeout=LONG)
    page.wait_for_timeout(1500)  # the editor uploads its layers
    panel.get_by_role("radio", name="super-resolution x4").check()
    set_number(panel, "number input for Steps (model evaluations)", 15)
    set_number(panel, "number input for Working size (longer side, pixels)", 32)
    panel.get_by_role("button", name="Restore", exact=True).click()
    status_contains(page, "status_restore", "PSNR")
    text = page.inner_text("#status_restore")
    assert "'shapes' prior" in text and "dB" in text
    page.wait_for_function("document.querySelectorAll('#slider img').length == 2", timeout=LONG)
    assert screenshot(page, "restore").stat().st_size < 400_000


def test_text_to_3d_tab(page):
    panel = page.locator("[role=tabpanel]:visible")  # the first tab
    page.get_by_role("textbox", name="Prompt").fill("a red cube")
    set_number(panel, "number input for Steps", 8)
    set_number(panel, "number input for Render resolution", 16)
    panel.get_by_role("button", name="Generate", exact=True).click()
    status_contains(page, "status3d", "done")
    page.wait_for_selector("#preview3d img", timeout=LONG)
    page.wait_for_selector("#model3d canvas", timeout=60_000)  # the GLB reached the 3D viewer...
    fit_viewport(page)
    assert wait_for_drawing(page.locator("#model3d canvas")), "the 3D viewer drew nothing"  # ...and shows the mesh
    assert page.locator("#gif3d img").count() == 1
    downloads = page.locator("#files3d a[download]").evaluate_all("els => els.map(e => e.getAttribute('download'))")
    assert {"mesh.glb", "mesh.obj", "mesh.mtl", "mesh.png", "mesh.ply", "turntable.gif"} <= set(downloads)
    assert screenshot(page, "3d").stat().st_size < 400_000
