"""deepinv 0.5.0 as a peer: its PiGDM, DPS and DiffPIR run on OUR prior and OUR operator, for like-for-like comparisons.

PiGDM: Song, Vahdat, Mardani & Kautz 2023 (ICLR), as deepinv's ``PiGDMDataFidelity`` inside its
``PosteriorDiffusion`` (the documented way to run PiGDM in deepinv 0.5.0; deepinv has no ``PiGDM`` class).
DPS: Chung, Kim, Mccann, Klasky & Ye 2023 (ICLR), ``deepinv.sampling.DPS``.
DiffPIR: Zhu, Zhang, Liang, Cao, Wen, Timofte & Van Gool 2023 (CVPR workshops), ``deepinv.sampling.DiffPIR``.

Conventions bridged here (read from deepinv 0.5.0's source):

* A deepinv denoiser is ``D(x, sigma) -> x0_hat`` on images in [0, 1] under variance-exploding noise,
  ``x = x0 + sigma n``, returning ``E[x0 | x]``. Our priors live in model range ``x_m = 2 x - 1`` under
  ``x_t = alpha(t) x0_m + sigma(t) eps``. Since ``2 x - 1 = x0_m + 2 sigma n``, the same posterior mean is

      t      = schedule.t_from_log_snr(-2 log(2 sigma))        equal SNR: sigma(t) / alpha(t) = 2 sigma
      x_t    = alpha(t) (2 x - 1)
      x0_hat = (den(x_t, t).x0 + 1) / 2                            exact for an exact denoiser (tested on a Gaussian)

  (`DeepinvDenoiser`; ``sigma = 0`` returns x itself, the posterior mean at zero noise).
* deepinv's diffusion samplers carry their state in [-1, 1] and call the denoiser through
  ``MinusOneOneDenoiserWrapper`` (x -> (x + 1) / 2, sigma -> sigma / 2), while measurements, physics and the
  measurement noise ``physics.noise_model.sigma`` are in [0, 1]: ``sigma_y`` here is the image-range std, as in
  `priorkit.inverse.operators.Measurement`.
* Our `Operator` is served as a deepinv ``LinearPhysics`` (`operator_physics`) with its exact ``A``, ``A^T``,
  ``A^+`` and an exact ``prox_l2`` from ``Operator.solve``:
  ``argmin_u gamma/2 |A u - y|^2 + 1/2 |u - z|^2 = z + A^T (A A^T + gamma^-1 I)^-1 (y - A z)``.
  deepinv's PiGDM solves ``(r_t^2 A A^T + sigma_y^2 I) v = r`` by its own conjugate gradients on such a physics
  (``cg_max_iter`` iterations; deepinv's default 3, ours 50 so that the solve converges).

Model evaluations are counted by the wrapper: ``forward`` calls and ``backward`` passes (vector-Jacobian products,
through ``torch.autograd`` or ``torch.func.vjp``).

deepinv's top-level ``__init__`` imports torchvision, which deepinv.sampling does not need; where torchvision cannot be
imported (its PyPI wheel for this torch is a CUDA build), `load_deepinv` imports deepinv with a temporary stand-in.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import math
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers.base import predict_fn
from priorkit.inverse.operators import Operator

__all__ = ["PEERS", "DeepinvDenoiser", "PeerPiGDMDefaults", "PeerDPSDefaults", "PeerDiffPIRDefaults", "PeerResult",
           "load_deepinv", "operator_physics", "run_peer"]

PEERS: tuple[str, ...] = ("dinv_pigdm", "dinv_dps", "dinv_diffpir")


# ----------------------------------------------------------------------------------------------------------------------
# Importing deepinv
# ----------------------------------------------------------------------------------------------------------------------


class _TorchvisionStandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves empty ``torchvision*`` modules whose attributes are inert classes (only while deepinv is imported)."""

    class _Module(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {"__init__": lambda self, *a, **k: None})

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] == "torchvision":
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = self._Module(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _purge(prefixes: tuple[str, ...]) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]


@functools.lru_cache(maxsize=1)
def load_deepinv() -> types.ModuleType:
    """The ``deepinv`` module (with ``sampling``, ``physics``, ``optim`` imported); raises ImportError when absent."""
    if importlib.util.find_spec("deepinv") is None:
        raise ImportError("deepinv is not installed (pip install --no-deps deepinv==0.5.0 einops natsort h5py)")
    try:
        import deepinv
        import deepinv.optim
        import deepinv.physics
        import deepinv.sampling  # noqa: F401

        return deepinv
    except Exception:  # noqa: BLE001 - torchvision missing or broken beside the CPU torch
        _purge(("deepinv", "torchvision"))
    stand_in = _TorchvisionStandIn()
    sys.meta_path.insert(0, stand_in)
    try:
        import deepinv
        import deepinv.optim
        import deepinv.physics
        import deepinv.sampling  # noqa: F401
    except Exception as e:  # noqa: BLE001
        _purge(("deepinv",))
        raise ImportError(f"deepinv does not import, even with a torchvision stand-in: {e!r}") from e
    finally:
        sys.meta_path.remove(stand_in)
        _purge(("torchvision",))
    return deepinv


