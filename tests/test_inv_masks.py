"""Masks by value, the pieces a mutation run of inverse/operators/masks.py left unchecked (tests/MUTANTS.md).

* Inpainting stores its mask as float (bool / integer masks as float32, a float mask in its own dtype) and follows
  the input's device;
* the box, half and random masks at their defaults, every half, and the words of their refusals;
* a stroke mask is the union of CLOSED capsules (radius r, the disc's rim included) around its random walk, also for
  steps shorter than a pixel, and it draws without torch's meshgrid warning;
* a user's mask file (or PIL image) is read through PIL's 8-bit grey "L"; a tensor that requires grad is read
  detached; an unreadable file is named in the error; the all-observed warning points at the caller.
"""

from __future__ import annotations

import math
import sys
import types
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from priorkit.inverse.operators import Inpainting, box_mask, half_mask, mask_from_image, random_mask, stroke_mask
from priorkit.inverse.operators import masks as masks_module


# ---- Inpainting --------------------------------------------------------------------------------------------------
def test_inpainting_stores_bool_and_integer_masks_as_float32_and_keeps_a_float_masks_dtype() -> None:
    keep = [[1, 0], [0, 1]]
    for given in (torch.tensor(keep, dtype=torch.bool), torch.tensor(keep), torch.tensor(keep, dtype=torch.uint8)):
        op = Inpainting(given)
        assert op.mask.dtype == torch.float32 and op.mask.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    for dtype in (torch.float64, torch.float16):
        op = Inpainting(torch.tensor(keep, dtype=dtype))
        assert op.mask.dtype == dtype and op.mask.flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    assert Inpainting(torch.tensor(keep, dtype=torch.bool)).state_dict()["mask"].dtype == torch.float32


def test_inpainting_follows_the_inputs_device() -> None:
    """The CPU mask is moved to x's device (checked on torch's shape-only "meta" device)."""
    op = Inpainting(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    x = torch.ones(1, 3, 2, 2, device="meta")
    for out in (op.A(x), op.At(x), op.pinv(x), op.measured(x), op.solve(x, 1.0, 0.5)):
        assert out.device.type == "meta" and out.shape == (1, 3, 2, 2)


# ---- box, half and random masks ------------------------------------------------------------------------------------
def _missing_box(m: torch.Tensor) -> tuple[int, int, int, int]:
    """(first row, last row + 1, first column, last column + 1) of the missing pixels, which must fill that box."""
    rows, cols = (m[0, 0] == 0).nonzero(as_tuple=True)
    box = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1)
    assert int((m == 0).sum()) == (box[1] - box[0]) * (box[3] - box[2])
    return box


def test_half_masks_on_an_odd_sized_image_and_the_default_side() -> None:
    # 5 x 7: the missing half is H // 2 = 2 rows or W // 2 = 3 columns, at the named side
    want = {"left": (0, 5, 0, 3), "right": (0, 5, 4, 7), "top": (0, 2, 0, 7), "bottom": (3, 5, 0, 7)}
    for side, box in want.items():
        m = half_mask(5, 7, side)
        assert m.shape == (1, 1, 5, 7) and m.dtype == torch.float32
        assert _missing_box(m) == box, side
    assert torch.equal(half_mask(5, 7), half_mask(5, 7, "right"))  # the default side is the right half
    assert _missing_box(half_mask(4, 6)) == (0, 4, 3, 6)


def test_mask_refusals_say_what_was_wrong() -> None:
    with pytest.raises(ValueError, match=r"box \(9, 0, 2, 2\) \(top, left, height, width\) does not fit in a 10x10"):
        box_mask(10, 10, (9, 0, 2, 2))
    with pytest.raises(ValueError, match=r"side must be one of \['bottom', 'left', 'right', 'top'\], got 'middle'"):
        half_mask(4, 4, "middle")
    with pytest.raises(ValueError, match=r"missing must be in \[0, 1\], got 1.5"):
        random_mask(4, 4, 1.5)


def test_random_mask_misses_eighty_percent_by_default() -> None:
    m = random_mask(10, 10, generator=torch.Generator().manual_seed(0))
    assert m.shape == (1, 1, 10, 10) and m.dtype == torch.float32
    assert int((m == 0).sum()) == 80 and int((m == 1).sum()) == 20


