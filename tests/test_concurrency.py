"""Concurrent use: a reader (what the UI does: counts, page table, search) keeps reading while a
CLI ingest writes; two ingests of overlapping folders started at once on a new collection both
succeed with no corruption and no duplicates, one waiting for the other; a writer that cannot get
the lock in time says the collection is busy. SQLite runs in WAL mode."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from docsort.core.index import index_ids, load_index
from docsort.jobs.ingest import ingest
from docsort.queries.search import search_page
from docsort.store.storage import Collection, CollectionBusyError

from .conftest import SAMPLE_DOCS, sample_labels
from .test_collection import _assert_consistent

DOCSORT = str(Path(sys.executable).with_name("docsort"))
ENV = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}


def _pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "small-batches.toml"
    path.write_text('[features]\nbatch_size = 4\nweights = "bundled"\n')
    return path


@pytest.mark.slow
def test_a_reader_sees_whole_documents_while_the_cli_ingests(tmp_path, settings):
    col = tmp_path / "col"
    writer = subprocess.Popen([DOCSORT, "ingest", str(SAMPLE_DOCS), "-c", str(col), "-p", str(_pipeline(tmp_path)), "--no-progress"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (col / Collection.MANIFEST).exists() and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    seen, searches = [], 0
    with Collection(col) as reader:  # opened once and kept, as the UI keeps its connection
        snapshot = sqlite3.connect(f"file:{col / Collection.DB}?mode=ro", uri=True, timeout=5)
        while time.monotonic() < deadline:
            done = writer.poll() is not None
            counts = reader.counts()
            table = reader.page_table()
            assert len(table) >= counts["pages"]  # pages only ever get added
            # One statement, one snapshot: no document is visible with part of its pages.
            partial = snapshot.execute(
                "SELECT COUNT(*) FROM documents d WHERE n_pages != (SELECT COUNT(*) FROM pages p WHERE p.document_id = d.id)"
            ).fetchone()[0]
            assert partial == 0
            # The index file is written after the rows it names: it never names a missing page.
            index = load_index(col / Collection.INDEX)
            if index is not None:
                assert set(index_ids(index).tolist()) <= set(reader.page_ids().tolist())
            if counts["pages"]:
                first = int(table["page_id"].iloc[0])
                hit = search_page(reader, first, settings, k=3).pages[0]
                assert hit.page_id == first and hit.score == pytest.approx(1.0, abs=1e-5)
                searches += 1
            seen.append(counts["pages"])
            if done:
                break
            time.sleep(0.05)
        snapshot.close()
        journal = reader.query("PRAGMA journal_mode")[0][0]
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    total = len(sample_labels())
    assert journal == "wal"
    assert seen == sorted(seen) and seen[-1] == total
    assert any(0 < n < total for n in seen), f"the reader never saw the ingest in progress: {seen}"
    assert searches > 0
    _assert_consistent(col)


@pytest.mark.slow
def test_two_overlapping_ingests_at_once_store_each_page_once(tmp_path):
    lep = SAMPLE_DOCS / "leptonica"
    shared = [lep / "bois-2-5.pdf", lep / "ortiz-02.png", lep / "pageseg1.png"]
    first = [SAMPLE_DOCS / "jbigkit", *shared, lep / "map1.jpg"]
    second = [*shared, SAMPLE_DOCS / "ocrmypdf", lep / "comap.063.jpg"]
    col = tmp_path / "col"
    pipeline = _pipeline(tmp_path)
    procs = [
        subprocess.Popen([DOCSORT, "ingest", *map(str, paths), "-c", str(col), "-p", str(pipeline), "--no-progress"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for paths in (first, second)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
    # One of them found the collection busy and waited (filelock), then went on.
    assert sum("is busy" in err for _, _, err in results) == 1, [err for _, _, err in results]

    labels = sample_labels()
    files = {str(p) for p in (*first, *second) if p.is_file()} | {
        path for path, _ in labels if any(path.startswith(str(d) + os.sep) for d in (*first, *second) if d.is_dir())
    }
    expected_pages = {(path, n) for path, n in labels if path in files}
    with Collection(col) as c:
        table = c.page_table()
        assert sorted(zip(table["path"], table["page"])) == sorted(expected_pages)  # each page once
        assert c.counts()["documents"] == len(files)
    added = sorted(int(out.split("ingested ", 1)[1].split(" documents", 1)[0]) for _, out, _ in results)
    already = sorted(int(out.split("; ", 1)[1].split(" already", 1)[0]) for _, out, _ in results)
    assert sum(added) == len(files)
    assert already == [0, len(shared)]  # the one that waited found the shared files stored
    _assert_consistent(col)


def test_a_busy_collection_is_a_clear_error(collection_copy, settings, extractor):
    one_file = SAMPLE_DOCS / "leptonica" / "map1.jpg"
    waited = []
    with Collection(collection_copy) as holder, holder.write_lock():
        with Collection(collection_copy) as col:
            t0 = time.monotonic()
            with pytest.raises(CollectionBusyError, match="is busy: another docsort process is writing"):
                ingest(col, [one_file], settings, extractor=extractor, progress=False, log=waited.append, lock_timeout_s=0.5)
            assert time.monotonic() - t0 < 10
            assert waited and "is busy" in waited[0] and "waiting up to" in waited[0]
        res = subprocess.run([DOCSORT, "ingest", str(one_file), "-c", str(collection_copy), "--lock-timeout", "1"],
                             env=ENV, capture_output=True, text=True, timeout=120)
        assert res.returncode == 3 and "is busy" in res.stderr, res.stderr
    # Once the lock is free, the same ingest goes through.
    with Collection(collection_copy) as col:
        report = ingest(col, [one_file], settings, extractor=extractor, progress=False, log=lambda m: None, lock_timeout_s=5)
        assert report.already_stored == 1 and report.failures == []
    _assert_consistent(collection_copy)