# ----------------------------------------------------------------------------------------------------------------------
# Our prior as a deepinv denoiser
# ----------------------------------------------------------------------------------------------------------------------


def _backward_counter(counts: dict[str, int]) -> type[torch.autograd.Function]:
    """An identity autograd Function whose backward adds one to ``counts["backward"]``.

    ``setup_context`` form, so it also runs under ``torch.func.vjp`` (deepinv's PiGDM); the dict is closed over, not
    passed as an input, because torch.func hands a Function copies of its non-tensor inputs.
    """

    class CountBackward(torch.autograd.Function):
        @staticmethod
        def forward(x: Tensor) -> Tensor:
            return x.view_as(x)

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
            pass

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> Tensor:
            counts["backward"] += 1
            return grad

    return CountBackward


class DeepinvDenoiser(nn.Module):
    """A `Denoiser` as a deepinv denoiser: ``(x (B, C, H, W) in [0, 1] + sigma noise, sigma) -> E[x0 | x]`` in [0, 1].

    Args:
        denoiser: any `Denoiser` (model range [-1, 1], any schedule; a `TiledDenoiser` for large images).
        cond, guidance: condition and classifier-free guidance scale, bound once.
    Call:
        ``wrapper(x, sigma)`` with sigma a float, a 0-d tensor or a (B,) / (B, 1, 1, 1) tensor of image-range noise
        stds; extra arguments from deepinv are ignored. Noise beyond the schedule's range is served at its ``t_max``.
    Attributes:
        counts: {"forward": model evaluations, "backward": backward passes}.
    """

    def __init__(self, denoiser: Denoiser, cond: Condition = None, guidance: float = 1.0) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.fn = predict_fn(denoiser, cond, guidance)
        self.counts: dict[str, int] = {"forward": 0, "backward": 0}
        self._count_backward = _backward_counter(self.counts)

    @property
    def nfe(self) -> int:
        return self.counts["forward"] + self.counts["backward"]

    def times(self, sigma: Tensor) -> Tensor:
        """Image-range VE noise std (any shape) -> the prior's time at equal SNR, clamped to [0, t_max]."""
        schedule = self.denoiser.schedule
        lam = -2.0 * torch.log(2.0 * sigma.double())                      # log-SNR of x_m = x0_m + 2 sigma n
        return schedule.t_from_log_snr(lam).clamp(0.0, schedule.t_max)

    def forward(self, x: Tensor, sigma: float | Tensor, *args: Any, **kwargs: Any) -> Tensor:
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        if sig.numel() not in (1, x.shape[0]):
            raise ValueError(f"sigma must be a scalar or have {x.shape[0]} entries; got shape {tuple(sig.shape)}")
        if bool((sig < 0).any()) or not bool(torch.isfinite(sig).all()):
            raise ValueError("sigma must be finite and >= 0")
        zero = sig == 0
        if bool(zero.all()):
            return x                                                       # E[x0 | x] at zero noise
        t = self.times(torch.where(zero, torch.ones_like(sig), sig))
        alpha = self.denoiser.schedule.alpha(t).to(x.dtype)
        t = t.to(x.dtype) if t.numel() > 1 else t.reshape(()).to(x.dtype)
        xm = (2.0 * x - 1.0) * alpha.reshape(-1, *([1] * (x.ndim - 1)))    # x_t = alpha (2 x - 1)
        if torch.is_grad_enabled():
            xm = self._count_backward.apply(xm)
        self.counts["forward"] += 1
        x0 = (self.fn(xm, t).x0 + 1.0) / 2.0
        if bool(zero.any()):
            x0 = torch.where(zero.reshape(-1, *([1] * (x.ndim - 1))), x, x0)
        return x0


# ----------------------------------------------------------------------------------------------------------------------
# Our operator as deepinv physics
# ----------------------------------------------------------------------------------------------------------------------


def _as_scalar_or_batch(v: float | Tensor) -> float | Tensor:
    if isinstance(v, Tensor):
        return float(v) if v.numel() == 1 else v.reshape(-1)
    return float(v)


