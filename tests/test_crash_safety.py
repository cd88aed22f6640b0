"""Crash safety: `docsort ingest` killed with SIGKILL at random points, then re-run, stores every
page exactly once; the database is consistent after every kill (each document whole or absent),
the FAISS index never names a page the database lacks and equals it after the resume; writes are
transactions and files are replaced atomically (write, then rename).

The kill points are random; the seed is printed on failure and ``DOCSORT_CRASH_SEED=N`` replays it.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from docsort.core.index import index_ids, load_index
from docsort.store.storage import Collection

from .conftest import SAMPLE_DOCS, sample_labels
from .test_collection import _assert_consistent

DOCSORT = str(Path(sys.executable).with_name("docsort"))
ENV = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}
TEMP_FILES = tuple(f".{name}.*" for name in (Collection.INDEX, Collection.MANIFEST, Collection.MODELS))


def check_collection(root: Path, *, complete: bool) -> int:
    """Assert the invariants that must hold after any crash; returns the number of pages.

    Always: SQLite integrity; every document has exactly its ``n_pages`` pages, numbered 1..n,
    each with a thumbnail and a unit-norm vector of one common length; no page, thumbnail or path
    without its document; the index file, if any, loads and holds unique ids all in the database,
    with the database's vectors. With ``complete``: the index holds exactly the database's pages.
    """
    db = sqlite3.connect(root / Collection.DB)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        for doc, n, count, lo, hi in db.execute(
            "SELECT d.id, d.n_pages, COUNT(p.id), MIN(p.page_no), MAX(p.page_no) "
            "FROM documents d LEFT JOIN pages p ON p.document_id = d.id GROUP BY d.id"
        ):
            assert (count, lo, hi) == (n, 1, n), f"document {doc}: {count} of {n} pages stored"
        q = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
        assert q("SELECT COUNT(*) FROM pages WHERE document_id NOT IN (SELECT id FROM documents)") == 0
        assert q("SELECT COUNT(*) FROM pages WHERE id NOT IN (SELECT page_id FROM thumbnails)") == 0
        assert q("SELECT COUNT(*) FROM thumbnails WHERE page_id NOT IN (SELECT id FROM pages)") == 0
        assert q("SELECT COUNT(*) FROM documents WHERE id NOT IN (SELECT document_id FROM document_paths)") == 0
        assert q("SELECT COUNT(*) FROM document_paths WHERE document_id NOT IN (SELECT id FROM documents)") == 0
        rows = db.execute("SELECT id, vector FROM pages ORDER BY id").fetchall()
    finally:
        db.close()
    vectors = {pid: np.frombuffer(blob, np.float32) for pid, blob in rows}
    assert len({v.shape for v in vectors.values()}) <= 1
    for pid, v in vectors.items():
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-3, f"page {pid}: vector not whole"
    index_path = root / Collection.INDEX
    if index_path.exists() or complete:
        index = load_index(index_path)
        assert index is not None, "index file unreadable"
        ids = index_ids(index)
        assert len(np.unique(ids)) == len(ids), "an id twice in the index"
        assert set(ids.tolist()) <= set(vectors), "the index names a page the database lacks"
        if complete:
            assert sorted(ids.tolist()) == sorted(vectors)
        for pid in ids.tolist():
            np.testing.assert_allclose(index.reconstruct(int(pid)), vectors[pid], atol=1e-6)
    return len(vectors)


def _stored_pages(root: Path) -> int:
    try:
        with sqlite3.connect(f"file:{root / Collection.DB}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM pages").fetchone()[0]
    except sqlite3.Error:
        return 0


def _wait_group_gone(pgid: int, seconds: float = 15.0) -> bool:
    """True once no process of the killed ingest's process group is left (render workers)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_stores_every_page_once(tmp_path):
    seed = int(os.environ.get("DOCSORT_CRASH_SEED") or random.SystemRandom().randrange(1_000_000))
    rng = random.Random(seed)
    pipeline = tmp_path / "small-batches.toml"
    pipeline.write_text('[features]\nbatch_size = 4\nweights = "bundled"\n')
    col = tmp_path / "col"
    total = len(sample_labels())
    cmd = [DOCSORT, "ingest", str(SAMPLE_DOCS), "-c", str(col), "-p", str(pipeline), "--no-progress"]
    log, runs = [], []
    kills = 4
    for run in range(kills):
        before = _stored_pages(col)
        # Run 0 dies at a random moment of start-up (imports, lock, database creation, manifest);
        # the others once a random number of further pages is stored, plus a random few ms, so
        # they land inside embedding, a document's transaction, or the index write.
        at_time = rng.uniform(0.5, 6.0) if run == 0 else None
        # The targets stop 8 pages short of the end and the extra wait is short: with OpenVINO
        # bfloat16 the last documents are stored within a few tenths of a second, and a kill that
        # lands after them tests nothing.
        target = min(total - 8, before + rng.randint(1, 10)) if run else None
        extra = rng.uniform(0.0, 0.1)
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 240:
            if (at_time is not None and time.monotonic() - t0 >= at_time) or (
                target is not None and before < total - 1 and _stored_pages(col) >= target
            ):
                time.sleep(extra if target is not None else 0)
                proc.send_signal(signal.SIGKILL)  # the ingest process only, as the OOM killer does
                break
            time.sleep(0.02)
        proc.wait()
        stored = _stored_pages(col)
        runs.append((proc.returncode, before, stored))
        log.append(f"run {run}: exit {proc.returncode} at {time.monotonic() - t0:.1f} s, {before} -> {stored} pages")
        context = f"seed {seed}: " + "; ".join(log)
        assert _wait_group_gone(proc.pid), f"{context}: processes of the killed ingest are still running"
        if (col / Collection.DB).exists():
            assert check_collection(col, complete=False) == stored, context
    killed_mid_ingest = sum(1 for rc, _, stored in runs if rc == -signal.SIGKILL and 0 < stored < total)
    assert killed_mid_ingest >= 2, f"seed {seed}: " + "; ".join(log)

    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "0 failed" in res.stdout, f"seed {seed}: {res.stdout}\n{res.stderr}"
    assert check_collection(col, complete=True) == total
    counts = _assert_consistent(col)
    assert (counts["pages"], counts["documents"]) == (total, len({p for p, _ in sample_labels()}))
    with Collection(col) as c:
        assert set(zip(c.page_table()["path"], c.page_table()["page"])) == set(sample_labels())
    assert not [p for pattern in TEMP_FILES for p in col.glob(pattern)]


