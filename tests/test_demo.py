"""The main job (priorkit.apps.demo) end to end with tiny budgets: every file index.html shows exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from priorkit.apps import demo


@pytest.mark.slow
def test_quick_main_job_writes_a_complete_page(tmp_path: Path, single_thread) -> None:
    page = demo.main(["--out", str(tmp_path), "--quick", "--prompt", "a red sphere"])
    text = page.read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', text)
    assert links, "index.html shows nothing"
    for link in links:
        assert (tmp_path / link).is_file(), f"index.html links a missing file: {link}"
    assert any(link.endswith(".gif") for link in links) and any(link.endswith(".glb") for link in links)
    assert sum(link.startswith("restore/") for link in links) == 2 * len(demo.TASKS)
    assert "samples/teacher.png" in links and "samples/gmm_ode_sampling.png" in links
    assert "samples/student_2steps.png" in links and "samples/dmd2_1step.png" in links  # both bundled students
    assert "Text to 3D" in text and "Restoration" in text and "Fast sampling" in text


def test_empty_prompt_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path), "--prompt", "  "])
    assert not any(tmp_path.iterdir())
