"""distill/core/samplers/bespoke.py by value (the core group's mutation survivors, tests/MUTANTS.md): the times the
model is evaluated at, the non-stationary step in a float32 sample's dtype, and the solver file (its JSON form, an
exact float64 round trip)."""

from __future__ import annotations

import json

import torch

from priorkit.distill.core.prediction import Prediction
from priorkit.distill.core.samplers.bespoke import BespokeSolver, load_bespoke
from priorkit.distill.core.schedule import FlowMatching

F32, F64 = torch.float32, torch.float64


def _velocity_fn(c: torch.Tensor, seen: list) -> callable:
    """Flow matching with x0_hat = 0, eps_hat = c: the velocity eps - x0 is c at every (x, t). Records each t."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> Prediction:
        seen.append(t)
        return Prediction(x0=torch.zeros_like(x), eps=c.expand_as(x), x_t=x, t=t, schedule=FlowMatching())

    return fn


def test_the_model_is_evaluated_at_the_solvers_times_in_the_samples_dtype():
    """ns with 2 evaluations on uniform increments from 0.9 to 0.2: the model sees t = 0.9 and 0.55 as float32 numbers
    (what a Denoiser makes of them anyway)."""
    solver = BespokeSolver(2, "ns", t_max=0.9, t_end=0.2)
    seen: list = []
    solver(_velocity_fn(torch.ones(3), seen), torch.zeros(2, 3))
    assert [t.dtype for t in seen] == [F32, F32]
    assert [t.item() for t in seen] == torch.tensor([0.9, 0.55], dtype=F32).tolist()


def test_a_float32_ns_step_is_computed_in_float32():
    """One non-stationary step (Shaul et al. 2024, eq. 9) x1 = x0 + dt u0 + a x0 + dt b u0 from t = 0.9 to 0.2 with
    learned a = 0.3, b = 0.102 and u = c (b picked so that dt b rounds differently in float32 and in float64): every
    coefficient (dt, a, b) rounded to float32, then combined in float32."""
    solver = BespokeSolver(1, "ns", t_max=0.9, t_end=0.2)
    with torch.no_grad():
        solver.a.fill_(0.3)
        solver.b_scale.fill_(0.102)
    g = torch.Generator().manual_seed(5)
    x, c = torch.randn(256, generator=g), torch.randn(256, generator=g)
    out = solver(_velocity_fn(c, []), x)
    t = solver.times()
    dt, a, b = (t[1] - t[0]).to(F32), torch.tensor(0.3, dtype=F64).to(F32), torch.tensor(0.102, dtype=F64).to(F32)
    assert out.dtype == F32
    torch.testing.assert_close(out, x + dt * c + a * x + dt * b * c, rtol=0, atol=0)


def test_the_solver_file_is_one_space_indented_json_and_loads_back_exactly(tmp_path):
    """The file is JSON pretty-printed with a one-space indent (readable, diff-friendly, like the training settings
    file); every float64 parameter, e.g. 0.1 (not a float32 number), comes back bit for bit."""
    solver = BespokeSolver(2, "ns", t_max=0.9, t_end=0.2)
    with torch.no_grad():
        solver.a.fill_(0.1)
        solver.b_scale.copy_(torch.tensor([[1 / 3, 0.0], [0.7, -2 / 3]], dtype=F64))
    path = solver.save(tmp_path / "solver.json", note="x")
    text = path.read_text()
    d = json.loads(text)
    assert text == json.dumps(d, indent=1) and d["note"] == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["solver.json"]
    back = load_bespoke(path)
    for name, value in solver.state_dict().items():
        assert back.state_dict()[name].dtype == F64 and torch.equal(back.state_dict()[name], value), name
