"""The `docsort` console script, run as a user runs it (subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import SAMPLE_DOCS, sample_labels
from .test_collection import _assert_consistent

DOCSORT = str(Path(sys.executable).with_name("docsort"))


def run(*args, env=None, check=None, timeout=300):
    e = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200", **(env or {})}
    res = subprocess.run([DOCSORT, *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout)
    if check is not None:
        assert res.returncode == check, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


def test_help_everywhere():
    res = run("--help", check=0)
    for cmd in ("ingest", "cluster", "search", "info", "export", "rename", "ui"):
        assert cmd in res.stdout
        assert "Usage" in run(cmd, "--help", check=0).stdout


@pytest.mark.slow
def test_ingest_cluster_search_info_export_end_to_end(tmp_path):
    scans = tmp_path / "scans"
    shutil.copytree(SAMPLE_DOCS / "leptonica", scans, ignore=shutil.ignore_patterns("*.jpg"))
    env = {"DOCSORT_COLLECTION": str(tmp_path / "col")}  # the collection from the environment
    expected = [n for (path, n) in sample_labels() if "/leptonica/" in path and not path.endswith(".jpg")]
    n_docs, n_pages = expected.count(1), len(expected)
    res = run("ingest", scans, env=env, check=0)
    assert f"ingested {n_docs} documents, {n_pages} pages" in res.stdout
    assert "bundled" in res.stderr  # offline weights are announced, never silent
    again = run("ingest", scans, env=env, check=0)
    assert "ingested 0 documents, 0 pages" in again.stdout and f"{n_docs} already in the collection" in again.stdout

    res = run("cluster", env=env, check=0)
    assert "clusters" in res.stdout and "pages noise" in res.stdout

    res = run("search", scans / "bois-2-5.pdf", "-k", "3", "--json", env=env, check=0)
    hits = json.loads(res.stdout)
    firsts = [h for h in hits["pages"] if h["rank"] == 1]
    assert len(firsts) == 4 and all(h["path"].endswith("bois-2-5.pdf") and h["score"] > 0.999 for h in firsts)
    assert all(isinstance(h["cluster"], int) for h in hits["pages"])

    data = json.loads(run("info", "--json", env=env, check=0).stdout)
    assert (data["documents"], data["pages"], data["weights_source"]) == (n_docs, n_pages, "bundled")
    assert data["clusters"] >= 1

    run("export", tmp_path / "pages.csv", env=env, check=0)
    header = (tmp_path / "pages.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["path", "page", "sha256", "cluster", "cluster_name", "document_cluster", "umap_x"]


@pytest.mark.slow
def test_failures_give_nonzero_exit_and_name_the_file(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(SAMPLE_DOCS / "leptonica" / "map1.jpg", scans)
    (scans / "broken.pdf").write_bytes(b"%PDF-1.4\n% truncated")
    res = run("ingest", scans, "-c", tmp_path / "col", check=1)
    assert "broken.pdf" in res.stderr and "1 failed" in res.stdout and "ingested 1 documents" in res.stdout
    assert run("info", "-c", tmp_path / "missing").returncode == 2
    res = run("ingest", scans, "-c", tmp_path / "col", "--pipeline", "nonexistent", check=2)
    assert "pipeline 'nonexistent' not found" in res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[features]\npooling = "gap"\nunknown_key = 1\n')
    res = run("ingest", scans, "-c", tmp_path / "col", "--pipeline", bad, check=2)
    assert "unknown_key" in res.stderr
    res = run("ingest", scans, "-c", tmp_path / "col", "--weights", "random", check=2)
    assert "refusing to mix" in res.stderr


@pytest.mark.slow
def test_missing_poppler_is_a_clear_error(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent)}  # the venv's bin only: no pdftoppm
    res = run("ingest", SAMPLE_DOCS / "leptonica" / "bois-2-5.pdf", "-c", tmp_path / "col", env=env, check=3)
    assert "poppler is not installed" in res.stderr and "apt-get install poppler-utils" in res.stderr


@pytest.mark.slow
def test_sigkill_mid_ingest_then_resume_stores_every_page_once(tmp_path):
    pipeline = tmp_path / "small-batches.toml"
    pipeline.write_text('[features]\nbatch_size = 4\nweights = "bundled"\n')
    col = tmp_path / "col"
    e = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([DOCSORT, "ingest", SAMPLE_DOCS, "-c", col, "-p", pipeline, "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=e)
    deadline = time.time() + 120
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(col / "docsort.sqlite", timeout=5) as db:
                stored = db.execute("SELECT COUNT(*) FROM pages").fetchone()[0]
        except sqlite3.Error:
            stored = 0
        if stored >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "ingest finished before it could be killed"
    res = run("ingest", SAMPLE_DOCS, "-c", col, "-p", pipeline, check=0)
    assert "0 failed" in res.stdout
    counts = _assert_consistent(col)
    assert counts["pages"] == 41 and counts["documents"] == 30
