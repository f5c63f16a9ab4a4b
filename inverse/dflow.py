"""D-Flow: differentiating through flows for controlled generation (Ben-Hamu, Puny, Gat, Karrer, Singer & Lipman 2024,
ICML), for linear inverse problems.

Optimise the source noise z of a differentiable ODE solve ``x = Phi(z)`` (noise -> data, flow matching):

    z* = argmin_z ||A Phi(z) - y||^2 + lambda R(z),   R(z) = |z|^2 / 2 - (d - 1) log |z|   (chi^d neg. log-density)

with L-BFGS (strong-Wolfe line search), and the initialisation of the paper (section 4): invert the ODE (data -> noise)
from a pseudo-inverse estimate, ``z_y = Phi^{-1}(A^+ y)``, and blend with fresh noise,

    z0 = sqrt(b) z_y + sqrt(1 - b) eps,   b = 0.1.

Coarse to fine, stopped by the discrepancy principle (measured on the shapes prior, BENCHMARKS.md "D-Flow that
converges"): L-BFGS first through a cheap 3-step solve, then through a 5-step one from where it stopped; each stage
ends when every image's data term reaches its target, ``||A Phi(z) - y||^2 <= c sigma_y^2 M`` (M observed entries;
Morozov's discrepancy principle: fitting further fits the noise), c = ``coarse_stop`` for the coarse stages and
``stop_at`` for the last, or when the budget (``max_evals`` evaluations, ``max_passes`` model passes) is spent.

Cost (counted exactly by wrapping the denoiser in `CountingDenoiser`): every L-BFGS function evaluation is one ODE
solve forward (``nfe(solver, steps)`` model calls) and one backward through it; with gradient checkpointing (on for
inputs above ``CHECKPOINT_ELEMENTS`` values, where the graph of a solve would not fit) the backward recomputes each
call once more, so one evaluation costs 2 x nfe forward + nfe backward model passes (nfe + nfe without).

``lambda`` defaults to ``20 sigma_y^2``: ten times the MAP scaling 2 sigma_y^2 (with which the loss is 2 sigma_y^2 x
the negative log-posterior of z under the chi prior on |z|); measured 0.2-0.6 dB better on shapes renders (BENCHMARKS.md
"D-Flow that converges"). For sigma_y = 0 the data term alone is fitted and the initialisation regularises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from priorkit.distill.core.denoiser import Condition, Denoiser, WrappedDenoiser
from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.samplers import nfe as solver_nfe
from priorkit.distill.core.samplers import sample
from priorkit.inverse.classical import classical
from priorkit.inverse.operators import Operator
from priorkit.inverse.solver_common import as_flow, check_measurement, regularised_pinv, solution_shape

__all__ = ["DFlowDefaults", "dflow", "CountingDenoiser", "chi_regulariser", "CHECKPOINT_ELEMENTS"]

#: inputs with more values than this (a batch of 3 x 128 x 128 images) are solved with gradient checkpointing
CHECKPOINT_ELEMENTS = 3 * 128 * 128


class _StoppedError(Exception):
    """Raised inside L-BFGS's closure when a stage's target or the budget is reached."""


class _CountBackward(torch.autograd.Function):
    """Identity whose backward increments a counter (one backward pass through the wrapped model call)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, counter: dict) -> Tensor:
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        ctx.counter["backward"] += 1
        return grad, None


class CountingDenoiser(WrappedDenoiser):
    """Wrap a `Denoiser` and count its batched calls: ``forward`` (model evaluations, including gradient-checkpoint
    recomputations) and ``backward`` (backward passes through the model). ``nfe`` = forward + backward."""

    def __init__(self, inner: Denoiser) -> None:
        super().__init__(inner)
        self.counts: dict[str, int] = {"forward": 0, "backward": 0}

    @property
    def nfe(self) -> int:
        return self.counts["forward"] + self.counts["backward"]

    def reset(self) -> None:
        self.counts.update(forward=0, backward=0)

    def forward(self, x: Tensor, t: Tensor | float, cond: Condition = None, *, check: bool = True) -> Prediction:
        self.counts["forward"] += 1
        if torch.is_grad_enabled() and x.requires_grad:
            x = _CountBackward.apply(x, self.counts)
        p = self.inner(x, t, cond, check=check)
        return Prediction(x0=p.x0, eps=p.eps, x_t=x, t=p.t, schedule=p.schedule)


def chi_regulariser(z: Tensor) -> Tensor:
    """R(z) = |z|^2 / 2 - (d - 1) log |z| per sample (the chi^d negative log-density up to a constant); (B,)."""
    d = z[0].numel()
    n2 = z.flatten(1).pow(2).sum(1)
    return 0.5 * n2 - 0.5 * (d - 1) * torch.log(n2)


