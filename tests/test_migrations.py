"""Numbered schema migrations on ``PRAGMA user_version`` (docsort.store.storage.MIGRATIONS), and the
store's connection per thread and nested, serialised transactions.

The collections of docsort before numbered migrations are built here with their own SQL, copied
from the schema of the commit that made them (schema 1: the docsort spine, f710913; schema 3: the
last one probed with ``PRAGMA table_info``, as on main before issue 15's store work), so the
upgrade is tested on what such a docsort left on disk: user_version 0 and
``meta.schema_version``.
"""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

from docsort.store.storage import MIGRATIONS, SCHEMA_VERSION, Collection, CollectionError

#: The schema-1 tables exactly as docsort f710913 created them.
SCHEMA_1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE documents(id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, path TEXT NOT NULL, format TEXT NOT NULL,
    size_bytes INTEGER NOT NULL, n_pages INTEGER NOT NULL, added_at TEXT NOT NULL);
CREATE TABLE document_paths(document_id INTEGER NOT NULL REFERENCES documents(id), path TEXT NOT NULL,
    seen_at TEXT NOT NULL, PRIMARY KEY(document_id, path));
CREATE TABLE pages(id INTEGER PRIMARY KEY, document_id INTEGER NOT NULL REFERENCES documents(id), page_no INTEGER NOT NULL,
    width_px INTEGER NOT NULL, height_px INTEGER NOT NULL, vector BLOB NOT NULL, UNIQUE(document_id, page_no));
CREATE TABLE thumbnails(page_id INTEGER PRIMARY KEY REFERENCES pages(id), jpeg BLOB NOT NULL);
CREATE TABLE page_clusters(page_id INTEGER PRIMARY KEY REFERENCES pages(id), cluster INTEGER NOT NULL,
    probability REAL NOT NULL, umap_x REAL NOT NULL, umap_y REAL NOT NULL, run_id INTEGER NOT NULL);
CREATE TABLE clusters(id INTEGER PRIMARY KEY, name TEXT, user_named INTEGER NOT NULL DEFAULT 0);
CREATE TABLE cluster_runs(id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, settings TEXT NOT NULL, n_pages INTEGER NOT NULL,
    n_clusters INTEGER NOT NULL, n_noise INTEGER NOT NULL, seconds REAL NOT NULL);
