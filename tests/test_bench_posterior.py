"""benchmarks.posterior: the exact-posterior benchmark runs, and its errors mean what they say."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks import posterior as bench


def test_errors_vanish_on_the_exact_moments_and_grow_with_a_shift() -> None:
    g = torch.Generator().manual_seed(0)
    mu, m = torch.zeros(1, *bench.SHAPE, dtype=torch.float64), torch.ones(1, *bench.SHAPE, dtype=torch.float64)
    cov = torch.eye(bench.D, dtype=torch.float64)
    xs = m + torch.randn(20000, *bench.SHAPE, generator=g, dtype=torch.float64)
    mean_err, cov_err = bench.errors(xs, mu, m, cov)
    assert mean_err < 0.01 and cov_err < 0.1
    assert bench.errors(xs + 0.5, mu, m, cov)[0] > 0.45


def test_micro_run_writes_records_and_checks_the_goal(tmp_path: Path, single_thread, monkeypatch) -> None:
    monkeypatch.setattr(bench, "METHODS", ("pigdm",))
    records = bench.main(["--json", str(tmp_path / "p.json"), "--samples", "128"])
    assert json.loads((tmp_path / "p.json").read_text()) == records
    assert {(r["prior"], r["operator"], r["method"]) for r in records} == {
        (p, o, m) for p in ("iso", "decay") for o in ("inpaint", "blur") for m in ("exact", "pigdm")}
    assert all(r["nfe"] == 100 for r in records if r["method"] == "pigdm")
    assert len(bench.goals(records)) == 2


def test_every_solver_that_takes_a_prior_variance_gets_the_same_one(monkeypatch) -> None:
    """benchmarks.posterior passes its data_var to every registered solver with a ``data_var`` parameter."""
    from benchmarks import posterior as post
    from priorkit.inverse.registry import get_method

    takers = [m for m in post.METHODS if m != "pigdm" and post.takes_data_var(get_method(m).function)]
    seen: dict[str, object] = {}
    for m in takers:
        spec = get_method(m)
        monkeypatch.setattr(type(spec), "__call__",
                            lambda self, *a, **kw: seen.setdefault(self.name, kw.get("data_var")))
        post.solve(m, None, None, None, 0.37)
    assert seen == {m: 0.37 for m in takers}  # DiffPIR (registered in the working tree) is one