_KILLED_IN_A_TRANSACTION = """
import os, signal, sys
import numpy as np
from docsort.store.storage import Collection

class DiesWhenRead:  # a vector whose conversion kills the process mid-transaction
    shape = (int(sys.argv[2]),)
    def __array__(self, dtype=None, copy=None):
        os.kill(os.getpid(), signal.SIGKILL)

good = np.ones(int(sys.argv[2]), np.float32)
good /= np.linalg.norm(good)
col = Collection(sys.argv[1])
col.add_document(sha256="f" * 64, path="/crash/in-transaction.pdf", format="pdf", size_bytes=1,
                 pages=[(1, 10, 10, good, b"jpeg"), (2, 10, 10, good, b"jpeg"), (3, 10, 10, DiesWhenRead(), b"jpeg")])
"""


def test_a_document_killed_mid_transaction_leaves_nothing(collection_copy):
    with Collection(collection_copy) as col:
        before = col.counts()
        dim = col.vectors([1])[1].shape[1]
    res = subprocess.run([sys.executable, "-c", _KILLED_IN_A_TRANSACTION, str(collection_copy), str(dim)],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    with Collection(collection_copy) as col:
        assert col.counts() == before
        assert col.find_document("f" * 64) is None
    assert check_collection(collection_copy, complete=True) == before["pages"]


_KILLED_BEFORE_THE_RENAME = """
import os, signal, sys
from docsort.core import index as ix
from docsort.store import index_file
from docsort.config.settings import IndexSettings
from docsort.store.storage import Collection

col = Collection(sys.argv[1])
ids, vecs = col.vectors()
smaller = ix.build_index(ids[:5], vecs[:5], IndexSettings())
os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # die after write + fsync, before rename
index_file.save_index(smaller, col.root / Collection.INDEX)
"""


def test_the_index_file_is_replaced_atomically(collection_copy, settings, extractor):
    from docsort.jobs.ingest import ingest

    index_file = collection_copy / Collection.INDEX
    old = index_file.read_bytes()
    res = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_THE_RENAME, str(collection_copy)],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert index_file.read_bytes() == old  # the old index, whole, until the rename
    [tmp] = collection_copy.glob(f".{Collection.INDEX}.*")  # the new one was written aside
    assert load_index(tmp).ntotal == 5
    with Collection(collection_copy) as col:
        report = ingest(col, [SAMPLE_DOCS / "leptonica" / "map1.jpg"], settings, extractor=extractor,
                        progress=False, log=lambda m: None)
        assert report.pages_added == 0
    assert not [p for pattern in TEMP_FILES for p in collection_copy.glob(pattern)]  # the next writer cleans up
    _assert_consistent(collection_copy)
