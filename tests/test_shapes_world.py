"""Tests of the shapes world: renderer geometry, captions, ground-truth meshes and the shipped judge."""

from __future__ import annotations

import math
import re

import pytest
import torch

from priorkit.distill.core.cameras import Camera, view_phrase
from priorkit.distill.zoo.shapes import (
    COLOUR_NAMES,
    COLOURS,
    HELD_OUT_WORDS,
    PARAPHRASE_PROMPTS,
    SHAPES,
    caption,
    make_dataset,
    render,
    sdf,
    silhouette,
    training_caption,
    true_mesh,
)

# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("camera", [Camera(30.0, 20.0), Camera(-120.0, 55.0), Camera(90.0, -10.0, distance=2.2)])
def test_sphere_silhouette_matches_analytic_disc(camera: Camera) -> None:
    size, r = 48, 0.5
    cover = silhouette(["sphere"], [camera], size=size, supersample=4)[0, 0]
    # The sphere subtends a cone of half-angle alpha = asin(r / d) around the optical axis; on the image plane at
    # focal length f (pixels) that is a disc of radius f * tan(alpha) around the image centre.
    focal = 0.5 * size / math.tan(math.radians(camera.fov) / 2)
    radius_px = focal * math.tan(math.asin(r / camera.distance))
    j, i = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    rho = torch.hypot(i - 0.5 * size, j - 0.5 * size)
    inside, outside = rho < radius_px - 1.0, rho > radius_px + 1.0
    assert inside.sum() > 100
    assert torch.all(cover[inside] == 1.0)
    assert torch.all(cover[outside] == 0.0)
    # the anti-aliased area matches the disc area closely
    assert abs(float(cover.sum()) - math.pi * radius_px**2) < 0.02 * math.pi * radius_px**2


def test_render_shapes_and_range() -> None:
    cams = [Camera(10.0 * k, 15.0) for k in range(len(SHAPES))]
    images = render(list(SHAPES), ["red", "green", "blue", "white", "black"], cams, size=24, supersample=2,
                    generator=torch.Generator().manual_seed(0))
    assert images.shape == (len(SHAPES), 3, 24, 24)
    assert images.dtype == torch.float32 and images.min() >= 0.0 and images.max() <= 1.0
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.all(corners == 1.0)  # white background
    non_white = (images < 0.98).any(dim=1).float().mean(dim=(1, 2))
    assert torch.all(non_white > 0.05)  # every object is visible, including the white one