# ---- stroke masks --------------------------------------------------------------------------------------------------
def _walk(seed: int, H: int, W: int, n_strokes: int, max_vertices: int, max_step: float,
          width: tuple[float, float]) -> list[tuple[float, list[tuple[tuple[float, float], tuple[float, float]]]]]:
    """The documented random walk, drawn from the generator in stroke_mask's order: per stroke a uniform start, a
    uniform heading, a radius max(0.5, w min(H, W) / 2) with w uniform in ``width``, then 1..max_vertices steps, each
    turning by at most 90 degrees, of length uniform in [0.1, 1] max_step min(H, W), clamped to the image.
    Returns [(radius, [(p, q), ...]), ...] in float64 (the library's float32 walk differs by ~1e-6 px)."""
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=g).item()

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=g))

    size = min(H, W)
    strokes = []
    for _ in range(randint(n_strokes, n_strokes)):
        p = (uniform(0, H - 1), uniform(0, W - 1))
        heading = uniform(0, 2 * math.pi)
        radius = max(0.5, uniform(*width) * size / 2)
        segments = []
        for _ in range(randint(1, max_vertices)):
            heading += uniform(-math.pi / 2, math.pi / 2)
            step = uniform(0.1, 1.0) * max_step * size
            q = (min(max(p[0] + step * math.sin(heading), 0.0), H - 1.0),
                 min(max(p[1] + step * math.cos(heading), 0.0), W - 1.0))
            segments.append((p, q))
            p = q
        strokes.append((radius, segments))
    return strokes


def _closed_capsules(strokes, H: int, W: int) -> tuple[torch.Tensor, float]:
    """The pixels within distance r (rim included) of a segment, in exact rational arithmetic; and the smallest
    |dist^2 - r^2| over pixels NOT exactly on a rim (how far float rounding is from flipping any pixel)."""
    missing = torch.zeros(H, W, dtype=torch.bool)
    margin = math.inf
    for radius, segments in strokes:
        r2 = Fraction(radius) ** 2
        for p, q in segments:
            p0, p1 = Fraction(p[0]), Fraction(p[1])
            d0, d1 = Fraction(q[0]) - p0, Fraction(q[1]) - p1
            dd = d0 * d0 + d1 * d1
            for i in range(H):
                for j in range(W):
                    t = Fraction(0) if dd == 0 else min(max(((i - p0) * d0 + (j - p1) * d1) / dd, Fraction(0)), 1)
                    dist2 = (i - p0 - t * d0) ** 2 + (j - p1 - t * d1) ** 2
                    missing[i, j] |= dist2 <= r2
                    if dist2 != r2:
                        margin = min(margin, abs(float(dist2 - r2)))
    return (~missing).to(torch.float32)[None, None], margin


#: 9 x 9 with unbounded steps: every vertex after the start is a corner, so a second step runs along an image edge
#: (corner to corner, length 8: exact in float32) and the row or column next to it lies EXACTLY at the brush radius
#: r = (2 / 9) 9 / 2 = 1 (seeds 2 and 7 take that edge). 12 x 12 with steps of 0.1-0.96 px: segments shorter than a
#: pixel, where the projection onto the segment divides by |q - p|^2 < 1 (seeds 0 and 3 show it).
STROKE_CASES = [
    (9, 9, dict(n_strokes=1, max_vertices=2, max_step=1e6, width=(2 / 9, 2 / 9)), 2),
    (9, 9, dict(n_strokes=1, max_vertices=2, max_step=1e6, width=(2 / 9, 2 / 9)), 7),
    (12, 12, dict(n_strokes=3, max_vertices=12, max_step=0.08, width=(0.1, 0.1)), 0),
    (12, 12, dict(n_strokes=3, max_vertices=12, max_step=0.08, width=(0.1, 0.1)), 3),
]


@pytest.mark.parametrize("H, W, kw, seed", STROKE_CASES, ids=["edge-2", "edge-7", "short-0", "short-3"])
def test_a_stroke_mask_is_the_union_of_closed_capsules_around_its_walk(H: int, W: int, kw: dict, seed: int) -> None:
    strokes = _walk(seed, H, W, **kw)
    want, margin = _closed_capsules(strokes, H, W)
    assert margin > 1e-3  # no pixel off a rim is near one: float32 rounding cannot flip it
    assert torch.equal(stroke_mask(H, W, torch.Generator().manual_seed(seed), **kw), want)


