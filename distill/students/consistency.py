"""Consistency models: consistency distillation (CD) and consistency training (CT) (Song et al. 2023,
"Consistency Models"; the pseudo-Huber metric and 1/gap weighting of Song & Dhariwal 2023, "Improved
Techniques for Training Consistency Models", are options).

A consistency function maps every point of a probability-flow ODE trajectory to its end:
f(x_t, t) = f(x_t', t') on one trajectory, f(x, t_min) = x. Written in the general schedule through the
noise-to-signal ratio r = sigma / alpha (the noise level of x / alpha, a VE variable; Karras et al. 2022):

    f(x_t, t) = c_skip(r) x_t / alpha + c_out(r) F(x_t, t)
    c_skip(r) = sigma_d^2 / ((r - r_min)^2 + sigma_d^2),   c_out(r) = sigma_d (r - r_min) / sqrt(r^2 + sigma_d^2)

so c_skip(r_min) = 1 and c_out(r_min) = 0: f(x, t_min) = x / alpha(t_min) exactly (= x when alpha = 1). F is
read from a backbone `Denoiser` as EDM's raw output, F = (r x/alpha / sqrt(r^2 + sigma_d^2)
- sqrt(r^2 + sigma_d^2) eps_hat) / sigma_d, so with r_min -> 0 the model is exactly the backbone's x0 (a
student initialised from a teacher starts as the teacher). Expanded: f = A x0_hat + B eps_hat with
A = c_skip + c_out r / (sigma_d sqrt(r^2 + sigma_d^2)), B = r c_skip - c_out sigma_d / sqrt(r^2 + sigma_d^2),
finite even where alpha = 0.

Training (Song et al., Algorithms 2 and 3), on the Karras grid r_1 = r_min < ... < r_N = r_max:

    CD: x_{n+1} = alpha x0 + sigma z,  x^_n = one teacher ODE step x_{n+1} -> t_n (Heun, DPM-Solver-2, DDIM)
    CT: x_{n+1} = alpha_{n+1} x0 + sigma_{n+1} z,  x^_n = alpha_n x0 + sigma_n z
    L  = lambda(t_n) d(f_theta(x_{n+1}, t_{n+1}), f_theta-(x^_n, t_n)),  theta- <- mu theta- + (1 - mu) theta

with N growing during CT as N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 and
mu(k) = exp(s0 log mu0 / N(k)). Sampling: :func:`consistency_sample` (Algorithm 1, multistep).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from priorkit.distill.core.denoiser import Condition, Denoiser
from priorkit.distill.core.samplers.ddim import ddim_next
from priorkit.distill.core.schedule import Schedule, add_noise, as_time, broadcast_to
from priorkit.distill.core.training import TrainConfig, train
from priorkit.distill.students.consistency_model import ConsistencyModel
from priorkit.distill.students.format import Trainee, freeze, save_student, unwrap
from priorkit.distill.zoo.toy import DataFn

SOLVERS = ("heun", "dpm2", "ddim", "euler")


@dataclass
class ConsistencyConfig:
    """Defaults for :func:`consistency_distill` and :func:`consistency_training` (2D scale)."""

    sigma_data: float = 0.5     # data std in model space (images in [-1, 1]: 0.5)
    sigma_min: float = 0.002    # noise-to-signal ratio r_min where f(x) = x / alpha
    sigma_max: float = 80.0     # noise-to-signal ratio where sampling starts (clamped to the schedule's)
    rho: float = 7.0
    n_steps: int = 18           # CD: the discretisation N
    solver: str = "heun"        # CD: the teacher's ODE step between adjacent times
    mu: float = 0.95            # CD: target EMA decay
    s0: int = 2                 # CT: N(k) grows from s0 ...
    s1: int = 150               # ... to s1 + 1
    mu0: float = 0.9            # CT: mu(k) = exp(s0 log mu0 / N(k))
    metric: str = "l2"          # "l2" (mean squared) or "pseudo_huber"
    weighting: str = "uniform"  # or "inverse_gap": 1 / (r_{n+1} - r_n)
    batch: int = 512
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, lr=5e-4, warmup=100, ema_decay=0.995,
                                                                   checkpoint_every=500, log_every=50))


# ---- the discretisation --------------------------------------------------------------------------------
def ratio_to_time(schedule: Schedule, r: Tensor) -> Tensor:
    """The time where sigma / alpha = r (float64)."""
    return schedule.t_from_log_snr(-2.0 * torch.log(r.double()))


def noise_range(schedule: Schedule, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """(r_min, r_max) clamped to what the schedule reaches."""
    t_max = torch.tensor(schedule.t_max, dtype=torch.float64)
    hi = float(torch.exp(-0.5 * schedule.log_snr(t_max)))
    return sigma_min, min(sigma_max, hi)


def karras_times(schedule: Schedule, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """n increasing times t_1 < ... < t_n whose noise-to-signal ratios follow Karras' rho-spacing (float64)."""
    if n < 2:
        raise ValueError(f"the consistency grid needs at least 2 points; got {n}")
    lo, hi = noise_range(schedule, sigma_min, sigma_max)
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    r = (lo ** (1 / rho) + i * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho
    return ratio_to_time(schedule, r)


def ct_steps(step: int, total: int, s0: int, s1: int) -> int:
    """N(k) of Song et al. (CT, sec. 5): grows from s0 to s1 + 1 over ``total`` steps."""
    k = min(step, total) / max(1, total)
    return int(math.ceil(math.sqrt(k * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)) + 1


def ct_mu(n: int, s0: int, mu0: float) -> float:
    """mu(k) = exp(s0 log mu0 / N(k))."""
    return math.exp(s0 * math.log(mu0) / n)


# ---- the teacher's ODE step (per-sample times) --------------------------------------------------------
@torch.no_grad()
def teacher_step(teacher: Denoiser, x: Tensor, t: Tensor, t_next: Tensor, solver: str = "heun",
                 cond: Condition = None) -> Tensor:
    """One probability-flow ODE step of ``teacher`` from t to t_next (both (B,) or scalars); x (B, ...).

    "euler" / "heun" (Karras et al. 2022, Alg. 1) integrate dx/dt = velocity; "ddim" is DPM-Solver-1;
    "dpm2" is DPM-Solver++(2S) with the midpoint in lambda = log(alpha / sigma) (Lu et al. 2022).
    """
    s = teacher.schedule
    t, t_next = as_time(t, x).double(), as_time(t_next, x).double()
    h = broadcast_to(t_next - t, x).to(x.dtype)
    p = teacher(x, t.to(x.dtype), cond, check=False)
    if solver == "euler":
        return x + h * p.velocity
    if solver == "ddim":
        return ddim_next(p, t_next)
    if solver == "heun":
        d1 = p.velocity
        x_e = x + h * d1
        d2 = teacher(x_e, t_next.to(x.dtype), cond, check=False).velocity
        return x + 0.5 * h * (d1 + d2)
    if solver == "dpm2":
        lam, lam_next = s.half_log_snr(t), s.half_log_snr(t_next)
        t_mid = s.t_from_log_snr(lam + lam_next)                       # lambda_mid = (lambda + lambda_next) / 2
        u = ddim_next(p, t_mid)
        d = teacher(u, t_mid.to(x.dtype), cond, check=False).x0
        hh = lam_next - lam
        coef_x = broadcast_to(s.sigma(t_next) / s.sigma(t), x).to(x.dtype)
        coef_d = broadcast_to(s.alpha(t_next) * torch.expm1(-hh), x).to(x.dtype)
        return coef_x * x - coef_d * d                                 # x_t = (s_t / s_s) x_s - a_t (e^-h - 1) D
    raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")


# ---- the loss ------------------------------------------------------------------------------------------
def distance(a: Tensor, b: Tensor, metric: str = "l2") -> Tensor:
    """Per-sample distance (B,): mean squared error, or pseudo-Huber sqrt(|a-b|^2 + c^2) - c, c = 0.00054 sqrt(D)."""
    diff = (a - b).reshape(a.shape[0], -1)
    if metric == "l2":
        return diff.pow(2).mean(1)
    if metric == "pseudo_huber":
        c = 0.00054 * math.sqrt(diff.shape[1])
        return torch.sqrt(diff.pow(2).sum(1) + c * c) - c
    raise ValueError(f"unknown metric {metric!r}; expected 'l2' or 'pseudo_huber'")


def consistency_loss(online: nn.Module, target: Denoiser, x0: Tensor, eps: Tensor, t_hi: Tensor, t_lo: Tensor, *,
                     teacher: Denoiser | None = None, solver: str = "heun", cond: Condition = None,
                     metric: str = "l2", weight: Tensor | None = None) -> Tensor:
    """mean_b lambda d(f_online(x_{t_hi}), f_target(x^_{t_lo})); CD with a ``teacher``, CT without.

    x0, eps: (B, ...); t_hi > t_lo: (B,) float64; ``weight`` (B,) or None. x_{t_hi} = alpha x0 + sigma eps.
    """
    s = (teacher or target).schedule
    x_hi = add_noise(s, x0, t_hi, eps)
    with torch.no_grad():
        if teacher is None:
            x_lo = add_noise(s, x0, t_lo, eps)
        else:
            x_lo = teacher_step(teacher, x_hi, t_hi, t_lo, solver, cond)
        f_lo = target(x_lo, t_lo.to(x0.dtype), cond, check=False).x0
    f_hi = online(x_hi, t_hi.to(x0.dtype), cond, check=False).x0
    d = distance(f_hi, f_lo, metric)
    return (d if weight is None else weight.to(d) * d).mean()


# ---- the trainers --------------------------------------------------------------------------------------
def consistency_distill(teacher: Denoiser, net: Denoiser, data: DataFn, out: str | Path,
                        cfg: ConsistencyConfig | None = None, *, resume: bool = False,
                        meta: dict[str, Any] | None = None) -> ConsistencyModel:
    """Consistency distillation of ``teacher``: returns the (EMA) consistency model over backbone ``net``.

    ``net`` is the student backbone (a copy of the teacher's network makes the student start as the
    teacher; any `Denoiser` with trainable parameters works). ``data(n, g) -> (x0, cond)``. Checkpoints in
    ``out`` (``resume`` continues), the student in ``out/student``.
    """
    return _train(freeze(teacher), net, data, out, cfg or ConsistencyConfig(), resume, meta)


def consistency_training(net: Denoiser, data: DataFn, out: str | Path, cfg: ConsistencyConfig | None = None, *,
                         resume: bool = False, meta: dict[str, Any] | None = None) -> ConsistencyModel:
    """Consistency training from data alone (no teacher), with the growing N(k) and mu(k) schedules."""
    return _train(None, net, data, out, cfg or ConsistencyConfig(), resume, meta)


def _train(teacher: Denoiser | None, net: Denoiser, data: DataFn, out: str | Path, cfg: ConsistencyConfig,
           resume: bool, meta: dict[str, Any] | None) -> ConsistencyModel:
    if cfg.solver not in SOLVERS:
        raise ValueError(f"unknown solver {cfg.solver!r}; expected one of {SOLVERS}")
    out = Path(out)
    model = ConsistencyModel(net.train().requires_grad_(True), cfg.sigma_data, cfg.sigma_min)
    trainee = Trainee(model, target=True)
    schedule = model.schedule
    grids: dict[int, Tensor] = {}

    def loss_fn(m: nn.Module, step: int, g: torch.Generator) -> Tensor:
        core = unwrap(m)
        if teacher is not None:
            n, mu = cfg.n_steps, cfg.mu
        else:
            n = ct_steps(step, cfg.train.steps, cfg.s0, cfg.s1)
            mu = ct_mu(n, cfg.s0, cfg.mu0)
        if step > 0:  # theta- <- mu theta- + (1 - mu) theta, after the previous optimiser step
            core.update_target(mu)
        if n not in grids:
            grids[n] = karras_times(schedule, n, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        times = grids[n]
        x0, cond = data(cfg.batch, g)
        i = torch.randint(0, n - 1, (x0.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        t_lo, t_hi = times[i], times[i + 1]
        weight = None
        if cfg.weighting == "inverse_gap":
            r = lambda tt: torch.exp(-0.5 * schedule.log_snr(tt))  # noqa: E731
            weight = 1.0 / (r(t_hi) - r(t_lo))
        elif cfg.weighting != "uniform":
            raise ValueError(f"unknown weighting {cfg.weighting!r}; expected 'uniform' or 'inverse_gap'")
        return consistency_loss(m, core.target, x0, eps, t_hi, t_lo, teacher=teacher, solver=cfg.solver, cond=cond,
                                metric=cfg.metric, weight=weight)

    mode = "cd" if teacher is not None else "ct"
    ema, _ = train(trainee, loss_fn, cfg.train, out, resume=resume, desc=f"consistency ({mode})")
    student = freeze(unwrap(ema).student)
    hi = noise_range(schedule, cfg.sigma_min, cfg.sigma_max)[1]  # the grid's top ratio, for any rho
    t_start = float(ratio_to_time(schedule, torch.tensor(hi, dtype=torch.float64)))
    save_student(student, out / "student", {**(meta or {}), "method": f"consistency-{mode}", "sampler": "consistency",
                                            "t_max": t_start, "config": asdict(cfg)})
    return student


# ---- sampling ------------------------------------------------------------------------------------------
def consistency_times(schedule: Schedule, steps: int, *, sigma_min: float = 0.002, sigma_max: float = 80.0,
                      rho: float = 7.0, grid: int = 18) -> Tensor:
    """``steps`` decreasing times for multistep sampling: evenly spaced indices of the ``grid``-point Karras grid."""
    times = karras_times(schedule, grid, sigma_min, sigma_max, rho)
    idx = torch.linspace(grid - 1, 0, steps + 1)[:-1].round().long()
    return times[idx]


@torch.no_grad()
def consistency_sample(model: Denoiser, noise: Tensor, times: Tensor, *, cond: Condition = None,
                       generator: torch.Generator | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1); NFE = len(times).

    ``noise``: the state at ``times[0]`` (sigma(times[0]) z, e.g. ``initial_noise(model, shape,
    t_max=float(times[0]))``); ``times`` decreasing. x <- f(x, t_0); then for each next t:
    x_t = alpha_t x + sigma_t z, x <- f(x_t, t).
    """
    s = model.schedule
    x = model(noise, times[0], cond, check=False).x0
    for t in times[1:]:
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        tt = torch.as_tensor(t, dtype=torch.float64)
        x_t = add_noise(s, x, tt, z)
        x = model(x_t, t, cond, check=False).x0
    return x
