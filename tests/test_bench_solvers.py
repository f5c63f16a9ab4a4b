"""benchmarks.solvers: a micro run compares like with like (grid field, the same-grid pair, interleaved timing)."""

from __future__ import annotations

import torch

from benchmarks import solvers as bench
from priorkit.distill.core.gmm import GaussianMixture
from priorkit.distill.core.schedule import VPDiscrete


def test_micro_run_has_grids_and_the_same_grid_pair_agrees(monkeypatch) -> None:
    torch.set_num_threads(1)
    schedule = VPDiscrete.from_diffusers_config(bench.SD_CONFIG)
    gmm = GaussianMixture.random(2, 4, generator=torch.Generator().manual_seed(0), schedule=schedule)
    monkeypatch.setattr(bench, "targets", lambda quick: {"gmm-2d": (gmm, 16)})
    records = bench.run(quick=True, repeats=1, nfes=(4, 8))
    assert {"target", "solver", "impl", "grid", "nfe", "error", "seconds"} <= set(records[0])
    dpm = {(r["impl"], r["grid"], r["nfe"]): r for r in records if r["solver"] == "dpm++2m"}
    assert {(i, g) for i, g, _ in dpm} == {("priorkit", "logsnr"), ("priorkit", "diffusers-linspace"),
                                           ("priorkit", "karras"), ("priorkit", "time"), ("diffusers", "linspace"),
                                           ("diffusers", "lu_lambdas"), ("diffusers", "karras")}
    for nfe in (4, 8):  # ours on diffusers' grid is diffusers' solve (measured ~1e-9 relative)
        a, b = dpm[("priorkit", "diffusers-linspace", nfe)]["error"], dpm[("diffusers", "linspace", nfe)]["error"]
        assert abs(a - b) <= 1e-5 * b, (nfe, a, b)
    assert {r["grid"] for r in records if r["solver"] != "dpm++2m"} == {"karras", "linspace"}
    text = bench.table(records)
    assert text.count("| gmm-2d | dpm++2m |") == 2 and "(diff." in text


def test_timing_runs_are_interleaved() -> None:
    calls: list[str] = []
    out = bench.timed({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 3 and set(out) == {"a", "b"}