CREATE TABLE failures(path TEXT PRIMARY KEY, reason TEXT NOT NULL, at TEXT NOT NULL);
INSERT INTO meta VALUES('schema_version', '1');
"""

#: What schema 3 added to schema 1 (docsort a6107b9 and 10e6388), as their CREATE, ALTER and
#: UPDATE statements left it; staged_vectors (docsort adapt) came later without a version bump.
SCHEMA_3_EXTRA = """
ALTER TABLE page_clusters ADD COLUMN membership TEXT NOT NULL DEFAULT 'member';
UPDATE page_clusters SET membership = 'noise' WHERE cluster < 0;
ALTER TABLE cluster_runs ADD COLUMN n_reassigned INTEGER NOT NULL DEFAULT 0;
CREATE TABLE page_labels(page_id INTEGER PRIMARY KEY REFERENCES pages(id), type TEXT NOT NULL,
    source TEXT NOT NULL CHECK(source IN ('page', 'cluster')), cluster INTEGER, who TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE page_predictions(page_id INTEGER PRIMARY KEY REFERENCES pages(id), type TEXT NOT NULL, probability REAL NOT NULL,
    similarity REAL, unsure INTEGER NOT NULL, threshold REAL NOT NULL, model_version TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE page_text(page_id INTEGER PRIMARY KEY REFERENCES pages(id), text TEXT NOT NULL, confidence REAL,
    n_words INTEGER NOT NULL, lang TEXT NOT NULL, engine TEXT NOT NULL, long_side_px INTEGER NOT NULL,
    seconds REAL NOT NULL, error TEXT, at TEXT NOT NULL);
UPDATE meta SET value = '3' WHERE key = 'schema_version';
"""

FTS_3 = (
    "CREATE VIRTUAL TABLE page_text_fts USING fts5(text, content='page_text', content_rowid='page_id', "
    "tokenize='porter unicode61 remove_diacritics 2')",
    "CREATE TRIGGER page_text_ai AFTER INSERT ON page_text BEGIN "
    "INSERT INTO page_text_fts(rowid, text) VALUES (new.page_id, new.text); END",
    "CREATE TRIGGER page_text_ad AFTER DELETE ON page_text BEGIN "
    "INSERT INTO page_text_fts(page_text_fts, rowid, text) VALUES ('delete', old.page_id, old.text); END",
    "CREATE TRIGGER page_text_au AFTER UPDATE ON page_text BEGIN "
    "INSERT INTO page_text_fts(page_text_fts, rowid, text) VALUES ('delete', old.page_id, old.text); "
    "INSERT INTO page_text_fts(rowid, text) VALUES (new.page_id, new.text); END",
)

DIM = 8


def _legacy(root, schema: int):
    """A collection as docsort of ``schema`` (1 or 3) left it: 2 documents, 3 pages, a clustering
    run with one noise page, a user-named cluster (and, for 3, a label and OCR text)."""
    root.mkdir()
    db = sqlite3.connect(root / Collection.DB, isolation_level=None)
    db.executescript(SCHEMA_1)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3, DIM)).astype(np.float32)
    db.execute("INSERT INTO documents VALUES(1, 'aa', '/x/a.pdf', 'pdf', 10, 2, 't0')")
    db.execute("INSERT INTO documents VALUES(2, 'bb', '/x/b.png', 'png', 20, 1, 't0')")
    db.execute("INSERT INTO document_paths VALUES(1, '/x/a.pdf', 't0'), (2, '/x/b.png', 't0')")
    for pid, (doc, no) in enumerate([(1, 1), (1, 2), (2, 1)], start=1):
        db.execute("INSERT INTO pages VALUES(?, ?, ?, 100, 200, ?)", (pid, doc, no, vecs[pid - 1].tobytes()))
        db.execute("INSERT INTO thumbnails VALUES(?, ?)", (pid, b"jpeg%d" % pid))
    db.execute("INSERT INTO cluster_runs VALUES(1, 't1', '{}', 3, 1, 1, 0.5)")
    db.execute("INSERT INTO page_clusters VALUES(1, 0, 0.9, 0, 0, 1), (2, 0, 0.8, 1, 1, 1), (3, -1, 0.0, 2, 2, 1)")
    db.execute("INSERT INTO clusters VALUES(0, 'Deeds', 1)")
    if schema == 3:
        db.executescript(SCHEMA_3_EXTRA)
        for stmt in FTS_3:
            db.execute(stmt)
        db.execute("INSERT INTO page_labels VALUES(1, 'deed', 'page', NULL, 'ui', 't2')")
        db.execute("INSERT INTO page_text VALUES(2, 'indenture witnesseth', 90, 2, 'eng', 'tesseract 5', 1000, 0.1, NULL, 't2')")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    return vecs


def test_migrations_are_numbered_in_order_and_say_what_they_add():
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert SCHEMA_VERSION == MIGRATIONS[-1].version
    assert all(m.description.startswith(f"Schema {m.version} ") for m in MIGRATIONS)


def test_a_new_collection_gets_every_migration(tmp_path):
    with Collection(tmp_path / "c", create=True) as col:
        assert col.schema_version() == SCHEMA_VERSION
        tables = {r[0] for r in col.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"documents", "pages", "page_labels", "page_text", "page_text_fts", "staged_vectors"} <= tables
        assert col.query("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]


@pytest.mark.parametrize("schema", [1, 3])
def test_a_collection_of_docsort_before_numbered_migrations_is_upgraded_without_loss(tmp_path, schema):
    root = tmp_path / "old"
    vecs = _legacy(root, schema)
    with Collection(root) as col:
        assert col.schema_version() == SCHEMA_VERSION
        assert col.counts() == {"documents": 2, "pages": 3, "clustered_pages": 3, "clusters": 1, "noise_pages": 1,
                              "reassigned_pages": 0, "provisional_pages": 0, "failures": 0}
        ids, got = col.vectors()
        assert ids.tolist() == [1, 2, 3] and np.array_equal(got, vecs)
        assert col.thumbnail(3) == b"jpeg3"
        table = col.page_table()
        assert table["membership"].tolist() == ["member", "member", "noise"]
        assert table["cluster_name"].tolist() == ["Deeds", "Deeds", "noise"]
        assert col.last_cluster_run()["n_reassigned"] == 0
        assert col.next_cluster_id() == 1
        labels = col.query("SELECT page_id, type FROM page_labels")
        assert labels == ([(1, "deed")] if schema == 3 else [])
        if schema == 3:
            assert [h[0] for h in col.search_text("indenture")] == [2]
        # What the later migrations add works on the upgraded database.
        col.stage_vectors([1, 2, 3], vecs * 2, "sha")
        assert col.swap_in_staged_vectors("sha") == 3
        col.store_page_texts([{"page_id": 3, "text": "codicil", "lang": "eng", "engine": "t", "long_side_px": 9}])
        assert [h[0] for h in col.search_text("codicil")] == [3]
    db = sqlite3.connect(root / Collection.DB)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    db.close()
    with Collection(root) as col:  # opening again finds nothing to do and changes nothing
        assert col.schema_version() == SCHEMA_VERSION and col.counts()["pages"] == 3


def test_a_collection_from_a_newer_docsort_is_a_clear_error(tmp_path):
    root = tmp_path / "new"
    Collection(root, create=True).close()
    db = sqlite3.connect(root / Collection.DB)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(CollectionError, match=rf"{root}: the collection has schema version {SCHEMA_VERSION + 1}, "
                                              rf"newer than {SCHEMA_VERSION}"):
        Collection(root)
    # And a legacy meta.schema_version above what docsort before numbered migrations wrote.
    legacy = tmp_path / "legacy"
    _legacy(legacy, 1)
    db = sqlite3.connect(legacy / Collection.DB)
    db.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(CollectionError, match=rf"{legacy}: the collection has schema version 7, newer than {SCHEMA_VERSION}"):
        Collection(legacy)


def test_a_failed_migration_leaves_the_database_at_the_previous_step(tmp_path, monkeypatch):
    from docsort.store import storage

    root = tmp_path / "old"
    _legacy(root, 1)

    def broken(c):
        """Schema 3 (broken for the test)."""
        c.execute("CREATE TABLE page_text(x)")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(storage, "MIGRATIONS", (*MIGRATIONS[:2], storage.Migration(3, broken), *MIGRATIONS[3:]))
    with pytest.raises(RuntimeError, match="disk on fire"):
        Collection(root)
    db = sqlite3.connect(root / Collection.DB)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # steps 1 (adopted) and 2 kept
    assert db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'page_text'").fetchone()[0] == 0
    db.close()
    monkeypatch.undo()
    with Collection(root) as col:
        assert col.schema_version() == SCHEMA_VERSION and col.counts()["pages"] == 3


def test_two_processes_opening_an_old_collection_at_once_both_succeed(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "old"
    _legacy(root, 1)
    code = f"from docsort.store.storage import Collection; c = Collection({str(root)!r}); print(c.schema_version(), c.counts()['pages'])"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert [o.split() for o, _ in outs] == [[str(SCHEMA_VERSION), "3"]] * 3


# -- connections and transactions ----------------------------------------------------------


def test_each_thread_has_its_own_connection_closed_with_the_collection(tmp_path):
    col = Collection(tmp_path / "c", create=True)
    conns = {}

    def connection():
        """This thread's connection, as Collection.transaction() hands it out."""
        with col.transaction() as conn:
            return conn

    def grab(i):
        conns[i] = connection()
        assert connection() is conns[i]  # the same one for the thread's whole life
        assert conns[i].execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conns[i].execute("PRAGMA busy_timeout").fetchone()[0] == int(Collection.BUSY_TIMEOUT_S * 1000)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
        t.join()
    assert len({id(c) for c in conns.values()} | {id(connection())}) == 4
    # Connections of threads that ended are closed when another thread opens one.
    t = threading.Thread(target=grab, args=(3,))
    t.start()
    t.join()
    for i in range(3):
        with pytest.raises(sqlite3.ProgrammingError):
            conns[i].execute("SELECT 1")
    col.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conns[3].execute("SELECT 1")
    with pytest.raises(CollectionError, match="closed"):
        col.counts()


def test_nested_transactions_commit_once_and_an_inner_failure_rolls_back_only_itself(tmp_path):
    with Collection(tmp_path / "c", create=True) as col:
        with col.transaction() as c:
            c.execute("INSERT INTO failures VALUES('outer', 'r', 't')")
            with pytest.raises(ValueError):
                with col.transaction() as c2:
                    c2.execute("INSERT INTO failures VALUES('inner', 'r', 't')")
                    raise ValueError("inner fails")
            with col.transaction() as c3:
                c3.execute("INSERT INTO failures VALUES('inner2', 'r', 't')")
            # Not committed yet: another thread (its own connection) does not see it.
            seen = []
            t = threading.Thread(target=lambda: seen.append(col.counts()["failures"]))
            t.start()
            t.join()
            assert seen == [0]
        assert [f[0] for f in col.failures()] == ["inner2", "outer"]
        with pytest.raises(KeyError):
            with col.transaction() as c:
                c.execute("INSERT INTO failures VALUES('gone', 'r', 't')")
                with col.transaction():
                    col.record_failure("gone too", "r")
                raise KeyError("outer fails")
        assert [f[0] for f in col.failures()] == ["inner2", "outer"]


def test_writers_in_threads_never_land_inside_each_others_transactions(tmp_path):
    """Each writer inserts a row, waits, inserts another, checks that the table holds exactly its own
    uncommitted rows besides the committed ``kept-`` ones, and replaces them: with one connection
    shared by the threads (the store before issue 15) a second ``BEGIN`` fails inside the first
    transaction, or one thread's rows land in another's transaction."""
    col = Collection(tmp_path / "c", create=True)
    errors = []

    def writer(i):
        try:
            for k in range(15):
                with col.transaction() as c:
                    c.execute("INSERT INTO failures VALUES(?, 'r', 't')", (f"{i}-{k}",))
                    threading.Event().wait(0.002)
                    c.execute("INSERT INTO failures VALUES(?, 'r', 't')", (f"{i}-{k}-second",))
                    rows = [r[0] for r in c.execute("SELECT path FROM failures WHERE path NOT LIKE 'kept-%'")]
                    assert sorted(rows) == sorted([f"{i}-{k}", f"{i}-{k}-second"]), rows
                    c.execute("DELETE FROM failures WHERE path LIKE ?", (f"{i}-{k}%",))
                    c.execute("INSERT INTO failures VALUES(?, 'r', 't')", (f"kept-{i}-{k}",))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(f[0] for f in col.failures()) == sorted(f"kept-{i}-{k}" for i in range(4) for k in range(15))
    col.close()
