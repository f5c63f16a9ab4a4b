"""The restoration methods, registered once: name, solver, default budget, cost, what each supports.

`restore`, the CLI (help texts, validation), the web app (its method choices) and the benchmarks read this table; adding
a method is one new file with its solver and one ``register(RestorationMethod(...))`` entry below.

Every solver has the signature of :func:`priorkit.inverse.pigdm.pigdm`::

    solver(denoiser, operator, y, sigma_y, *, cond, guidance, shape, generator, progress, **budget, **options)
        -> restored images (B, C, H, W) in model range [-1, 1]

with ``y`` the model-range measurement (measurement-shaped, batch B or 1) and ``sigma_y`` its model-range noise std.
``budget`` turns a number of model passes into the solver's own keywords (``steps=nfe`` for a sampler). Methods that
need no prior (``priors=()``) get ``denoiser=None`` and run in one call.

The table is cheap to read: solvers are named by import path ("priorkit.inverse.pigdm:pigdm") and imported on first
use, so the CLI builds its help and validates ``--method`` without importing torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from priorkit.distill.core.denoiser import Condition, Denoiser
    from priorkit.inverse.operators import Operator

__all__ = ["PRIOR_KINDS", "DEFAULT_METHOD", "RestorationMethod", "Solver", "METHODS", "register", "get_method",
           "pairing_note", "method_names", "prior_kind", "method_for_prior", "labels", "help_line", "steps_budget"]

PRIOR_KINDS: tuple[str, ...] = ("diffusion", "flow")
#: the method `restore`, ``priorkit restore`` and the web app use when none is named, chosen by measurement
#: (BENCHMARKS.md, "Speed on photographs"): no backward pass, so it meets the CPU time goals on the photos prior
DEFAULT_METHOD = "diffpir"


class Solver(Protocol):
    """``solver(denoiser, operator, y, sigma_y, **kwargs) -> x`` (B, C, H, W) in model range (module docstring)."""

    def __call__(self, denoiser: Denoiser | None, operator: Operator, y: Tensor, sigma_y: float, *,
                 cond: Condition = None, guidance: float = 1.0, shape: tuple[int, ...] | None = None,
                 generator: torch.Generator | None = None, progress: bool | None = None, **kwargs: Any) -> Tensor: ...


def steps_budget(nfe: int, options: dict[str, Any]) -> dict[str, Any]:
    """A sampler's budget: one model evaluation per step, ``steps = nfe``."""
    return {"steps": int(nfe)}


