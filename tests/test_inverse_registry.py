"""Tests for inverse/registry.py: the table every front end reads, and that adding a method is one registration."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor

from priorkit.distill.core.denoiser import Denoiser
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.schedule import FlowMatching, VPCosine
from priorkit.inverse import registry
from priorkit.inverse.diffpir import DiffPIRDefaults
from priorkit.inverse.dps import DPSDefaults
from priorkit.inverse.operators import Blur, ComposedOperator, Downsampling, Inpainting, Operator
from priorkit.inverse.pigdm import PiGDMDefaults, PiGDMFlowDefaults
from priorkit.inverse.pnp_flow import PnPFlowDefaults
from priorkit.inverse.registry import RestorationMethod, get_method, method_for_prior, method_names, register
from priorkit.inverse.restore import METHODS, RestoreDefaults, methods_for_task, restore
from priorkit.inverse.solver_common import solution_shape

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_table_holds_the_methods_with_their_defaults() -> None:
    assert METHODS == method_names() == ("pinv", "classical", "pigdm", "pigdm_flow", "dps", "dflow", "diffpir",
                                         "pnp_flow")
    assert RestoreDefaults().nfe == {"pigdm": 100, "pigdm_flow": 80, "dps": 1000, "dflow": 1600, "diffpir": 20,
                                     "pnp_flow": 20}
    # the front door's budgets are the solvers' paper defaults
    assert get_method("pigdm").default_nfe == PiGDMDefaults.steps
    assert get_method("pigdm_flow").default_nfe == PiGDMFlowDefaults.steps
    assert get_method("dps").default_nfe == DPSDefaults.steps
    assert get_method("diffpir").default_nfe == DiffPIRDefaults.steps
    assert get_method("pnp_flow").default_nfe == PnPFlowDefaults.steps
    no_backward = {"pinv", "classical", "diffpir", "pnp_flow"}  # closed-form prox_l2 methods, A^+ y, classical
    for m in registry.METHODS.values():
        assert callable(m.function) and m.description and m.label
        assert m.needs_grad == (m.name not in no_backward)
        assert m.supports(Blur) and m.supports(Downsampling(2)) and m.supports(ComposedOperator)
    assert registry.labels() == ("PiGDM", "DPS", "D-Flow", "DiffPIR", "PnP-Flow")
    assert registry.DEFAULT_METHOD in method_names(needs_prior=True)
    assert registry.help_line().startswith("pinv (A^+ y, no prior), classical (bicubic / Wiener / biharmonic, no "
                                           "prior), pigdm (PiGDM, diffusion priors), ")


def test_budgets_translate_model_passes() -> None:
    assert get_method("pigdm").solver_options(None, {"eta": 0.0}) == {"steps": 100, "eta": 0.0}
    assert get_method("dps").solver_options(7, {}) == {"steps": 7}
    with pytest.raises(ValueError, match="budget"):
        get_method("pigdm").solver_options(7, {"steps": 3})
    # D-Flow: the passes are a cap it counts itself (its stages and checkpointing set the cost per evaluation)
    assert get_method("dflow").solver_options(300, {}) == {"max_passes": 300}
    assert get_method("dflow").solver_options(300, {"max_iter": 2}) == {"max_iter": 2, "max_passes": 300}
    assert get_method("dflow").solver_options(None, {}) == {"max_passes": 1600}   # its default cap
    assert get_method("pinv").solver_options(50, {}) == {}


def test_lookup_errors_name_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown method 'magic'; expected one of pinv, classical, pigdm"):
        get_method("magic")
    with pytest.raises(ValueError, match="already registered"):
        register(get_method("pigdm"))
    with pytest.raises(ValueError, match="prior kinds"):
        RestorationMethod("x", "m:f", None, False, ("Operator",), ("gan",), "bad")


def test_the_form_of_a_method_follows_the_prior() -> None:
    diffusion = GaussianMixture.random(4, 1, schedule=VPCosine())
    flow = GaussianMixture.random(4, 1, schedule=FlowMatching())
    assert registry.prior_kind(diffusion) == "diffusion" and registry.prior_kind(flow) == "flow"
    assert method_for_prior("PiGDM", diffusion).name == "pigdm"
    assert method_for_prior("PiGDM", flow).name == "pigdm_flow"
    assert method_for_prior("D-Flow", diffusion).name == "dflow"
    with pytest.raises(ValueError, match="unknown method"):
        method_for_prior("nope", flow)


def test_reading_the_table_imports_no_solver_and_no_torch() -> None:
    code = ("import sys; import priorkit.inverse.registry as r; r.method_names(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('priorkit.inverse.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['priorkit.inverse.registry']"


# ----------------------------------------------------------------------------------------------------------------------
# A new method is one function and one registration
# ----------------------------------------------------------------------------------------------------------------------


def denoise_then_prox(denoiser: Denoiser, operator: Operator, y: Tensor, sigma_y: float, *, cond=None,
                      guidance: float = 1.0, shape: tuple[int, ...] | None = None,
                      generator: torch.Generator | None = None, progress: bool | None = None, steps: int = 1,
                      gamma: float = 10.0) -> Tensor:
    """A toy gradient-free method (one DiffPIR-like step per call): noise A^+ y to t = 0.5, denoise, then the data
    proximal step x = prox_l2(x0_hat, y, gamma). (B, C, H, W) in model range."""
    assert not torch.is_grad_enabled()  # needs_grad=False: restore runs it under no_grad
    shp = solution_shape(denoiser, y, shape)
    x = operator.pinv(y).expand(shp)
    for _ in range(steps):
        t = torch.tensor(0.5)
        a, s = denoiser.schedule.alpha(t), denoiser.schedule.sigma(t)
        x_t = a * x + s * torch.randn(shp, generator=generator, dtype=y.dtype)
        x = operator.prox_l2(denoiser(x_t, t, cond).x0, y, gamma)
    return x


@pytest.fixture
def toy_method() -> Iterator[RestorationMethod]:
    spec = register(RestorationMethod(
        "toy_prox", denoise_then_prox, default_nfe=3, needs_grad=False, operators=("Inpainting",),
        priors=("diffusion",), description="denoise, then the data prox (test)", label="Toy"))
    try:
        yield spec
    finally:
        registry.METHODS.pop("toy_prox")


def test_a_registered_method_reaches_restore_the_cli_and_the_apps(toy_method, tmp_path) -> None:
    from priorkit.apps import cli

    prior = GaussianMixture.random(3 * 8 * 8, 1, scale=1.0, spread=0.5, generator=torch.Generator().manual_seed(0),
                                   sample_shape=(3, 8, 8))
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = restore(img, "inpaint_box", "toy_prox", prior=prior, seed=0)
    assert out.nfe == 3 and out.restored.shape == img.shape               # default budget, no backward pass
    assert isinstance(out.operator, Inpainting)
    assert "toy_prox" in methods_for_task("inpaint_random") and "toy_prox" not in methods_for_task("sr4")
    with pytest.raises(ValueError, match="does not support task 'sr4'"):
        restore(img, "sr4", "toy_prox", prior=prior)
    assert "Toy" in registry.labels() and "toy_prox" in method_names(needs_prior=True)
    assert "toy_prox (Toy, diffusion priors)" in registry.help_line()
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.png").write_bytes(b"")
    cli._check_restore(inp, tmp_path / "out", "inpaint_box", "toy_prox", prior, None, None, 0.01, None)
    with pytest.raises(ValueError, match="does not support"):
        cli._check_restore(inp, tmp_path / "out", "deblur_gaussian", "toy_prox", prior, None, None, 0.01, None)


def test_a_few_step_prior_sets_the_default_budget_of_step_methods(toy_method) -> None:
    """A student that says how many steps it was made for ("restore_nfe", as the bundled photos-fast does) gets them
    when the user gives no --nfe; a given nfe wins."""
    prior = GaussianMixture.random(3 * 8 * 8, 1, scale=1.0, spread=0.5, generator=torch.Generator().manual_seed(0),
                                   sample_shape=(3, 8, 8))
    img = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    prior.restore_nfe = 2
    assert restore(img, "inpaint_box", "toy_prox", prior=prior, seed=0).nfe == 2
    assert restore(img, "inpaint_box", "toy_prox", prior=prior, seed=0, nfe=5).nfe == 5


def test_the_toy_prox_step_is_exact_on_observed_pixels(toy_method) -> None:
    # with a huge gamma the prox keeps the measurement where observed (inpainting: A = A^+ = mask)
    op = Inpainting(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    prior = GaussianMixture.random(4, 1, sample_shape=(1, 2, 2))
    y = op.A(torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        x = toy_method(prior, op, y, 0.0, gamma=1e9, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(op.A(x), y, atol=1e-6)


def test_a_pairing_measured_to_lose_gets_a_note_naming_the_default() -> None:
    from priorkit.inverse.registry import DEFAULT_METHOD, pairing_note
    from priorkit.inverse.tasks import TASKS

    note = pairing_note("dps", "photos", "sr4")
    assert note is not None and "worse than the degraded input" in note and f"--method {DEFAULT_METHOD}" in note
    assert "\n" not in note
    assert pairing_note("dps", "shapes", "sr4") is None and pairing_note("dps", "photos", "inpaint_box") is None
    assert pairing_note(DEFAULT_METHOD, "photos", "sr4") is None  # the default itself is never flagged
    assert pairing_note("dps", Path("my-prior"), "sr4") is None  # a folder or model: not measured
    for spec in registry.METHODS.values():
        for prior, task in spec.loses_on:
            assert prior in ("photos", "shapes") and task in TASKS, (spec.name, prior, task)