@functools.lru_cache(maxsize=1)
def _physics_class() -> type:
    dinv = load_deepinv()

    class OperatorPhysics(dinv.physics.LinearPhysics):
        """An `priorkit.inverse.operators.Operator` as deepinv ``LinearPhysics``, exact A^+ and prox_l2 (module
        docstring)."""

        def __init__(self, operator: Operator, sigma_y: float) -> None:
            super().__init__(A=operator.A, A_adjoint=operator.At,
                             noise_model=dinv.physics.GaussianNoise(sigma=float(sigma_y)), max_iter=50)
            self.operator = operator

        def A_dagger(self, y: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            return self.operator.pinv(y)

        def prox_l2(self, z: Tensor, y: Tensor, gamma: float | Tensor, *args: Any, **kwargs: Any) -> Tensor:
            g = _as_scalar_or_batch(gamma)
            s = 1.0 / g**0.5                                              # (A A^T + gamma^-1 I) v = y - A z
            r = self.operator.A(z)
            return z + self.operator.At(self.operator.solve(y.to(r) - r, 1.0, s))

    return OperatorPhysics


def operator_physics(operator: Operator, sigma_y: float) -> Any:
    """deepinv ``LinearPhysics`` for ``y = A x + sigma_y n`` (image range [0, 1]); GaussianNoise(sigma_y)."""
    if not (math.isfinite(sigma_y) and sigma_y >= 0):
        raise ValueError(f"sigma_y must be a finite float >= 0; got {sigma_y!r}")
    return _physics_class()(operator, sigma_y)


# ----------------------------------------------------------------------------------------------------------------------
# Running the peers
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class PeerPiGDMDefaults:
    """deepinv PiGDM: ``PosteriorDiffusion(PiGDMDataFidelity, VariancePreservingDiffusion (beta 0.1..20),
    DDPMSolver)`` — ancestral steps, like our `priorkit.inverse.pigdm.PiGDMDefaults` (eta = 1). 100 steps as in the
    paper.
    ``cg_max_iter``: deepinv's PiGDM CG iterations for the measurement-space solve (deepinv's default: 3)."""

    steps: int = 100
    weight: float = 1.0
    cg_max_iter: int = 50
    cg_tol: float = 1e-6


@dataclass
class PeerDPSDefaults:
    """deepinv DPS: its defaults (VP SDE, DDPM solver, ``weight`` 1 on the residual norm, clip to [-1, 1]);
    1000 steps as in the paper."""

    steps: int = 1000
    weight: float = 1.0


@dataclass
class PeerDiffPIRDefaults:
    """deepinv DiffPIR: its defaults (zeta 0.1, lambda 7, its own DDPM-linear schedule); 100 steps."""

    steps: int = 100
    zeta: float = 0.1
    lambda_: float = 7.0


@dataclass
class PeerResult:
    """A peer's restoration (B, C, H, W) in [0, 1] (clamped) and its model evaluations / backward passes."""

    restored: Tensor
    forward: int
    backward: int


def run_peer(method: str, denoiser: Denoiser, operator: Operator, y: Tensor, sigma_y: float, *,
             steps: int | None = None, seed: int = 0, cond: Condition = None, guidance: float = 1.0,
             progress: bool = False) -> PeerResult:
    """Restore ``x`` from the image-range measurement ``y = A x + sigma_y n`` with a deepinv solver.

    Args:
        method: "dinv_pigdm", "dinv_dps" or "dinv_diffpir".
        denoiser: our prior for the full image (wrap in `TiledDenoiser` first for images larger than its tile).
        operator: A on (B, 3, H, W) images.  y: measurement-shaped, image range.  sigma_y: image-range noise std.
        steps: model evaluations (sampling steps); default from the method's defaults dataclass.
        seed: seeds the sampler's noise.  cond, guidance: bound to the prior.
    Returns:
        `PeerResult` with the restoration in [0, 1] and the counted model evaluations.
    """
    if method not in PEERS:
        raise ValueError(f"unknown peer {method!r}; expected one of {', '.join(PEERS)}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if not torch.isfinite(y).all():
        raise ValueError("the measurement y contains NaN or inf values")
    dinv = load_deepinv()
    physics = operator_physics(operator, sigma_y)
    wrapped = DeepinvDenoiser(denoiser, cond, guidance)
    y = y.float()
    rng = torch.Generator().manual_seed(seed)
    if method == "dinv_pigdm":
        d = PeerPiGDMDefaults()
        n = d.steps if steps is None else steps
        fidelity = dinv.sampling.PiGDMDataFidelity(weight=d.weight, cg_max_iter=d.cg_max_iter, cg_tol=d.cg_tol)
        solver = dinv.sampling.DDPMSolver(timesteps=torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64), rng=rng)
        model = dinv.sampling.PosteriorDiffusion(data_fidelity=fidelity, denoiser=wrapped,
                                                 sde=dinv.sampling.VariancePreservingDiffusion(),
                                                 solver=solver, verbose=progress)
        x = model(y, physics)
    elif method == "dinv_dps":
        d = PeerDPSDefaults()
        n = d.steps if steps is None else steps
        # DPS's num_steps counts grid points: num_steps - 1 steps, one model evaluation each (none at t = 0)
        model = dinv.sampling.DPS(wrapped, num_steps=n + 1, weight=d.weight, rng=rng, verbose=progress)
        x = model(y, physics)
    else:
        d = PeerDiffPIRDefaults()
        n = d.steps if steps is None else steps
        model = dinv.sampling.DiffPIR(wrapped, dinv.optim.data_fidelity.L2(), sigma=max(sigma_y, 1e-4),
                                      max_iter=n, zeta=d.zeta, lambda_=d.lambda_, verbose=progress)
        with torch.random.fork_rng(devices=[]):                            # DiffPIR draws from the global RNG
            torch.manual_seed(seed)
            x = model(y, physics)
    x = x.detach().float().clamp(0.0, 1.0)
    return PeerResult(restored=x, forward=wrapped.counts["forward"], backward=wrapped.counts["backward"])
