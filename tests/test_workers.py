"""Rasterization worker processes behave when docsort is called from a user's plain script."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from .conftest import SAMPLE_DOCS, sample_labels

# The fast tier (pytest -m "not slow") leaves this file out: it ingests with spawn-ed worker processes in a subprocess.
pytestmark = pytest.mark.slow


def test_a_script_without_a_main_guard_ingests_with_worker_processes(tmp_path):
    # Under `spawn`, each worker would re-run an unguarded script (loading TensorFlow and starting
    # an ingest of its own); docsort starts its workers without the caller's __main__.
    script = tmp_path / "my_script.py"
    script.write_text(textwrap.dedent(f"""
        from docsort.jobs.ingest import ingest
        from docsort.config.settings import load_pipeline
        from docsort.store.storage import Collection

        s = load_pipeline("default").with_overrides(weights="bundled")
        s = s.model_copy(update={{"render": s.render.model_copy(update={{"workers": 2, "pdf_chunk_pages": 2}})}})
        print("SCRIPT BODY RAN")
        with Collection({str(tmp_path / "col")!r}, create=True) as col:
            r = ingest(col, [{str(SAMPLE_DOCS / "leptonica")!r}], s, progress=False)
        print("RESULT", r.documents_added, r.pages_added, len(r.failures))
    """))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env={"DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("SCRIPT BODY RAN") == 1  # no worker re-ran it
    pages = [path for path, _ in sample_labels() if "/leptonica/" in path]
    assert f"RESULT {len(set(pages))} {len(pages)} 0" in res.stdout
    assert "worker" not in res.stderr  # neither crashed workers nor the in-process fallback
