"""The layer rules of README "How it works" hold: import-linter's contracts in pyproject.toml
(layers import one way; only the feature stage imports Keras / TensorFlow / TF Hub; only the store
imports sqlite3; the faces reach SQL repositories and compute stages only through jobs and queries)
are all kept, no SQL runs outside the store, and no two modules import each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


def _lint_imports() -> list[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("lint-imports")
    if found is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    return [found]


def test_import_linter_contracts_are_kept():
    res = subprocess.run([*_lint_imports(), "--config", str(REPO / "pyproject.toml")], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "0 broken" in out, out
    # every contract of pyproject.toml was checked, not an empty config
    assert out.count(" KEPT") >= 4, out


def test_a_broken_layer_rule_is_reported(tmp_path):
    # The check can fail: a copy of the package in which the store imports a job breaks the layers contract.
    pkg = tmp_path / "docsort"
    shutil.copytree(REPO / "docsort", pkg, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    bad = pkg / "store" / "storage.py"
    bad.write_text(bad.read_text() + "\n\ndef _bad():\n    from docsort.jobs import ingest  # noqa: F401\n")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    res = subprocess.run([*_lint_imports(), "--config", str(tmp_path / "pyproject.toml"), "--no-cache"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "docsort.store.storage -> docsort.jobs.ingest" in out, out


def test_only_the_store_runs_sql():
    # sqlite3 is kept out of the other layers by import-linter; SQL passed through Collection.query /
    # transaction would bypass that, so no module outside docsort/store calls them.
    import re

    calls = re.compile(r"\.(query|transaction|execute|executemany)\(")
    found = []
    for path in sorted((REPO / "docsort").rglob("*.py")):
        if path.parent.name == "store":
            continue
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if calls.search(line) and "KDTree" not in line:  # KDTree.query: scikit-learn's neighbour search, not SQL
                found.append(f"{path.relative_to(REPO)}:{no}: {line.strip()}")
    assert found == [], "\n".join(found)


def test_no_import_cycle_between_modules():
    # Issue 15 broke the circle pipeline -> classify -> browse -> pipeline; no two modules of the
    # package may reach each other (lazy imports inside functions count: grimp sees them too).
    import itertools

    grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (pip install -e '.[test]')")
    graph = grimp.build_graph("docsort")
    modules = sorted(m for m in graph.modules if m.startswith("docsort.") and not m.endswith("__init__"))
    cycles = [(a, b) for a, b in itertools.combinations(modules, 2)
              if graph.chain_exists(importer=a, imported=b) and graph.chain_exists(importer=b, imported=a)
              and not (a.startswith(b + ".") or b.startswith(a + "."))]
    assert cycles == [], cycles
