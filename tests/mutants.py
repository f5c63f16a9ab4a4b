"""Mutation testing (mutmut 3) of the core formula files: ``make mutants`` runs this.

mutmut names a mutant after its file's path (``priorkit/distill/core/schedule.py`` -> module
``priorkit.distill.core.schedule``) and matches it against the module the tests import. The repository keeps the
design card's folders (``distill/``, ...) and installs them as ``priorkit.distill`` through setuptools'
package-dir, so the paths and the import names differ; mutmut run in the repository would mutate ``distill.*`` while
the tests import the editable install's unmutated ``priorkit.distill.*``. This script stages the installed layout
(``priorkit/{distill,gen3d,inverse,apps}`` plus ``tests/``, ``benchmarks/`` and ``pyproject.toml``) in
``outputs/mutmut/`` and runs ``mutmut run`` there; mutmut then puts its ``mutants/priorkit`` first on sys.path, ahead
of the editable finder.

Usage:
    python tests/mutants.py                       # every file of [tool.mutmut] only_mutate, its test selection
    python tests/mutants.py --only priorkit/distill/core/prediction.py --tests tests/test_core.py
    python tests/mutants.py --results             # print mutmut's results of the last run

Configuration is ``[tool.mutmut]`` in pyproject.toml, with paths as staged (``priorkit/distill/...``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "outputs" / "mutmut"
PACKAGES = {"distill": "distill", "gen3d": "gen3d", "inverse": "inverse", "apps": "apps"}
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="files to mutate (staged paths), overriding only_mutate")
    parser.add_argument("--tests", nargs="+", help="test files to run, overriding the test selection")
    parser.add_argument("--max-children", type=int, default=1, help="parallel test processes (default 1)")
    parser.add_argument("--results", action="store_true", help="show the last run's results instead of running")
    args = parser.parse_args()
    mutmut = [str(Path(sys.executable).with_name("mutmut"))]
    if args.results:
        return subprocess.call(mutmut + ["results", "--all", "true"], cwd=STAGE)
    stage(args.only, args.tests)
    return subprocess.call(mutmut + ["run", "--max-children", str(args.max_children)], cwd=STAGE,
                           env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


if __name__ == "__main__":
    sys.exit(main())
