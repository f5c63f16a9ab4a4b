"""Training the photos prior on a user's folder: what is read, what is left out and why, and a one-step run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from priorkit.apps.cli import app
from priorkit.distill.zoo.photos import PatchSampler, folder_photos


def _photo_folder(root: Path) -> Path:
    folder = root / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (70, 70), dtype=np.uint8)).save(folder / "grey.jpg")  # greyscale -> RGB
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "tiny.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_folder_photos_reads_the_good_files_and_says_why_it_left_out_the_rest(tmp_path: Path) -> None:
    images, skipped = folder_photos(_photo_folder(tmp_path))
    assert [tuple(im.shape) for im in images] == [(3, 80, 96), (3, 70, 70)]
    why = dict(skipped)
    assert set(why) == {"tiny.png", "broken.png", "notes.txt"}
    assert "smaller" in why["tiny.png"] and "unreadable" in why["broken.png"] and "not an image" in why["notes.txt"]
    patches = PatchSampler(photos=images)(5, torch.Generator().manual_seed(0))
    assert patches.shape == (5, 3, 64, 64) and patches.min() >= -1 and patches.max() <= 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no usable photograph"):
        folder_photos(empty)


def test_train_prior_on_a_folder_runs_and_refuses_bad_folders_first(tmp_path: Path, single_thread) -> None:
    runner = CliRunner()
    folder = _photo_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = runner.invoke(app, ["train-prior", "photos", "--data", str(empty), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "no usable photograph" in bad.output
    assert not (tmp_path / "x").exists()  # refused before any work
    shapes = runner.invoke(app, ["train-prior", "shapes", "--data", str(folder), "--out", str(tmp_path / "y")])
    assert shapes.exit_code != 0 and "photos prior only" in shapes.output
    out = tmp_path / "run"
    ok = runner.invoke(app, ["train-prior", "photos", "--data", str(folder), "--out", str(out), "--steps", "1",
                             "--batch-size", "1"])
    assert ok.exit_code == 0, ok.output
    assert "left out tiny.png" in ok.output and "training on 2 photographs" in ok.output
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
