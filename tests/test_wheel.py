"""The wheel is the product (issue 12): a non-editable install from a wheel runs the main job, a
pipeline from ``pipelines/`` and the app, outside the source tree, and says nothing from TensorFlow.

The test builds the wheel from a copy of the repository (``pip wheel``, build isolation: setuptools
from the package index), installs it with ``--no-deps`` into a fresh venv in a temporary folder, and
lets that venv see this environment's already-installed dependencies through a ``.pth`` line (so no
second TensorFlow is installed; the editable docsort of this environment stays invisible, checked).
From a folder that is not the repository it then runs ``docsort ingest --pipeline ocr`` on
sample_docs, ``docsort cluster`` and ``docsort ui``, whose health endpoint must answer and whose
first page must render in Chromium.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO, SAMPLE_DOCS
from .test_browser import ARTIFACTS, CHROMIUM, _browser_page, _serve

pytestmark = pytest.mark.slow

#: What TensorFlow, absl or Keras print when they are not kept quiet (issue 12).
NOISE = ("I0000", "E0000", "W0000", "oneDNN", "cuda", "cuInit", "absl::InitializeLog", "Downloading data from", "cpu_feature_guard")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 900), **kw)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "test-artifacts", "docsort-collection", "benchmarks"))
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(root / "dist"), str(src)])
    assert built.returncode == 0, built.stdout + built.stderr
    (whl,) = (root / "dist").glob("docsort-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for needed in ("docsort/faces/app.py", "docsort/pipelines/default.toml", "docsort/pipelines/ocr.toml",
                   "docsort/weights/inception_v3_mixed1_nsfwjs.weights.h5"):
        assert needed in names, f"{whl.name} lacks {needed}"
    assert {f"docsort/pipelines/{p.name}" for p in (REPO / "pipelines").glob("*.toml")} <= names

    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    inst = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(whl)])
    assert inst.returncode == 0, inst.stdout + inst.stderr
    # This environment's dependencies (TensorFlow, Streamlit, ...), after the venv's own site-packages.
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(purelib, "zz_docsort_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    where = _run([str(py), "-c", "import docsort, docsort.faces; print(docsort.__file__)"], cwd=root)
    assert where.returncode == 0 and where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    return venv


def test_a_wheel_install_runs_a_pipeline_the_cluster_table_and_the_app(wheel_venv, tmp_path):
    docsort = str(wheel_venv / "bin" / "docsort")
    work = tmp_path / "elsewhere"  # not the repository: no ./pipelines, no app.py
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DOCSORT_PIPELINES", "TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH")}
    env["DOCSORT_OFFLINE"] = "1"
    col = work / "collection"

    ingest = _run([docsort, "ingest", str(SAMPLE_DOCS), "--pipeline", "ocr", "-c", str(col)], cwd=work, env=env)
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    assert "41 pages" in " ".join(ingest.stdout.split())
    clustered = _run([docsort, "cluster", "-c", str(col)], cwd=work, env=env)
    assert clustered.returncode == 0, clustered.stdout + clustered.stderr
    assert "clusters:" in clustered.stdout
    for run in (ingest, clustered):  # a quiet terminal: docsort's own lines only
        for word in NOISE:
            assert word not in run.stdout + run.stderr, (word, run.stdout + run.stderr)

    import json

    from docsort.store.storage import Collection

    manifest = json.loads((col / Collection.MANIFEST).read_text())
    assert manifest["pipeline"]["name"] == "ocr" and manifest["pipeline"]["ocr"]["enabled"] is True
    assert manifest["machine"]["cores"] >= 1 and "cpu" in manifest["machine"]
    with Collection(col) as c:
        assert c.counts()["pages"] == 41
        assert c.text_counts()["pages_with_text"] == 41

    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): the app's first page cannot be rendered")
    from playwright.sync_api import expect

    with _serve(col, "streamlit-wheel.log", docsort=[docsort], cwd=work, env=env) as url:  # health endpoint answered "ok"
        with _browser_page("wheel-") as (page, shot):
            page.goto(url)
            main = page.get_by_test_id("stMain")
            expect(main.get_by_role("heading", name="Clusters")).to_be_visible(timeout=90_000)
            expect(page.get_by_test_id("stSidebar").get_by_text("30 documents · 41 pages")).to_be_visible()
            # Rendered: the clusters' representative thumbnails have arrived and decoded.
            page.wait_for_function("() => document.images.length >= 6 && "
                                   "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)", timeout=90_000)
            shot("01-first-page")
            assert not page.get_by_test_id("stException").count()
    log = (ARTIFACTS / "streamlit-wheel.log").read_text(errors="replace")
    for word in NOISE:
        assert word not in log, (word, log[-2000:])