@dataclass
class DFlowDefaults:
    """Defaults of :func:`dflow` (Ben-Hamu et al. 2024: a few midpoint steps, L-BFGS, blend b = 0.1; coarse to fine
    with the discrepancy stop: chosen on held-out shapes renders, BENCHMARKS.md "D-Flow that converges")."""

    steps: tuple[int, ...] = (3, 5)
    solver: str = "heun"
    max_iter: int = 200
    max_evals: int | None = 200
    max_passes: int | None = None
    stop_at: float | None = 1.0
    coarse_stop: float = 1.5
    checkpoint: bool | None = None
    reg: float | None = None
    reg_scale: float = 20.0
    blend: float = 0.1
    init: str = "pinv"
    history_size: int = 20
    lbfgs: dict = field(default_factory=dict)


def dflow(denoiser: Denoiser, operator: Operator, y: Tensor, sigma_y: float, *, cond: Condition = None,
          guidance: float = 1.0, steps: int | tuple[int, ...] = DFlowDefaults.steps, solver: str = DFlowDefaults.solver,
          max_iter: int = DFlowDefaults.max_iter, max_evals: int | None = DFlowDefaults.max_evals,
          max_passes: int | None = DFlowDefaults.max_passes, stop_at: float | None = DFlowDefaults.stop_at,
          coarse_stop: float = DFlowDefaults.coarse_stop, checkpoint: bool | None = DFlowDefaults.checkpoint,
          reg: float | None = DFlowDefaults.reg, blend: float = DFlowDefaults.blend,
          init: str = DFlowDefaults.init, history_size: int = DFlowDefaults.history_size, noise: Tensor | None = None,
          shape: tuple[int, ...] | None = None, generator: torch.Generator | None = None,
          progress: bool | None = None, return_info: bool = False) -> Tensor | tuple[Tensor, dict]:
    """Restore ``x`` from ``y = A x + sigma_y n`` by optimising the source noise of the flow; model range.

    Args:
        denoiser: any `Denoiser`, served as a flow-matching model (`ConvertedDenoiser` when needed).
        operator, y, sigma_y, cond, guidance: as in :func:`priorkit.inverse.pigdm.pigdm`.
        steps, solver: the differentiable ODE solve Phi ("euler", "heun" (= 2nd order, ~ midpoint) or "dpm++2m"),
            uniform in flow time from noise to data; a tuple of step counts optimises through each in turn
            (coarse to fine; the inversion uses the first).
        max_iter: L-BFGS iterations per stage; max_evals: cap on loss evaluations in all (None: 1.25 max_iter per
            stage, torch's); max_passes: cap on model passes in all (forward + backward, as counted).
        stop_at, coarse_stop: a stage ends when every image's data term is at most this multiple of sigma_y^2 M
            (the last stage: ``stop_at``, None never; the others: ``coarse_stop``).
        checkpoint: recompute each model call in backward (None: for inputs above `CHECKPOINT_ELEMENTS` values).
        reg: lambda of the chi regulariser (default ``reg_scale`` sigma_y^2, 20: ten times the MAP scaling).
        blend: b in z0 = sqrt(b) z_y + sqrt(1 - b) eps.
        init: the estimate the ODE is inverted from: "pinv" (the paper's regularised pseudo-inverse A^+ y) or
            "classical" (bicubic / Wiener / biharmonic, :func:`priorkit.inverse.classical.classical`).
        noise: optional eps (B, C, H, W) for the blend.
        return_info: also return {"loss": final loss, "evaluations": L-BFGS loss evaluations, "stages": evaluations
            per stage, "data_ratio": the final data term over sigma_y^2 M per image, "forward": model evaluations,
            "backward": backward passes, "nfe": forward + backward}.
    Returns:
        restored images (B, C, H, W) in model range (and the info dict).

    The batch is optimised jointly (one L-BFGS on the sum of the per-sample losses, which are independent); a stage
    stops when every image has reached its target, so the first to get there are fitted a little further. The budget
    caps are checked after each evaluation: the passes can overrun ``max_passes`` by one evaluation, plus the final
    solve. A coarse stage spends at most half of the budget left; the result is the solve of the last stage that ran.
    """
    check_measurement(y, sigma_y)
    if not 0 <= blend <= 1:
        raise ValueError(f"blend must lie in [0, 1]; got {blend}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1; got {max_iter}")
    if max_passes is not None and max_passes < 1:
        raise ValueError(f"max_passes must be >= 1; got {max_passes}")
    if init not in ("pinv", "classical"):
        raise ValueError(f"init must be 'pinv' or 'classical'; got {init!r}")
    stages = (steps,) if isinstance(steps, int) else tuple(steps)
    if not stages or any(int(k) < 1 for k in stages):
        raise ValueError(f"steps must be a positive step count or a tuple of them; got {steps}")
    counter = CountingDenoiser(denoiser)
    flow, t_top = as_flow(counter)
    lam = DFlowDefaults.reg_scale * sigma_y**2 if reg is None else float(reg)
    shp = solution_shape(denoiser, y, shape if noise is None else tuple(noise.shape))
    eps = noise.to(y) if noise is not None else torch.randn(shp, generator=generator, dtype=y.dtype, device=y.device)
    ckpt = math.prod(shp) > CHECKPOINT_ELEMENTS if checkpoint is None else bool(checkpoint)
    floor = sigma_y**2 * operator.measured(torch.ones_like(y)).flatten(1).sum(1)  # sigma_y^2 M per measurement

    def grid(k: int) -> Tensor:
        return torch.linspace(t_top, 0.0, k + 1, dtype=torch.float64)

    def phi(z: Tensor, k: int, differentiable: bool) -> Tensor:
        return sample(flow, t_top * z, times=grid(k), solver=solver, cond=cond, guidance=guidance,
                      differentiable=differentiable, checkpoint=differentiable and ckpt, progress=False)

    # initialisation: invert the ODE from the (regularised) pseudo-inverse or the classical estimate, blend with noise
    with torch.no_grad():
        start = regularised_pinv(operator, y, sigma_y) if init == "pinv" else classical(None, operator, y, sigma_y)
        x_init = start.to(y).expand(shp).contiguous()
        inv_times = torch.cat([torch.tensor([1e-3], dtype=torch.float64), grid(stages[0]).flip(0)[1:]])
        z_y = sample(flow, x_init, times=inv_times, solver=solver, cond=cond, guidance=guidance, progress=False) / t_top
    z = (blend**0.5 * z_y + (1.0 - blend) ** 0.5 * eps).detach().requires_grad_(True)

    total = max_evals or int(max_iter * 1.25) * len(stages)
    bar = tqdm(total=total, desc="D-Flow", disable=not progress, leave=False)
    evaluations, per_stage = 0, []

    def run_stage(k: int, mult: float | None, evals_cap: int | None, passes_cap: int | None) -> None:
        """L-BFGS through the k-step solve until every data term is <= mult sigma_y^2 M (z is left at that point) or
        the stage's budget is spent (z is left at the lowest loss it evaluated)."""
        nonlocal evaluations
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=max_iter, max_eval=evals_cap, history_size=history_size,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-12)
        best: dict[str, Any] = {"loss": math.inf}
        start = evaluations

        def closure() -> Tensor:
            nonlocal evaluations
            opt.zero_grad()
            with torch.enable_grad():
                x = phi(z, k, True)
                data = (operator.A(x) - y).flatten(1).pow(2).sum(1)                 # ||A Phi(z) - y||^2
                loss = (data + lam * chi_regulariser(z)).sum()
                loss.backward()
            evaluations += 1
            bar.update(1)
            bar.set_postfix(steps=k, loss=float(loss.detach()))
            if mult is not None and bool((data.detach() <= mult * floor).all()):  # the discrepancy principle
                raise _StoppedError  # z stays at the point just evaluated (a line search's trial point included)
            if float(loss.detach()) < best["loss"]:
                best.update(loss=float(loss.detach()), z=z.detach().clone())
            if (passes_cap is not None and counter.nfe >= passes_cap) or (
                    evals_cap is not None and evaluations - start >= evals_cap):  # (torch's max_eval can overrun)
                if "z" in best:  # (none when every loss was NaN)
                    with torch.no_grad():   # not a line search's rejected trial point: the best one seen
                        z.copy_(best["z"])
                raise _StoppedError
            return loss

        try:
            opt.step(closure)
        except _StoppedError:
            pass

    ran = stages[0]
    for i, k in enumerate(stages):
        last = i == len(stages) - 1
        left = None if max_evals is None else max_evals - evaluations
        spent = max_passes is not None and counter.nfe >= max_passes and evaluations > 0  # at least one evaluation
        if (left is not None and left < 1) or spent:
            break
        if last:
            evals_cap, passes_cap = left, max_passes
        else:  # a coarse stage may spend half of what is left, so that the finer ones always run
            evals_cap = None if left is None else max(1, left // 2)
            passes_cap = None if max_passes is None else counter.nfe + max(1, (max_passes - counter.nfe) // 2)
        before = evaluations
        run_stage(int(k), stop_at if last else coarse_stop, evals_cap, passes_cap)
        per_stage.append(evaluations - before)
        ran = int(k)
    bar.close()
    with torch.no_grad():
        x = phi(z.detach(), ran, False)
    if not return_info:
        return x
    with torch.no_grad():
        data = (operator.A(x) - y).flatten(1).pow(2).sum(1)
        loss = data + lam * chi_regulariser(z)
    info = {"loss": float(loss.sum()), "evaluations": evaluations, "stages": per_stage,
            "steps_nfe": solver_nfe(solver, ran), "checkpoint": ckpt,
            "data_ratio": (data / floor).tolist() if bool((floor > 0).all()) else None,
            **counter.counts, "nfe": counter.nfe}
    return x, info