def test_the_edge_cases_above_do_run_along_an_edge_and_take_short_steps() -> None:
    """Guards the cases of the capsule test: the first two have a corner-to-corner edge, the others a step < 1 px."""
    for H, W, kw, seed in STROKE_CASES:
        lengths = [math.dist(p, q) for _, segments in _walk(seed, H, W, **kw) for p, q in segments]
        if kw["max_step"] > 1:
            assert any(abs(n - 8.0) < 1e-9 for n in lengths), lengths
        else:
            assert any(0.3 < n < 1.0 for n in lengths), lengths


def test_stroke_mask_draws_without_torch_warnings() -> None:
    """torch.meshgrid without ``indexing`` warns (once per process, every time with warn_always)."""
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            stroke_mask(8, 8, torch.Generator().manual_seed(0))
    finally:
        torch.set_warn_always(always)


# ---- a user's mask -------------------------------------------------------------------------------------------------
#: pure green: PIL's "L" is round(0.587 255) = 150, i.e. 150 / 255 = 0.5882; its exact ITU-R 601 luma is 0.587.
#: A threshold between the two tells which one was read.
GREEN_THRESHOLD = 0.5875


def _green_and_black() -> Image.Image:
    im = Image.new("RGB", (2, 1), (0, 0, 0))
    im.putpixel((0, 0), (0, 255, 0))
    return im


def test_an_rgb_mask_file_is_read_as_pils_8_bit_grey(tmp_path) -> None:
    path = tmp_path / "mask.png"
    _green_and_black().save(path)
    assert np.asarray(Image.open(path).convert("L")).tolist() == [[150, 0]]  # PIL's rounding, as stated above
    m = mask_from_image(path, 1, 2, threshold=GREEN_THRESHOLD)
    assert m.flatten().tolist() == [1.0, 0.0]          # 150 / 255 >= 0.5875: green is observed
    assert mask_from_image(str(path), 1, 2, threshold=GREEN_THRESHOLD).flatten().tolist() == [1.0, 0.0]


def test_a_pil_image_mask_is_read_as_its_8_bit_grey() -> None:
    m = mask_from_image(_green_and_black(), 1, 2, threshold=GREEN_THRESHOLD)
    assert m.flatten().tolist() == [1.0, 0.0]
    # the same colours as an array are weighed exactly (0.587 < 0.5875): nothing would be observed
    with pytest.raises(ValueError, match="observes no pixel"):
        mask_from_image(np.asarray(_green_and_black()), 1, 2, threshold=GREEN_THRESHOLD)


def test_a_mask_tensor_that_requires_grad_is_read_detached() -> None:
    source = torch.tensor([[0.0, 1.0], [1.0, 0.25]], requires_grad=True)
    m = mask_from_image(source, 2, 2)
    assert m.flatten().tolist() == [0.0, 1.0, 1.0, 0.0] and not m.requires_grad


def test_an_unreadable_mask_file_is_named_in_the_error(tmp_path) -> None:
    path = tmp_path / "not-an-image.png"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"cannot read mask image '.*not-an-image\.png': "):
        mask_from_image(path, 2, 2)


def test_the_all_observed_warning_points_at_the_line_that_called_the_function(monkeypatch) -> None:
    """stacklevel 2: the warning names the frame that called the function issuing it (the user's line; under
    mutmut, whose trampolines add frames, the trampoline's), not the library's own line nor one frame further up."""
    seen = {}

    def warn(message, category=None, stacklevel=1, **kw):
        caller = sys._getframe(1).f_back  # the frame that called the function calling warn
        seen["caller"] = (caller.f_code.co_filename, caller.f_lineno)
        warnings.warn(message, category, stacklevel=stacklevel + 1, **kw)  # + 1: this shim's own frame

    monkeypatch.setattr(masks_module, "warnings", types.SimpleNamespace(warn=warn))
    with pytest.warns(UserWarning, match="observes every pixel") as got:
        mask_from_image(np.ones((2, 2)), 2, 2)
    assert (got[0].filename, got[0].lineno) == seen["caller"]