def test_render_is_deterministic_for_fixed_generator() -> None:
    cams = [Camera(40.0, 30.0), Camera(-100.0, 5.0), Camera(170.0, 50.0)]
    args = (["cube", "torus", "cone"], ["orange", "purple", "yellow"], cams)
    a = render(*args, size=16, generator=torch.Generator().manual_seed(7))
    b = render(*args, size=16, generator=torch.Generator().manual_seed(7))
    c = render(*args, size=16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # different random lights
    d1, d2 = make_dataset(12, size=16, seed=3), make_dataset(12, size=16, seed=3)
    assert all(torch.equal(d1[k], d2[k]) for k in d1)


def test_make_dataset_keys_and_balance() -> None:
    n = 80
    data = make_dataset(n, size=8, seed=1)
    assert data["images"].shape == (n, 3, 8, 8) and data["images"].dtype == torch.uint8
    assert data["light"].shape == (n, 3)
    pairs = data["shape"] * len(COLOURS) + data["colour"]
    assert torch.equal(torch.bincount(pairs, minlength=40), torch.full((40,), 2))
    assert data["elevation"].min() >= -10.0 and data["elevation"].max() <= 60.0


# ----------------------------------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------------------------------


def test_view_phrases_at_key_angles() -> None:
    assert view_phrase(0.0, 0.0) == "front view"
    assert view_phrase(45.0, 10.0) == "front view"
    assert view_phrase(-44.0, 30.0) == "front view"
    assert view_phrase(90.0, 0.0) == "side view"
    assert view_phrase(-90.0, 20.0) == "side view"
    assert view_phrase(180.0, 0.0) == "back view"
    assert view_phrase(-150.0, 10.0) == "back view"
    assert view_phrase(300.0, 0.0) == "side view"  # wraps to -60
    assert view_phrase(0.0, 45.0) == "overhead view"
    assert view_phrase(180.0, 60.0) == "overhead view"
    assert Camera(100.0, 10.0).view == "side view"


def test_caption_format() -> None:
    assert caption("cube", "red", "side view") == "a red cube, side view"
    assert caption("cube", "red") == "a red cube"
    assert caption("sphere", "orange", "front view") == "an orange sphere, front view"
    assert caption("torus", "white", None) == "a white torus"


def test_training_captions_never_use_held_out_words() -> None:
    g = torch.Generator().manual_seed(0)
    views = [None, "front view", "side view", "back view", "overhead view"]
    captions = set()
    for k in range(2000):
        shape, colour = SHAPES[k % len(SHAPES)], COLOUR_NAMES[(k // len(SHAPES)) % len(COLOUR_NAMES)]
        view = views[k % len(views)]
        text = training_caption(shape, colour, view, g)
        low = text.lower()
        for word in HELD_OUT_WORDS:
            assert word not in low, (word, text)  # substring check also catches "boxy", "ring-shaped"
            assert not re.search(rf"\b{word}\b", low)
        if view:
            assert view in text
        captions.add(text)
    assert len(captions) > 300  # templates and synonyms give variety
    canonical = {caption(s, c, v) for s in SHAPES for c in COLOUR_NAMES for v in views}
    assert len(captions & canonical) >= 20  # the canonical caption is among the templates


def test_paraphrase_prompts_use_held_out_words() -> None:
    assert len(PARAPHRASE_PROMPTS) >= 5
    for text, shape, colour in PARAPHRASE_PROMPTS:
        assert shape in SHAPES and colour in COLOURS
        assert any(w in text for w in HELD_OUT_WORDS)


# ----------------------------------------------------------------------------------------------------------------------
# Ground-truth meshes
# ----------------------------------------------------------------------------------------------------------------------

EXPECTED = {
    # shape: (bounds min, bounds max, analytic volume)
    "sphere": ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5), 4.0 / 3.0 * math.pi * 0.5**3),
    "cube": ((-0.4, -0.4, -0.4), (0.4, 0.4, 0.4), 0.8**3),
    "cylinder": ((-0.4, -0.4, -0.45), (0.4, 0.4, 0.45), math.pi * 0.4**2 * 0.9),
    "cone": ((-0.45, -0.45, -0.45), (0.45, 0.45, 0.45), math.pi * 0.45**2 * 0.9 / 3.0),
    "torus": ((-0.5, -0.5, -0.15), (0.5, 0.5, 0.15), 2.0 * math.pi**2 * 0.35 * 0.15**2),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_true_mesh_dimensions(shape: str) -> None:
    mesh = true_mesh(shape)
    lo, hi, volume = EXPECTED[shape]
    assert mesh.is_watertight
    assert torch.allclose(torch.tensor(mesh.bounds, dtype=torch.float64), torch.tensor([lo, hi], dtype=torch.float64),
                          atol=1e-3)
    assert abs(mesh.volume - volume) < 0.02 * volume
    # the mesh surface is the zero set of the SDF
    v = torch.tensor(mesh.vertices, dtype=torch.float32)
    assert sdf(shape, v).abs().max() < 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# Judge
# ----------------------------------------------------------------------------------------------------------------------


def test_judge_shipped_weights_accuracy() -> None:
    from priorkit.distill.zoo.judge import load_judge

    judge = load_judge()
    data = make_dataset(200, seed=987_654)  # a seed not used in training or in the training-time evaluation
    acc = judge.accuracy(data["images"].float() / 255.0, data["shape"], data["colour"])
    assert acc >= 0.98
    # any input size works (resized internally); upscaled renders are still judged correctly
    big = torch.nn.functional.interpolate(data["images"][:40].float() / 255.0, size=64, mode="bilinear")
    assert judge.accuracy(big, data["shape"][:40], data["colour"][:40]) >= 0.95


def test_load_judge_missing_weights(tmp_path) -> None:
    from priorkit.distill.zoo.judge import load_judge

    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_judge(tmp_path / "nope")
