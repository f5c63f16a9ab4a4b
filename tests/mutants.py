"""Mutation testing (mutmut 3) of the core formula files: ``make mutants`` runs this.

mutmut names a mutant after its file's path (``priorkit/distill/core/schedule.py`` -> module
``priorkit.distill.core.schedule``) and matches it against the module the tests import. The repository keeps the
design card's folders (``distill/``, ...) and installs them as ``priorkit.distill`` through setuptools'
package-dir, so the paths and the import names differ; mutmut run in the repository would mutate ``distill.*`` while
the tests import the editable install's unmutated ``priorkit.distill.*``. This script stages the installed layout
(``priorkit/{distill,gen3d,inverse,apps}`` plus ``tests/``, ``benchmarks/`` and ``pyproject.toml``) in
``outputs/mutmut/`` and runs ``mutmut run`` there; mutmut then puts its ``mutants/priorkit`` first on sys.path, ahead
of the editable finder.

mutmut picks, per mutant, the selected tests that call the mutated function; a schedule or sampler function is called
by nearly every test, so one selection for every file runs slow trainings for the core's mutants (a single run
of all the files took over 40 minutes for 88% of them). ``make mutants`` therefore runs the groups of
``[tool.priorkit.mutants]``: each a set of files with the fast value tests written for them, one mutmut run each,
results kept per group in ``outputs/mutmut-results/`` (with the survivors' diffs) and summed per file at the end.

Usage:
    python tests/mutants.py --groups              # every group of [tool.priorkit.mutants] (make mutants)
    python tests/mutants.py                       # [tool.mutmut] only_mutate with its test selection, one run
    python tests/mutants.py --only priorkit/distill/core/prediction.py --tests tests/test_core.py
    python tests/mutants.py --results             # print mutmut's results of the last run
    python tests/mutants.py --summary             # the per-file table of the last --groups run
    python tests/mutants.py --unexplained         # the saved survivors neither killed nor listed as equivalent

A survivor is *explained* when ``tests/mutants_equivalent.tsv`` lists it (name, reason, and the mutated line as
``mutmut show`` gives it: a renumbered or changed mutant no longer matches and counts as unexplained again).

Configuration is ``[tool.mutmut]`` and ``[tool.priorkit.mutants]`` in pyproject.toml, with paths as staged
(``priorkit/distill/...``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "outputs" / "mutmut"
RESULTS = ROOT / "outputs" / "mutmut-results"
MUTMUT = [str(Path(sys.executable).with_name("mutmut"))]
PACKAGES = {"distill": "distill", "gen3d": "gen3d", "inverse": "inverse", "apps": "apps"}
EQUIVALENT = ROOT / "tests" / "mutants_equivalent.tsv"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants", "*.png", "training_log*.json")


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def staged_pyproject(only: list[str] | None, tests: list[str] | None) -> str:
    """pyproject.toml with its [tool.mutmut] table rewritten (overrides applied); everything else unchanged."""
    text = (ROOT / "pyproject.toml").read_text()
    config = dict(tomllib.loads(text)["tool"]["mutmut"])
    if only:
        config["only_mutate"] = only
    if tests:
        config["pytest_add_cli_args_test_selection"] = tests
    head, _, rest = text.partition("[tool.mutmut]")
    tail = rest[rest.find("\n[") + 1:] if "\n[" in rest else ""
    lines = ["[tool.mutmut]"]
    for key, value in config.items():
        lines.append(f"{key} = {toml_list(value) if isinstance(value, list) else repr(value).lower()}"
                     if isinstance(value, list | bool) else f"{key} = {value!r}")
    return head + "\n".join(lines) + "\n\n" + tail


def stage(only: list[str] | None, tests: list[str] | None) -> None:
    """Copy the sources into the installed layout under ``outputs/mutmut`` (mutmut's old ``mutants/`` is dropped)."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    (STAGE / "priorkit").mkdir(parents=True)
    shutil.copy2(ROOT / "priorkit" / "__init__.py", STAGE / "priorkit" / "__init__.py")
    for folder, name in PACKAGES.items():
        shutil.copytree(ROOT / folder, STAGE / "priorkit" / name, ignore=IGNORE)
    for folder in ("tests", "benchmarks"):
        shutil.copytree(ROOT / folder, STAGE / folder, ignore=IGNORE)
    (STAGE / "pyproject.toml").write_text(staged_pyproject(only, tests))


def run(only: list[str] | None, tests: list[str] | None, children: int) -> int:
    """Stage and run mutmut once (``only`` / ``tests`` override [tool.mutmut]); mutmut's exit code."""
    stage(only, tests)
    return subprocess.call(MUTMUT + ["run", "--max-children", str(children)], cwd=STAGE,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})


