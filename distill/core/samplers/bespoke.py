"""Bespoke solvers: a few-step solver whose own parameters were fitted to one model (Shaul et al. 2023, "Bespoke
Solvers for Generative Flow Models"; Shaul et al. 2024, "Bespoke Non-Stationary Solvers for Fast Sampling of
Diffusion and Flow Models"). The model is never touched; only the solver's handful of numbers are learned
(training: ``priorkit.distill.students.bespoke``).

* "rk2" (stationary, Shaul et al. 2023, sec. 3): RK2 (midpoint) on the transformed path x_bar(r) = s_r x(t_r),
  r in [0, 1] on n uniform steps of size h. With u(x, t) = dx/dt (the `Prediction`'s velocity, any schedule),
  one step reads (their eq. 13 in our notation)

      x_{i+1/2} = [s_i x_i + h/2 (sdot_i x_i + tdot_i s_i u(x_i, t_i))] / s_{i+1/2}
      x_{i+1}   = [s_i x_i + h (sdot_{i+1/2} x_{i+1/2} + tdot_{i+1/2} s_{i+1/2} u(x_{i+1/2}, t_{i+1/2}))] / s_{i+1}

  parameters: the 2n + 1 times t (monotone from t_max to the data end; softmax increments), tdot (< 0), the scales
  s > 0 (s_0 = 1) and sdot. Initialised as plain midpoint RK2 on a uniform grid. NFE = 2n.
* "ns" (non-stationary, Shaul et al. 2024, eq. 9): n evaluations at learned times t_0 > ... > t_{n-1}; step i is
  x_{i+1} = sum_{j<=i} a_ij x_j + sum_{j<=i} b_ij u(x_j, t_j), initialised as Euler (a = I, b_ii = t_{i+1} - t_i).
  NFE = n.

A solver file is JSON: {"kind": "bespoke", "variant", "nfe", "params": {name: nested lists}, "schedule", "t_max"}.
``sample(..., solver="bespoke:PATH")`` runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.samplers.base import PredictFn

VARIANTS = ("rk2", "ns")
T_FLOOR = 1e-4  # no evaluation closer to the data end than this (sigma = 0 there for VP schedules)


class BespokeSolver(nn.Module):
    """The learnable parameters of a bespoke solver with ``nfe`` model evaluations, and its integration."""

    def __init__(self, nfe: int, variant: str = "rk2", t_max: float = 1.0, t_end: float = 0.0) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown bespoke variant {variant!r}; expected one of {VARIANTS}")
        if variant == "rk2" and (nfe < 2 or nfe % 2):
            raise ValueError(f"an RK2 bespoke solver takes an even NFE >= 2; got {nfe}")
        self.variant, self.nfe, self.t_max, self.t_end = variant, int(nfe), float(t_max), float(t_end)
        n = nfe // 2 if variant == "rk2" else nfe
        self.n = n
        m = 2 * n if variant == "rk2" else n  # time increments between consecutive evaluation points (and the end)
        self.dt_logits = nn.Parameter(torch.zeros(m, dtype=torch.float64))  # uniform increments at start
        if variant == "rk2":
            self.log_tdot = nn.Parameter(torch.full((2 * n,), float(torch.log(torch.tensor(t_max - t_end))),
                                                    dtype=torch.float64))
            self.log_s = nn.Parameter(torch.zeros(2 * n, dtype=torch.float64))   # s at points 1/2, 1, ..., n
            self.sdot = nn.Parameter(torch.zeros(2 * n, dtype=torch.float64))    # sdot at points 0, 1/2, ..., n-1/2
        else:
            self.a = nn.Parameter(torch.zeros(n, n, dtype=torch.float64))       # a_ij - delta_ij (j <= i)
            self.b_scale = nn.Parameter(torch.zeros(n, n, dtype=torch.float64))  # b_ij relative to the Euler step

    def times(self) -> Tensor:
        """The evaluation times (and the end), decreasing from t_max: 2n + 1 points (rk2) or n + 1 (ns)."""
        frac = torch.cumsum(torch.softmax(self.dt_logits, 0), 0)
        t = self.t_max - (self.t_max - self.t_end) * frac
        return torch.cat([t.new_tensor([self.t_max]), t])

    def forward(self, fn: PredictFn, x: Tensor) -> Tensor:
        t = self.times()
        u = lambda y, tt: fn(y, tt.clamp_min(T_FLOOR).to(y.dtype)).velocity  # noqa: E731  dx/dt
        if self.variant == "rk2":
            return self._rk2(u, x, t)
        xs, us = [x], []
        for i in range(self.n):
            us.append(u(xs[-1], t[i]))
            dt = (t[i + 1] - t[i]).to(x.dtype)
            nxt = xs[i] + dt * us[i]  # the Euler step, then the learned corrections (Shaul et al. 2024, eq. 9)
            for j in range(i + 1):
                nxt = nxt + self.a[i, j].to(x.dtype) * xs[j] + dt * self.b_scale[i, j].to(x.dtype) * us[j]
            xs.append(nxt)
        return xs[-1]

    def _rk2(self, u: Any, x: Tensor, t: Tensor) -> Tensor:
        h = 1.0 / self.n
        tdot = -torch.exp(self.log_tdot)                       # dt/dr < 0: from noise to data
        s = torch.cat([self.log_s.new_zeros(1), self.log_s]).exp()  # s_0 = 1 (scale invariance)
        sdot = self.sdot
        for i in range(self.n):
            k0, k1, k2 = 2 * i, 2 * i + 1, 2 * i + 2  # points i, i + 1/2, i + 1
            f0 = sdot[k0] * x + tdot[k0] * s[k0] * u(x, t[k0])
            x_mid = (s[k0] * x + 0.5 * h * f0) / s[k1]
            f1 = sdot[k1] * x_mid + tdot[k1] * s[k1] * u(x_mid, t[k1])
            x = (s[k0] * x + h * f1) / s[k2]  # Shaul et al. 2023, eq. 13 (RK2 on the transformed path)
        return x

    # ---- the file ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": "bespoke", "variant": self.variant, "nfe": self.nfe, "t_max": self.t_max,
                "t_end": self.t_end, "params": {k: v.detach().tolist() for k, v in self.state_dict().items()}}

    def save(self, path: str | Path, **meta: Any) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**self.to_dict(), **meta}, indent=1))
        tmp.rename(path)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BespokeSolver:
        if d.get("kind") != "bespoke":
            raise ValueError("not a bespoke solver file (kind != 'bespoke')")
        solver = cls(int(d["nfe"]), d["variant"], float(d["t_max"]), float(d.get("t_end", 0.0)))
        solver.load_state_dict({k: torch.tensor(v, dtype=torch.float64) for k, v in d["params"].items()})
        return solver.requires_grad_(False)


def load_bespoke(path: str | Path) -> BespokeSolver:
    """A solver saved by :meth:`BespokeSolver.save` (ValueError for anything else)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read bespoke solver {path}: {e}") from e
    return BespokeSolver.from_dict(d)


def bespoke_solve(fn: PredictFn, x: Tensor, path: str | Path) -> Tensor:
    """Integrate with the bespoke solver in ``path`` from its t_max to its end."""
    return load_bespoke(path)(fn, x)


__all__ = ["BespokeSolver", "VARIANTS", "bespoke_solve", "load_bespoke"]
