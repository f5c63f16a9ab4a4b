"""benchmarks.samplers: a micro run end to end, the goal checks, and the shapes-student scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import samplers as bench


def _rec(target: str, method: str, nfe: int, value: float, metric: str = "sw2") -> dict:
    return bench.record(target, method, nfe, value, metric=metric)


def test_goals_report_met_and_not_met() -> None:
    rows = [_rec("gmm", "teacher-dpm++2m", 4, 0.10), _rec("gmm", "teacher-dpm++2m", 8, 0.05),
            _rec("gmm", "cd", 1, 0.08), _rec("gmm", "cd", 2, 0.06)]
    lines = bench.goals(rows)
    assert len(lines) == 2 and "[met]" in lines[0] and "[NOT met]" in lines[1]


def test_shapes_goals_need_accuracy_and_speed() -> None:
    rows = [_rec("shapes", "teacher-dpm++2m", 50, 0.95, "judge_accuracy"),
            _rec("shapes", "teacher-dpm++2m", 50, 1.0, "seconds_per_sample"),
            _rec("shapes", "cd", 2, 0.90, "judge_accuracy"), _rec("shapes", "cd", 2, 0.05, "seconds_per_sample"),
            _rec("shapes", "ct", 2, 0.50, "judge_accuracy"), _rec("shapes", "ct", 2, 0.05, "seconds_per_sample")]
    lines = bench.shapes_goals(rows)
    assert "[met]" in lines[1] and "20.0x" in lines[1] and "[NOT met]" in lines[2]
    assert "judge_accuracy, higher is better" in bench.table(rows)


def test_shapes_dmd_goal_needs_the_teachers_frechet_distance_and_accuracy() -> None:
    rows = [_rec("shapes", "teacher-dpm++2m", 50, 1.0, "judge_accuracy"),
            _rec("shapes", "teacher-dpm++2m", 50, 1.0, "seconds_per_sample"),
            _rec("shapes", "teacher-dpm++2m", 50, 2.0, "fid_judge")]
    for method, fid, acc in (("dmd2", 1.9, 0.995), ("dmd", 1.9, 0.98)):
        rows += [_rec("shapes", method, 1, acc, "judge_accuracy"), _rec("shapes", method, 1, fid, "fid_judge")]
    lines = [line for line in bench.shapes_goals(rows) if "1-step" in line]
    assert len(lines) == 2 and "dmd2" in lines[0] and "[met]" in lines[0] and "[NOT met]" in lines[1]
    rows[-3] = _rec("shapes", "dmd2", 1, 2.1, "fid_judge")  # above the teacher's distance
    assert "[NOT met]" in [line for line in bench.shapes_goals(rows) if "dmd2" in line][0]


def test_micro_run_writes_records_and_a_picture(tmp_path: Path, monkeypatch, single_thread) -> None:
    tiny = {"n_eval": 500, "teacher": 20, "steps": 20, "pairs": 256, "pd_start": 4, "pd_steps": 10,
            "gd_start": 4, "batch": 64}
    monkeypatch.setattr(bench, "settings", lambda quick: dict(tiny))
    sizes = []
    real_w2 = bench.sliced_w2
    monkeypatch.setattr(bench, "sliced_w2", lambda x, y, **kw: sizes.append((len(x), len(y))) or real_w2(x, y, **kw))
    out = tmp_path / "s.json"
    bench.main(["--json", str(out), "--targets", "moons", "--methods", "cd,progressive", "--work",
                str(tmp_path / "work"), "--n-eval", "400"])
    assert sizes and set(sizes) == {(400, 400)}  # --n-eval sets both sides of every distance
    with pytest.raises(SystemExit):
        bench.main(["--json", str(out), "--targets", "moons", "--n-eval", "50"])
    with pytest.raises(SystemExit):
        bench.main(["--json", str(out), "--targets", "moons", "--reuse"])  # --reuse needs --work
    # --reuse: the students in --work are scored again, not retrained, and score the same
    first = {(r["method"], r["nfe"]): r["value"] for r in json.loads(out.read_text())
             if r["method"] in ("cd", "progressive")}
    monkeypatch.setattr(bench.cm, "consistency_distill", lambda *a, **k: pytest.fail("retrained under --reuse"))
    monkeypatch.setattr(bench.pd, "progressive_distill", lambda *a, **k: pytest.fail("retrained under --reuse"))
    again = tmp_path / "again.json"
    bench.main(["--json", str(again), "--targets", "moons", "--methods", "cd,progressive", "--work",
                str(tmp_path / "work"), "--n-eval", "400", "--reuse", "--no-reference"])
    rows = [r for r in json.loads(again.read_text()) if r["method"] != "data"]
    assert {(r["method"], r["nfe"]): r["value"] for r in rows if r["method"] in ("cd", "progressive")} == first
    assert all(r["train_seconds"] is None for r in rows)  # the teacher's rows too: nothing was trained
    with pytest.raises(SystemExit, match="no trained shortcut student"):  # nothing to reuse: an error, not a training
        bench.main(["--json", str(again), "--targets", "moons", "--methods", "shortcut", "--work",
                    str(tmp_path / "work"), "--n-eval", "400", "--reuse", "--no-reference"])
    with pytest.raises(SystemExit):
        bench.main(["--json", str(again), "--targets", "moons", "--methods", "bespoke", "--work",
                    str(tmp_path / "work"), "--reuse"])
    teacher_nfes = {r["nfe"] for r in json.loads(again.read_text()) if r["method"].startswith("teacher")}
    assert teacher_nfes == set(bench.NFES) and bench.REFERENCE_NFE in {r["nfe"] for r in json.loads(out.read_text())}
    records = json.loads(out.read_text())
    assert {"target", "method", "nfe", "metric", "value", "train_seconds"} <= set(records[0])
    methods = {r["method"] for r in records}
    assert {"data", "teacher-euler", "teacher-dpm++2m", "cd", "progressive"} <= methods
    assert {r["nfe"] for r in records if r["method"] == "cd"} == set(bench.NFES)
    assert all(r["value"] >= 0 for r in records)
    assert (tmp_path / "s_moons.png").stat().st_size > 0


@pytest.mark.slow
def test_shapes_students_are_scored_by_the_judge(tmp_path: Path, single_thread) -> None:
    from priorkit.distill.students.runner import distill

    run = tmp_path / "cd"
    distill("cd", "shapes", run, steps=2, batch=4, guidance=3.0, n_data=16)
    records = bench.run_shapes([run], nfes=(2,), n_per_prompt=1, teacher_steps=2)
    got = {(r["method"], r["nfe"], r["metric"]) for r in records}
    assert ("cd", 2, "judge_accuracy") in got and ("cd", 2, "seconds_per_sample") in got
    assert ("teacher-dpm++2m", 4, "judge_accuracy") in got
    assert ("cd", 2, "fid_judge") in got and ("teacher-dpm++2m", 4, "fid_judge") in got
    assert all(0 <= r["value"] <= 1 for r in records if r["metric"] == "judge_accuracy")
    assert all(r["train_seconds"] > 0 for r in records if r["method"] == "cd")


def test_shapes_guidance_and_held_out_seed_reach_the_scoring(tmp_path: Path, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(bench, "run_shapes", lambda runs, **kw: seen.append(kw) or [])
    bench.main(["--json", str(tmp_path / "a.json"), "--targets", "none", "--shapes", "shapes-dmd2"])
    bench.main(["--json", str(tmp_path / "b.json"), "--targets", "none", "--shapes", "shapes-dmd2",
                "--shapes-guidance", "1.5", "--shapes-held-out-seed", "6", "--seed", "1"])
    assert (seen[0]["guidance"], seen[0]["held_out_seed"], seen[0]["seed"]) == (3.0, bench.HELD_OUT_SEED, 0)
    assert (seen[1]["guidance"], seen[1]["held_out_seed"], seen[1]["seed"]) == (1.5, 6, 1)


def test_the_held_out_seed_picks_the_renders_the_distance_compares_with(monkeypatch, single_thread) -> None:
    from priorkit.distill.zoo import shapes

    class SeenError(Exception):
        pass

    def renders(n, seed=0, size=32):  # noqa: ANN001, ANN202
        raise SeenError((n, seed))

    monkeypatch.setattr(shapes, "held_out_renders", renders)
    for kw, want in (({}, bench.HELD_OUT_SEED), ({"held_out_seed": 6}, 6)):
        with pytest.raises(SeenError) as got:
            bench.run_shapes([], n_per_prompt=1, **kw)
        assert got.value.args[0] == (len(shapes.SHAPES) * len(shapes.COLOURS), want)