def results_text() -> str:
    """`mutmut results --all true` of the staged run: one "module.x_function__mutmut_N: status" per line."""
    done = subprocess.run(MUTMUT + ["results", "--all", "true"], cwd=STAGE, capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"mutmut results failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def survivor_diffs(text: str) -> str:
    """`mutmut show` of every mutant not killed in :func:`results_text` output (the stage is replaced by the next
    group's, so a group's survivors are kept here for triage)."""
    out = []
    for name, status in statuses(text):
        if status not in ("killed", "timeout"):
            shown = subprocess.run(MUTMUT + ["show", name], cwd=STAGE, capture_output=True, text=True).stdout
            out.append(f"### {name}: {status}\n{shown}")
    return "\n".join(out)


def changed_lines(diff: str) -> str:
    """The mutated line(s) of one mutant's diff: its "+" lines, stripped, joined by " / " (a mutant's fingerprint)."""
    return " / ".join(line[1:].strip() for line in diff.splitlines() if line.startswith("+") and
                      not line.startswith("+++"))


def saved_survivors(groups: list[str] | None = None) -> dict[str, str]:
    """Mutant name -> mutated line, of every survivor in the saved ``<group>-survivors.diff`` files (of ``groups``)."""
    out = {}
    paths = [RESULTS / f"{g}-survivors.diff" for g in groups] if groups else sorted(RESULTS.glob("*-survivors.diff"))
    for path in (p for p in paths if p.is_file()):
        for block in ("\n" + path.read_text()).split("\n### ")[1:]:  # each block starts a line
            name = block.partition(":")[0].strip()
            out[name] = changed_lines(block)
    return out


def equivalents(path: Path | None = None) -> dict[str, tuple[str, str]]:
    """Mutant name -> (reason key, mutated line) from the equivalents file. Lines: "# comment",
    "@key<TAB>why mutants of this kind change nothing observable", "name<TAB>key<TAB>mutated line". A key starting
    with "open-" records a survivor that is *not* equivalent and not yet killed (the reason says what would kill it):
    it stays unexplained.

    Raises:
        ValueError: on a malformed line, a mutant listed twice, an empty mutated line or a reason key that no "@"
            line defines.
    """
    path = path or EQUIVALENT
    reasons, listed = {}, {}
    for number, line in enumerate(path.read_text().splitlines() if path.is_file() else [], 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if line.startswith("@") and len(fields) == 2:
            reasons[fields[0][1:]] = fields[1]
        elif len(fields) == 3 and not line.startswith("@") and fields[2].strip():
            if fields[0] in listed:
                raise ValueError(f"{path.name}:{number}: {fields[0]} is listed twice")
            listed[fields[0]] = (fields[1], fields[2])
        else:
            raise ValueError(f"{path.name}:{number}: expected '@key<TAB>reason' or 'mutant<TAB>key<TAB>line' "
                             "(a non-empty mutated line)")
    if unknown := sorted({key for key, _ in listed.values()} - set(reasons)):
        raise ValueError(f"{path.name}: reason key(s) {unknown} not defined by an '@' line")
    return listed


def unexplained(survivors: dict[str, str], listed: dict[str, tuple[str, str]]) -> list[str]:
    """Survivors the equivalents file does not list with the same (non-empty) mutated line under a key that is not
    "open-"."""
    return [name for name, line in survivors.items()
            if not line or name not in listed or listed[name][1] != line or listed[name][0].startswith("open-")]


def statuses(text: str) -> list[tuple[str, str]]:
    """(mutant name, status) of every line of :func:`results_text` output."""
    pairs = (line.strip().rpartition(": ") for line in text.splitlines())
    return [(name, status) for name, sep, status in pairs if sep]


def tally(text: str) -> dict[str, collections.Counter]:
    """Statuses per mutated module from :func:`results_text` output."""
    by: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, status in statuses(text):
        by[re.sub(r"\.x[_ǁ].*$", "", name)][status] += 1
    return by


def summary(groups: list[str] | None = None) -> str:
    """The per-file table of the saved results of ``groups`` (default: every saved group): score = (killed +
    timeout) / all mutants; "other" holds what is neither (mutmut's "segfault" for a kill at the hard CPU limit,
    "suspicious", "not checked", ...), counted as not killed."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    by: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    paths = [RESULTS / f"{g}.txt" for g in groups] if groups else sorted(RESULTS.glob("*.txt"))
    for path in paths:
        for module, counts in tally(path.read_text()).items():
            by[module].update(counts)
    survivors, listed = saved_survivors(groups), equivalents()
    left = set(unexplained(survivors, listed))
    for name in set(survivors) - left:
        by[re.sub(r"\.x[_ǁ].*$", "", name)]["explained"] += 1
    rows = [f"{'file':52s} {'mutants':>7s} {'killed':>7s} {'timeout':>7s} {'survived':>8s} {'no tests':>8s} "
            f"{'other':>6s} {'score':>6s} {'explained':>9s}"]
    total: collections.Counter = collections.Counter()
    for module in sorted(by):
        rows.append(_row(module, by[module]))
        total.update(by[module])
    rows.append(_row("all", total))
    rows.append(f"survivors neither killed nor explained in {EQUIVALENT.name}: {len(left)} (--unexplained lists them)")
    (RESULTS / "summary.json").write_text(json.dumps({m: dict(c) for m, c in {**by, "all": total}.items()}, indent=1))
    return "\n".join(rows)


def _row(name: str, c: collections.Counter) -> str:
    n = sum(c.values()) - c["explained"]
    other = n - c["killed"] - c["timeout"] - c["survived"] - c["no tests"]
    score = 100.0 * (c["killed"] + c["timeout"]) / max(n, 1)
    return (f"{name:52s} {n:7d} {c['killed']:7d} {c['timeout']:7d} {c['survived']:8d} {c['no tests']:8d} "
            f"{other:6d} {score:5.1f}% {c['explained']:9d}")


def run_groups(children: int, names: list[str] | None) -> int:
    """Every group of [tool.priorkit.mutants] (or those ``names``): one mutmut run each, results saved per group."""
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["priorkit"]["mutants"]["groups"]
    known = [g["name"] for g in groups]
    if unknown := [n for n in names or [] if n not in known]:
        print(f"unknown group(s) {unknown}; the groups are {known}", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    ran = []
    for group in groups:
        if names and group["name"] not in names:
            continue
        print(f"== mutants: group {group['name']} ({len(group['files'])} paths, {len(group['tests'])} test files)",
              flush=True)
        code = run(group["files"], group["tests"], children)
        if code != 0:
            print(f"group {group['name']}: mutmut exited with {code}", file=sys.stderr)
            return code
        text = results_text()
        (RESULTS / f"{group['name']}.txt").write_text(text)
        (RESULTS / f"{group['name']}-survivors.diff").write_text(survivor_diffs(text))
        ran.append(group["name"])
    print(summary(ran))  # this run's groups only (--summary: every saved group)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="files to mutate (staged paths), overriding only_mutate")
    parser.add_argument("--tests", nargs="+", help="test files to run, overriding the test selection")
    parser.add_argument("--max-children", type=int, default=1, help="parallel test processes (default 1)")
    parser.add_argument("--results", action="store_true", help="show the last run's results instead of running")
    parser.add_argument("--groups", nargs="*", default=None,
                        help="run the groups of [tool.priorkit.mutants] (all, or those named)")
    parser.add_argument("--summary", action="store_true", help="the per-file table of the last --groups run")
    parser.add_argument("--unexplained", action="store_true",
                        help="list the saved survivors that tests/mutants_equivalent.tsv does not explain")
    args = parser.parse_args()
    if args.results:
        return subprocess.call(MUTMUT + ["results", "--all", "true"], cwd=STAGE)
    if args.summary:
        print(summary())
        return 0
    if args.unexplained:
        survivors, listed = saved_survivors(), equivalents()
        left = unexplained(survivors, listed)
        stale = sorted(set(listed) - set(survivors))
        print("".join(f"{name}: {survivors[name]}\n" for name in left) + f"{len(left)} survivors not explained")
        if stale:
            print(f"{len(stale)} listed mutants did not survive the saved runs (killed now, or renumbered: remove or "
                  "re-key them):\n" + "\n".join(stale))
        return 1 if left or stale else 0
    if args.groups is not None:
        return run_groups(args.max_children, args.groups)
    return run(args.only, args.tests, args.max_children)


if __name__ == "__main__":
    sys.exit(main())
