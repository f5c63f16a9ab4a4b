"""`Denoiser`: one interface from (x_t, t, condition) to a `Prediction`, whatever the model.

Every algorithm in priorkit (samplers, SDS/VSD, PiGDM, D-Flow, the distillation trainers) talks to a
`Denoiser`; adapters make diffusers UNets, analytic priors and distilled students fit it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.schedule import Schedule, as_time

Condition = Any  # None, a tensor of embeddings (B, L, D), or a list of prompts the denoiser can encode


def select_rows(cond: Condition, rows: slice | Tensor) -> Condition:
    """The condition of a subset of a batch (tensors and dict entries of batch size are indexed)."""
    if isinstance(cond, dict):
        return {k: select_rows(v, rows) for k, v in cond.items()}
    if isinstance(cond, Tensor) and cond.ndim > 0:
        return cond[rows]
    if isinstance(cond, list):
        return [cond[i] for i in range(len(cond))[rows]] if isinstance(rows, slice) else \
            [cond[i] for i in rows.tolist()]
    return cond


def check_inputs(x: Tensor, t: Tensor) -> None:
    """Raise a clear error for NaN/inf inputs or times outside [0, 1]."""
    if not torch.isfinite(x).all():
        raise ValueError("x_t contains NaN or inf values")
    if not torch.isfinite(t).all() or bool((t < 0).any()) or bool((t > 1).any()):
        raise ValueError(f"t must lie in [0, 1]; got min {float(t.min()):.4g}, max {float(t.max()):.4g}")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(f"t must be a scalar or have shape (B,) = ({x.shape[0]},); got {tuple(t.shape)}")


class Denoiser(nn.Module):
    """A model of E[x0 | x_t] under a `Schedule`, served as a `Prediction`.

    Subclasses implement :meth:`predict_native` returning ``(kind, value)`` with ``kind`` one of
    "eps", "x0", "v", "velocity", "score"; :meth:`forward` validates inputs and wraps the answer.

    Call: ``denoiser(x_t, t, cond)`` with ``x_t`` (B, ...), ``t`` a float, () or (B,) tensor in [0, 1].
    """

    schedule: Schedule
    #: shape of one sample, e.g. (3, 32, 32); None when any shape is accepted
    sample_shape: tuple[int, ...] | None = None

    def predict_native(self, x: Tensor, t: Tensor, cond: Condition = None) -> tuple[str, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor | float, cond: Condition = None, *, check: bool = True) -> Prediction:
        t = as_time(t, x)
        if check:
            check_inputs(x, t)
        kind, value = self.predict_native(x, t, self.encode(cond))
        return Prediction.from_output(kind, value, x, t, self.schedule)

    # ---- conditions -------------------------------------------------------------------------
    def encode(self, cond: Condition) -> Condition:
        """Turn user conditions (e.g. prompts) into what the model takes. Identity by default."""
        return cond

    def null_condition(self, cond: Condition) -> Condition:
        """The unconditional counterpart of an encoded ``cond`` (for classifier-free guidance)."""
        return None

    def guided(self, x: Tensor, t: Tensor | float, cond: Condition, scale: float | Tensor,
               *, check: bool = True) -> Prediction:
        """Classifier-free guidance: ``uncond + scale (cond - uncond)``, one batched model call."""
        cond = self.encode(cond)
        if isinstance(scale, (int, float)) and scale == 1.0:
            return self(x, t, cond, check=check)
        uncond = self.null_condition(cond)
        t = as_time(t, x)
        both = self(torch.cat([x, x]), t.repeat(2) if t.ndim == 1 else t, concat_conditions(uncond, cond),
                    check=check)
        u, c = _split(both, x.shape[0])
        return c.guide(u, scale)


def concat_conditions(a: Condition, b: Condition) -> Condition:
    if a is None and b is None:
        return None
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.ndim == b.ndim == 3 and a.shape[1] != b.shape[1]:  # text states of two lengths: zero-padded (text.py)
            n = max(a.shape[1], b.shape[1])
            a, b = (torch.nn.functional.pad(v, (0, 0, 0, n - v.shape[1])) for v in (a, b))
        return torch.cat([a, b])
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: concat_conditions(a[k], b[k]) for k in a}
    raise TypeError(f"cannot batch conditions of types {type(a).__name__} and {type(b).__name__}")


def _split(p: Prediction, n: int) -> tuple[Prediction, Prediction]:
    def part(sl: slice) -> Prediction:
        t = p.t[sl] if p.t.ndim == 1 else p.t
        return Prediction(x0=p.x0[sl], eps=p.eps[sl], x_t=p.x_t[sl], t=t, schedule=p.schedule)

    return part(slice(0, n)), part(slice(n, 2 * n))


class WrappedDenoiser(Denoiser):
    """A `Denoiser` that serves another one, ``inner``: conditions, schedule and sample shape are ``inner``'s.

    Subclasses change :meth:`forward` (what happens around the model call) and, where they serve another
    schedule pass ``schedule`` (another sample size: set ``sample_shape`` after ``__init__``). ``forward``
    defaults to calling ``inner``.
    """

    def __init__(self, inner: Denoiser, *, schedule: Schedule | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.schedule = inner.schedule if schedule is None else schedule
        self.sample_shape = inner.sample_shape
        self.conditional = getattr(inner, "conditional", False)

    def encode(self, cond: Condition) -> Condition:
        return self.inner.encode(cond)

    def null_condition(self, cond: Condition) -> Condition:
        return self.inner.null_condition(cond)

    def forward(self, x: Tensor, t: Tensor | float, cond: Condition = None, *, check: bool = True) -> Prediction:
        return self.inner(x, t, cond, check=check)


class ConvertedDenoiser(WrappedDenoiser):
    """Serve ``inner`` (trained under its own schedule) under another ``schedule`` by SNR matching.

    (x_t, t) under ``schedule`` maps to (x', t') under ``inner.schedule`` with equal SNR; x0 and eps are
    schedule-free, so the prediction carries over exactly (Karras et al. 2022, appendix C).
    Exact wherever ``inner.schedule`` reaches the SNR; beyond its range (e.g. SNR 0 for a DDPM model whose
    last step keeps some signal) the time is clamped to its noisiest or cleanest end, as common practice does.
    """

    def __init__(self, inner: Denoiser, schedule: Schedule) -> None:
        super().__init__(inner, schedule=schedule)

    def forward(self, x: Tensor, t: Tensor | float, cond: Condition = None, *, check: bool = True) -> Prediction:
        t = as_time(t, x)
        if check:
            check_inputs(x, t)
        t2, x2 = self.schedule.convert(t, x, to=self.inner.schedule)
        p = self.inner(x2, t2, self.encode(cond), check=False)
        return Prediction(x0=p.x0, eps=p.eps, x_t=x, t=t, schedule=self.schedule)  # both are schedule-free