@dataclass(frozen=True)
class RestorationMethod:
    """One registered restoration method.

    Args:
        name: the key users type (``--method``, ``restore(..., method=)``).
        solver: the function, or its import path "package.module:function" (imported on first use; see ``function``).
        default_nfe: model passes per image when the user gives none (the solver's paper default, kept equal to its
            ``*Defaults`` in tests/test_inverse_registry.py); None = the solver's own defaults.
        needs_grad: whether a step backpropagates through the network (vector-Jacobian products or an optimiser);
            `restore` runs methods without it under ``torch.no_grad`` (no graph kept: less memory, no backward).
        operators: names of the operator classes it supports (an operator is supported when one of its classes,
            base classes included, is named here); ``("Operator",)`` = any linear operator.
        priors: prior kinds it suits ("diffusion", "flow"; any prior still runs under every method); () = no prior.
        description: one line for help texts.
        label: display name; methods sharing a label are forms of one algorithm, chosen by the prior's kind.
        budget: ``(nfe, options) -> solver keywords`` spending ``nfe`` model passes (``options`` are the user's).
        loses_on: (bundled prior, task) pairs on which it restores worse than the degraded input itself at up to
            100 model passes (measured by tests/test_restore_pairings.py, which runs them as expected failures);
            `restore_folder` prints a note naming the default method before such a run.
    """

    name: str
    solver: Solver | str
    default_nfe: int | None
    needs_grad: bool
    operators: tuple[str, ...]
    priors: tuple[str, ...]
    description: str
    label: str = ""
    budget: Callable[[int, dict[str, Any]], dict[str, Any]] = steps_budget
    loses_on: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"method names are identifiers; got {self.name!r}")
        unknown = set(self.priors) - set(PRIOR_KINDS)
        if unknown:
            raise ValueError(f"unknown prior kinds {sorted(unknown)}; expected some of {PRIOR_KINDS}")
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def function(self) -> Solver:
        """The solver itself (imported from its path on first use)."""
        if isinstance(self.solver, str):
            module, _, attr = self.solver.partition(":")
            object.__setattr__(self, "solver", getattr(importlib.import_module(module), attr))
        return self.solver

    def __call__(self, denoiser: Denoiser | None, operator: Operator, y: Tensor, sigma_y: float,
                 **kwargs: Any) -> Tensor:
        """Run the solver (module docstring for the signature)."""
        return self.function(denoiser, operator, y, sigma_y, **kwargs)

    @property
    def needs_prior(self) -> bool:
        """False for prior-free baselines (pinv)."""
        return bool(self.priors)

    def supports(self, operator: Operator | type[Operator]) -> bool:
        """Whether the method handles this operator (an instance or a class)."""
        cls = operator if isinstance(operator, type) else type(operator)
        return any(c.__name__ in self.operators for c in cls.__mro__)

    def solver_options(self, nfe: int | None, options: dict[str, Any]) -> dict[str, Any]:
        """The solver's keywords for a budget of ``nfe`` model passes (default ``default_nfe``) plus ``options``;
        what the user sets in ``options`` wins over the budget's translation."""
        budget = self.default_nfe if nfe is None else nfe
        spent = {} if budget is None or not self.needs_prior else self.budget(int(budget), options)
        clash = sorted(set(spent) & set(options))
        if clash and self.budget is steps_budget:
            raise ValueError(f"{self.name}: give the budget as nfe, not also as {', '.join(clash)}")
        return {**spent, **options}


METHODS: dict[str, RestorationMethod] = {}


def register(method: RestorationMethod) -> RestorationMethod:
    """Add a method to the table (names are unique); returns it."""
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def pairing_note(method: str, prior: object, task: str) -> str | None:
    """A one-line note when ``method`` is measured to lose to the degraded input on this bundled prior and task
    (`RestorationMethod.loses_on`), naming the default method; None otherwise (and for priors given as models or
    folders, which were not measured)."""
    if not isinstance(prior, str) or (prior, task) not in get_method(method).loses_on:
        return None
    return (f"note: {method} on the bundled {prior} prior restores {task} worse than the degraded input in our tests "
            f"(tests/test_restore_pairings.py, up to 100 model passes); --method {DEFAULT_METHOD} is the default for "
            "this prior")


def get_method(name: str) -> RestorationMethod:
    """The registered method called ``name``; ValueError naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]


def method_names(*, needs_prior: bool | None = None) -> tuple[str, ...]:
    """Registered names in registration order (optionally only those that do / do not need a prior)."""
    return tuple(m.name for m in METHODS.values() if needs_prior is None or m.needs_prior == needs_prior)


def labels() -> tuple[str, ...]:
    """Distinct display labels of the methods that use a prior, in registration order."""
    return tuple(dict.fromkeys(m.label for m in METHODS.values() if m.needs_prior))


def help_line() -> str:
    """One line naming every method with its label and prior kinds, for help texts."""
    return ", ".join(f"{m.name} ({m.label}, {' or '.join(m.priors) + ' priors' if m.priors else 'no prior'})"
                     for m in METHODS.values())


def prior_kind(denoiser: Denoiser) -> str:
    """"flow" for a flow-matching prior (alpha = 1 - t, sigma = t), else "diffusion"."""
    from priorkit.distill.core.schedule import FlowMatching

    return "flow" if isinstance(denoiser.schedule, FlowMatching) else "diffusion"


def method_for_prior(label: str, denoiser: Denoiser) -> RestorationMethod:
    """The form of the method displayed as ``label`` that suits ``denoiser``'s kind (else its first form)."""
    forms = [m for m in METHODS.values() if m.label == label and m.needs_prior]
    if not forms:
        raise ValueError(f"unknown method {label!r}; expected one of {', '.join(labels())}")
    kind = prior_kind(denoiser)
    return next((m for m in forms if kind in m.priors), forms[0])


