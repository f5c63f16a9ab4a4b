"""The test harness itself: what `make mutants` relies on."""

from __future__ import annotations

import os
import signal

import pytest
from tqdm import tqdm


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_killed_inside_a_progress_bar_does_not_block_the_next() -> None:
    """mutmut forks one process per mutant and kills it on time-out; one killed while it held tqdm's (by default
    cross-process) write lock made every later mutant hang in its first bar and count as a time-out."""
    lock = tqdm.get_lock()
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies holding it
        try:
            lock.acquire()
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)  # never back into the test session
    os.waitpid(pid, 0)
    acquired = lock.acquire(timeout=2)  # a threading lock says whether it got it (tqdm's default says None)
    if acquired:
        lock.release()
    assert acquired, "tqdm's lock stayed taken by a killed process"


def _mutants_script():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("mutants", Path(__file__).with_name("mutants.py"))
    mutants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutants)
    return mutants


def test_mutation_results_are_tallied_per_file_with_timeouts_counted_as_killed(tmp_path, monkeypatch):
    mutants = _mutants_script()
    monkeypatch.setattr(mutants, "EQUIVALENT", tmp_path / "none.tsv")
    text = ("    priorkit.distill.core.schedule.x_add_noise__mutmut_1: killed\n"
            "    priorkit.distill.core.schedule.xǁVEǁsigma__mutmut_2: survived\n"
            "    priorkit.distill.core.schedule.x_add_noise__mutmut_3: timeout\n"
            "    priorkit.gen3d.sds.x_loss__mutmut_1: no tests\n")
    got = mutants.tally(text)
    assert dict(got["priorkit.distill.core.schedule"]) == {"killed": 1, "survived": 1, "timeout": 1}
    assert dict(got["priorkit.gen3d.sds"]) == {"no tests": 1}
    monkeypatch.setattr(mutants, "RESULTS", tmp_path)
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text("    priorkit.gen3d.sds.x_loss__mutmut_2: killed\n"
                                    "    priorkit.gen3d.sds.x_loss__mutmut_3: segfault\n")
    table = mutants.summary().splitlines()
    assert table[1].split()[:2] == ["priorkit.distill.core.schedule", "3"] and table[1].endswith("66.7%         0")
    assert table[-2].split() == ["all", "6", "2", "1", "1", "1", "1", "50.0%", "0"]  # a segfault is "other"
    assert mutants.summary(["b"]).splitlines()[-2].split()[:2] == ["all", "2"]  # only the groups asked for


SHOW = """### priorkit.gen3d.sds.x_loss__mutmut_{n}: survived
# priorkit.gen3d.sds.x_loss__mutmut_{n}: survived
--- priorkit/gen3d/sds.py
+++ priorkit/gen3d/sds.py
@@ -1,3 +1,3 @@
 def loss(x):
-    return x.to(x.dtype)
+    return x.to({arg})
"""


def test_a_survivor_is_explained_only_by_an_entry_with_its_mutated_line(tmp_path, monkeypatch):
    mutants = _mutants_script()
    monkeypatch.setattr(mutants, "RESULTS", tmp_path)
    monkeypatch.setattr(mutants, "EQUIVALENT", tmp_path / "eq.tsv")
    (tmp_path / "g.txt").write_text("    priorkit.gen3d.sds.x_loss__mutmut_1: survived\n"
                                    "    priorkit.gen3d.sds.x_loss__mutmut_2: survived\n"
                                    "    priorkit.gen3d.sds.x_loss__mutmut_3: killed\n")
    (tmp_path / "g-survivors.diff").write_text(SHOW.format(n=1, arg="None") + "\n" + SHOW.format(n=2, arg="x.dtype, "))
    assert mutants.saved_survivors() == {"priorkit.gen3d.sds.x_loss__mutmut_1": "return x.to(None)",
                                         "priorkit.gen3d.sds.x_loss__mutmut_2": "return x.to(x.dtype, )"}
    (tmp_path / "eq.tsv").write_text("# a comment\n@same-dtype\tthe cast is to the dtype it has\n"
                                     "priorkit.gen3d.sds.x_loss__mutmut_1\tsame-dtype\treturn x.to(None)\n"
                                     "priorkit.gen3d.sds.x_loss__mutmut_2\tsame-dtype\treturn x.to(x.dtype)\n")
    left = mutants.unexplained(mutants.saved_survivors(), mutants.equivalents())
    assert left == ["priorkit.gen3d.sds.x_loss__mutmut_2"]  # listed, but another line: a different mutant now
    table = mutants.summary().splitlines()
    assert table[-2].split() == ["all", "3", "1", "0", "2", "0", "0", "33.3%", "1"]
    assert table[-1].endswith(": 1 (--unexplained lists them)")
    (tmp_path / "eq.tsv").write_text("@open-x\tkilled by a spy on its seed, not written yet\n"
                                     "priorkit.gen3d.sds.x_loss__mutmut_1\topen-x\treturn x.to(None)\n")
    assert mutants.unexplained(mutants.saved_survivors(), mutants.equivalents()) == [
        "priorkit.gen3d.sds.x_loss__mutmut_1", "priorkit.gen3d.sds.x_loss__mutmut_2"]  # "open-": listed, not explained
    inner = SHOW.format(n=1, arg="None").replace("+    return", " x = '### y'\n+    return")
    (tmp_path / "g-survivors.diff").write_text(inner + "### priorkit.gen3d.sds.x_loss__mutmut_4: no tests\n(failed)\n")
    assert mutants.saved_survivors() == {"priorkit.gen3d.sds.x_loss__mutmut_1": "return x.to(None)",
                                         "priorkit.gen3d.sds.x_loss__mutmut_4": ""}  # "###" inside a line: no block
    assert mutants.unexplained({"priorkit.gen3d.sds.x_loss__mutmut_4": ""},
                               {"priorkit.gen3d.sds.x_loss__mutmut_4": ("same-dtype", "")}) == [
        "priorkit.gen3d.sds.x_loss__mutmut_4"]  # an empty fingerprint (no diff) never counts as explained
    for bad in ("@k\tr\nm\tk\tline\nm\tk\tline\n", "@k\tr\nm\tk\t \n"):  # listed twice; an empty line
        (tmp_path / "eq.tsv").write_text(bad)
        with pytest.raises(ValueError, match="eq.tsv:3|eq.tsv:2"):
            mutants.equivalents()
    (tmp_path / "eq.tsv").write_text("priorkit.gen3d.sds.x_loss__mutmut_1\tundefined\treturn x.to(None)\n")
    with pytest.raises(ValueError, match="not defined"):
        mutants.equivalents()
    (tmp_path / "eq.tsv").write_text("priorkit.gen3d.sds.x_loss__mutmut_1 same-dtype\n")
    with pytest.raises(ValueError, match="eq.tsv:1"):
        mutants.equivalents()