# ----------------------------------------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------------------------------------


def pseudo_inverse(denoiser: Denoiser | None, operator: Operator, y: Tensor, sigma_y: float, **_: Any) -> Tensor:
    """A^+ y (B, C, H, W), no prior: the baseline every prior method should beat."""
    return operator.pinv(y)


def dflow_budget(nfe: int, options: dict[str, Any]) -> dict[str, Any]:
    """D-Flow's budget of model passes (forward + backward, as counted; see :mod:`.dflow`): a cap checked after each
    L-BFGS evaluation (overrun by at most one, plus the final solve); the discrepancy principle usually ends it
    sooner."""
    return {"max_passes": int(nfe)}


ANY = ("Operator",)
#: deblurring and super-resolution on the photos prior: where the gradient-guided samplers lose at 100 passes
PHOTOS_SHARPENING = tuple(("photos", t) for t in ("deblur_gaussian", "deblur_motion", "sr2", "sr4", "sr8"))
register(RestorationMethod(
    "pinv", pseudo_inverse, default_nfe=None, needs_grad=False, operators=ANY, priors=(),
    description="the pseudo-inverse A^+ y, no prior", label="A^+ y"))
register(RestorationMethod(
    "classical", "priorkit.inverse.classical:classical", default_nfe=None, needs_grad=False, operators=ANY,
    priors=(), description="classical, no prior: bicubic (SR), Wiener (deblurring), biharmonic (inpainting)",
    label="bicubic / Wiener / biharmonic"))
register(RestorationMethod(
    "pigdm", "priorkit.inverse.pigdm:pigdm", default_nfe=100, needs_grad=True, operators=ANY, priors=("diffusion",),
    description="pseudoinverse-guided diffusion (Song et al. 2023), DDIM(eta) steps", label="PiGDM",
    loses_on=(("photos", "sr4"), ("photos", "sr8"))))
register(RestorationMethod(
    "pigdm_flow", "priorkit.inverse.pigdm:pigdm_flow", default_nfe=80, needs_grad=True, operators=ANY,
    priors=("flow",), description="PiGDM on a flow's velocity from A^+ y (Pokle et al. 2024)", label="PiGDM",
    loses_on=(("photos", "sr4"), ("photos", "sr8"))))
register(RestorationMethod(
    "dps", "priorkit.inverse.dps:dps", default_nfe=1000, needs_grad=True, operators=ANY,
    priors=("diffusion", "flow"), description="diffusion posterior sampling (Chung et al. 2023)", label="DPS",
    loses_on=PHOTOS_SHARPENING))
register(RestorationMethod(
    "dflow", "priorkit.inverse.dflow:dflow", default_nfe=1600, needs_grad=True, operators=ANY, priors=("flow",),
    description="D-Flow: optimise the flow's source noise by L-BFGS (Ben-Hamu et al. 2024)", label="D-Flow",
    budget=dflow_budget, loses_on=PHOTOS_SHARPENING))
register(RestorationMethod(
    "diffpir", "priorkit.inverse.diffpir:diffpir", default_nfe=20, needs_grad=False, operators=ANY,
    priors=("diffusion", "flow"), description="DiffPIR: denoiser + closed-form data prox per step, no backward pass "
    "(Zhu et al. 2023)", label="DiffPIR"))
register(RestorationMethod(
    "pnp_flow", "priorkit.inverse.pnp_flow:pnp_flow", default_nfe=20, needs_grad=False, operators=ANY,
    priors=("flow",), description="PnP-Flow: data prox, re-noise, flow denoiser; no backward pass (Martin et al. 2025)",
    label="PnP-Flow"))
