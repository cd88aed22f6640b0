"""The collection on disk: SQLite for documents, pages, vectors and clusters, plus a manifest.

A collection is a directory::

    docsort.sqlite   documents, their paths, pages (with the float32 feature vector as a BLOB),
                     thumbnails, cluster assignments, cluster names, ingest failures, the log of
                     hand edits and the page assignments they pinned (docsort.jobs.edits)
    index.faiss      the FAISS index (derived from the stored vectors; see docsort.core.index)
    manifest.json    how the collection was built: backbone, layer, pooling, weights sha256,
                     input size, preprocessing, render settings, pipeline, library versions, seeds
    clustering.joblib  the fitted UMAP + HDBSCAN models of the last clustering run
    text_model.joblib  the text model (TF-IDF + LSA) fitted on the pages' OCR text (docsort.core.text)
    classifier.joblib  the document-type classifier trained on the page labels (docsort.jobs.classify)
    .lock            the writers' lock (filelock)

SQLite is the single source of truth and every document is stored in one transaction with all
its pages and vectors, so a crash mid-ingest leaves either the whole document or nothing. The
database runs in WAL mode so readers (the UI) keep reading while a writer commits.

Threads: a :class:`Collection` may be shared by threads (the app's sessions and its re-cluster
thread share one through ``st.cache_resource``). Each thread gets its own SQLite connection, and
the writers of one process take turns (:meth:`Collection.transaction`); writers of different
processes take turns through SQLite's own write lock, and jobs additionally hold the collection's
file lock (:meth:`Collection.write_lock`).

Schema: numbered migrations (:data:`MIGRATIONS`) recorded in SQLite's ``PRAGMA user_version``
(SQLite docs, "PRAGMA user_version"); opening a collection applies the missing ones, one
transaction each.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

__all__ = [
    "Collection",
    "CollectionError",
    "CollectionBusyError",
    "MIGRATIONS",
    "Migration",
    "SCHEMA_VERSION",
    "StoredPage",
    "atomic_write_bytes",
    "default_collection_path",
]

# -- schema: numbered migrations -------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One step of the schema: ``apply(conn)`` takes a database at ``version - 1`` to ``version``.

    Attributes:
        version: the ``PRAGMA user_version`` the database has once this step ran (1, 2, ...).
        apply: runs the step's statements on the connection, inside the transaction that
            :meth:`Collection._migrate` opened (so it must not commit); its docstring says what
            the step adds.
    """

    version: int
    apply: Callable[[sqlite3.Connection], None]

    @property
    def description(self) -> str:
        """The first line of ``apply``'s docstring."""
        return (self.apply.__doc__ or "").strip().splitlines()[0]


def _run(c: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements one by one (``executescript`` would commit first)."""
    for stmt in script.split(";"):
        if stmt.strip():
            c.execute(stmt)


def _m1_base(c: sqlite3.Connection) -> None:
    """Schema 1 (the docsort spine): documents and their paths, pages with their float32 vector
    BLOB, JPEG thumbnails, cluster assignments, cluster names, clustering runs, ingest failures
    and a key/value ``meta`` table."""
    _run(c, """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents(
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    n_pages INTEGER NOT NULL,
    added_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS document_paths(
    document_id INTEGER NOT NULL REFERENCES documents(id),
    path TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY(document_id, path)
);
CREATE TABLE IF NOT EXISTS pages(
    id INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    page_no INTEGER NOT NULL,
    width_px INTEGER NOT NULL,
    height_px INTEGER NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE(document_id, page_no)
);
CREATE TABLE IF NOT EXISTS thumbnails(
    page_id INTEGER PRIMARY KEY REFERENCES pages(id),
    jpeg BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS page_clusters(
    page_id INTEGER PRIMARY KEY REFERENCES pages(id),
    cluster INTEGER NOT NULL,
    probability REAL NOT NULL,
    umap_x REAL NOT NULL,
    umap_y REAL NOT NULL,
    run_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters(
    id INTEGER PRIMARY KEY,
    name TEXT,
    user_named INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS cluster_runs(
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    settings TEXT NOT NULL,
    n_pages INTEGER NOT NULL,
    n_clusters INTEGER NOT NULL,
    n_noise INTEGER NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures(path TEXT PRIMARY KEY, reason TEXT NOT NULL, at TEXT NOT NULL)
""")


def _m2_membership_and_labels(c: sqlite3.Connection) -> None:
    """Schema 2 (issue 5): ``page_clusters.membership`` (``'member'``, ``'noise'`` for the rows
    with cluster -1; later also ``'reassigned'`` and ``'provisional'``), ``cluster_runs.n_reassigned``
    (0), and the tables of :mod:`docsort.jobs.classify`: ``page_labels`` (a user's document type per
    page) and ``page_predictions`` (the classifier's). Existing cluster ids are kept; the next
    fresh id is derived from them (:meth:`Collection.next_cluster_id`)."""
    c.execute("ALTER TABLE page_clusters ADD COLUMN membership TEXT NOT NULL DEFAULT 'member'")
    c.execute("UPDATE page_clusters SET membership = 'noise' WHERE cluster < 0")
    c.execute("ALTER TABLE cluster_runs ADD COLUMN n_reassigned INTEGER NOT NULL DEFAULT 0")
    # IF NOT EXISTS: schema-1 databases opened by docsort before numbered migrations got these
    # tables from its CREATE ... IF NOT EXISTS at every open.
    _run(c, """
CREATE TABLE IF NOT EXISTS page_labels(
    page_id INTEGER PRIMARY KEY REFERENCES pages(id),
    type TEXT NOT NULL,
    source TEXT NOT NULL CHECK(source IN ('page', 'cluster')),
    cluster INTEGER,
    who TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS page_predictions(
    page_id INTEGER PRIMARY KEY REFERENCES pages(id),
    type TEXT NOT NULL,
    probability REAL NOT NULL,
    similarity REAL,
    unsure INTEGER NOT NULL,
    threshold REAL NOT NULL,
    model_version TEXT NOT NULL,
    at TEXT NOT NULL
)
""")


def _m3_page_text(c: sqlite3.Connection) -> None:
    """Schema 3 (issue 6): ``page_text``, the OCR text of a page (one row per page once OCR ran on
    it, failed or not), and ``page_text_fts``, its full-text index (SQLite FTS5 external-content
    table kept in step by three triggers; SQLite docs "FTS5", section 4.4.3 "External Content
    Tables")."""
    c.execute("""
CREATE TABLE IF NOT EXISTS page_text(
    page_id INTEGER PRIMARY KEY REFERENCES pages(id),
    text TEXT NOT NULL,
    confidence REAL,
    n_words INTEGER NOT NULL,
    lang TEXT NOT NULL,
    engine TEXT NOT NULL,
    long_side_px INTEGER NOT NULL,
    seconds REAL NOT NULL,
    error TEXT,
    at TEXT NOT NULL
)""")
    # The trigger bodies contain ';': one statement each, not split.
    for stmt in (
        "CREATE VIRTUAL TABLE IF NOT EXISTS page_text_fts USING fts5(text, content='page_text', content_rowid='page_id', "
        "tokenize='porter unicode61 remove_diacritics 2')",
        "CREATE TRIGGER IF NOT EXISTS page_text_ai AFTER INSERT ON page_text BEGIN "
        "INSERT INTO page_text_fts(rowid, text) VALUES (new.page_id, new.text); END",
        "CREATE TRIGGER IF NOT EXISTS page_text_ad AFTER DELETE ON page_text BEGIN "
        "INSERT INTO page_text_fts(page_text_fts, rowid, text) VALUES ('delete', old.page_id, old.text); END",
        "CREATE TRIGGER IF NOT EXISTS page_text_au AFTER UPDATE ON page_text BEGIN "
        "INSERT INTO page_text_fts(page_text_fts, rowid, text) VALUES ('delete', old.page_id, old.text); "
        "INSERT INTO page_text_fts(rowid, text) VALUES (new.page_id, new.text); END",
    ):
        c.execute(stmt)


def _m4_staged_vectors(c: sqlite3.Connection) -> None:
    """Schema 4 (issue 14, ``docsort adapt``): ``staged_vectors``, the vectors of the adapted
    network kept aside, tagged with the weights' sha256, until every page has one (then swapped
    in by :meth:`Collection.swap_in_staged_vectors`). IF NOT EXISTS: databases of schema 3 made
    before numbered migrations may already have it."""
    c.execute("""
CREATE TABLE IF NOT EXISTS staged_vectors(
    page_id INTEGER PRIMARY KEY REFERENCES pages(id),
    weights_sha256 TEXT NOT NULL,
    vector BLOB NOT NULL
)""")


def _m5_edits(c: sqlite3.Connection) -> None:
    """Schema 5 (issue 18, hand edits): ``edits``, the log of a user's corrections to the sort (one
    row per merge, split, move or rename: ``kind``, ``payload`` JSON of the cluster ids, page
    counts and names involved, ``who``, ``at`` UTC ISO time, ``undone`` 0/1), and ``edit_pages``,
    the pages each edit pinned: the cluster it put the page in (``after_cluster``) and the page's
    assignment before it (``before_cluster`` / ``before_membership`` / ``before_probability``, what
    ``docsort undo`` restores). The pinned assignments of the edits not undone are honoured by every
    later clustering (:mod:`docsort.jobs.edits`)."""
    _run(c, """
CREATE TABLE IF NOT EXISTS edits(
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK(kind IN ('merge', 'split', 'move', 'rename')),
    payload TEXT NOT NULL,
    who TEXT NOT NULL,
    at TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS edit_pages(
    edit_id INTEGER NOT NULL REFERENCES edits(id),
    page_id INTEGER NOT NULL REFERENCES pages(id),
    after_cluster INTEGER NOT NULL,
    before_cluster INTEGER NOT NULL,
    before_membership TEXT NOT NULL,
    before_probability REAL NOT NULL,
    PRIMARY KEY(edit_id, page_id)
);
CREATE INDEX IF NOT EXISTS edit_pages_page ON edit_pages(page_id)
""")


def _m6_duplicates(c: sqlite3.Connection) -> None:
    """Schema 6 (issue 18, ``docsort duplicates``): ``page_maps``, each page's near-duplicate page
    map (:func:`docsort.core.duplicates.page_map`, uint8 BLOB) tagged with the settings that made
    it; ``duplicate_families``, the families of the last run (one row per page in a family); and
    ``duplicate_runs``, when each run was and with what settings."""
    _run(c, """
CREATE TABLE IF NOT EXISTS page_maps(
    page_id INTEGER PRIMARY KEY REFERENCES pages(id),
    map BLOB,
    settings TEXT NOT NULL,
    error TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS duplicate_families(
    page_id INTEGER PRIMARY KEY REFERENCES pages(id),
    family INTEGER NOT NULL,
    similarity REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS duplicate_families_family ON duplicate_families(family);
CREATE TABLE IF NOT EXISTS duplicate_runs(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    settings TEXT NOT NULL,
    pages INTEGER NOT NULL,
    families INTEGER NOT NULL,
    seconds REAL NOT NULL
)
""")


def _m7_keypoints(c: sqlite3.Connection) -> None:
    """Schema 7 (issue 18): ``page_maps.keypoints``, each page's ORB keypoints
    (:func:`docsort.core.duplicates.page_keypoints`, a BLOB of ``KEYPOINT_DTYPE`` records) made
    with its page map. Maps stored before have none; their settings token is older, so the next
    ``docsort duplicates`` makes both again."""
    if "keypoints" not in {r[1] for r in c.execute("PRAGMA table_info(page_maps)")}:
        c.execute("ALTER TABLE page_maps ADD COLUMN keypoints BLOB")


def _m8_ink(c: sqlite3.Connection) -> None:
    """Schema 8 (issue 18): ``page_maps.ink``, each page's binarised, compressed render
    (:func:`docsort.core.duplicates.page_ink`) made with its page map and keypoints, which pairs
    the keypoints accept are checked with. Maps stored before have none; their settings token is
    older, so the next ``docsort duplicates`` makes all three again."""
    if "ink" not in {r[1] for r in c.execute("PRAGMA table_info(page_maps)")}:
        c.execute("ALTER TABLE page_maps ADD COLUMN ink BLOB")


#: The schema, step by step, in order; a database's ``PRAGMA user_version`` is the number of the
#: last step applied to it. Append new steps here (never edit a released one).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, _m1_base),
    Migration(2, _m2_membership_and_labels),
    Migration(3, _m3_page_text),
    Migration(4, _m4_staged_vectors),
    Migration(5, _m5_edits),
    Migration(6, _m6_duplicates),
    Migration(7, _m7_keypoints),
    Migration(8, _m8_ink),
)
#: The schema this docsort writes: the last migration's number. Also mirrored in ``meta`` under
#: ``schema_version``, which docsort before numbered migrations (schema 3 and older) reads to
#: refuse a newer collection.
SCHEMA_VERSION = MIGRATIONS[-1].version
#: The newest schema of docsort before numbered migrations: such a database has user_version 0
#: and its schema number in ``meta.schema_version`` (1 to 3).
_LEGACY_MAX = 3


class CollectionError(RuntimeError):
    """The collection is missing, damaged, or incompatible with the requested settings."""


class CollectionBusyError(CollectionError):
    """Another docsort process holds the collection's write lock (:meth:`Collection.write_lock`),
    or another thread of this process kept writing for too long (:meth:`Collection.transaction`)."""


@dataclass(frozen=True)
class StoredPage:
    """One page as stored: ids, source, and (optionally) cluster.

    Attributes:
        page_id: the page's row id, also its id in the FAISS index.
        document_id, path, sha256, page_no: where the page comes from (1-based page number).
        cluster: cluster id, -1 for noise, ``None`` before clustering.
        cluster_name: the cluster's (user-given or default) name.
    """

    page_id: int
    document_id: int
    path: str
    sha256: str
    page_no: int
    cluster: int | None
    cluster_name: str | None


def default_collection_path() -> Path:
    """``$DOCSORT_COLLECTION`` or ``./docsort-collection``."""
    return Path(os.environ.get("DOCSORT_COLLECTION", "docsort-collection"))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temp file in the same folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _id_chunks(ids: list[int], size: int = 900) -> Iterator[tuple[list[int], str]]:
    """``(chunk, "?,?,...")`` for ``WHERE id IN (...)`` over ``ids`` in chunks of ``size``, below
    SQLite's default limit of 999 host parameters (SQLite docs, "Limits In SQLite", item 9)."""
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        yield chunk, ",".join("?" * len(chunk))


def _retry_while_locked(op, timeout_s: float):
    """Run ``op()``, retrying every 50 ms for up to ``timeout_s`` seconds on "database is locked"."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return op()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Collection:
    """A docsort collection directory.

    One object may be shared by threads (the app shares one between its sessions and its
    re-cluster thread): every thread that touches it gets its own SQLite connection (WAL mode,
    ``busy_timeout`` :attr:`BUSY_TIMEOUT_S`), opened on first use and closed by :meth:`close`
    (or, once its thread has ended, when another thread opens one). Writes go through
    :meth:`transaction`, which nests within a thread and lets one thread of the process write at a
    time; between processes SQLite's write lock orders the transactions, and jobs also hold the
    file lock of :meth:`write_lock`.

    Args:
        root: the collection directory.
        create: create the directory and database if missing (otherwise a missing collection
            raises :class:`CollectionError`).

    Raises:
        CollectionError: the directory is not a collection (and ``create`` is false), or its
            database was made by a newer docsort (the message names both schema versions).
    """

    DB = "docsort.sqlite"
    INDEX = "index.faiss"
    SHARDS = "shards"
    MANIFEST = "manifest.json"
    MODELS = "clustering.joblib"
    CLASSIFIER = "classifier.joblib"
    TEXT_MODEL = "text_model.joblib"
    #: The scan-style-invariant projection (:mod:`docsort.core.invariance`), described under
    #: ``"invariance"`` in the manifest with its sha256.
    INVARIANCE = "invariance.bin"
    #: ``docsort adapt``'s fine-tuned backbone (Keras ``.weights.h5`` of the truncated network) and
    #: its sidecar (:func:`docsort.core.weights.sidecar_path`).
    ADAPTED_WEIGHTS = "adapted.weights.h5"
    #: ``docsort classify --fine-tune``'s kept classifier (:mod:`docsort.jobs.finetuning`): the
    #: backbone with its type head, Keras ``.weights.h5``, sha256 in its sidecar and the manifest.
    FINE_TUNED = "finetuned.weights.h5"
    LOCK = ".lock"
    #: How long a statement waits for another connection's write lock (SQLite's busy handler,
    #: ``sqlite3.connect(timeout=...)``), and a transaction for another thread's, seconds.
    BUSY_TIMEOUT_S = 60.0

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False):
        self.root = Path(root)
        self._db = self.root / self.DB
        if not self._db.exists():
            if not create:
                raise CollectionError(
                    f"{self.root}: no docsort collection here (run `docsort ingest FOLDER` first, "
                    "or pass --collection PATH)"
                )
            self.root.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # .conn, .depth: this thread's connection and transaction depth
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._conns_lock = threading.Lock()
        self._writer = threading.RLock()  # one writing thread per process at a time
        self._closed = False
        try:
            conn = self._conn
            # Switching to WAL needs a moment of exclusive access and SQLite does not wait for it
            # (no busy handler): retry while another process holds the database. WAL is a property
            # of the database file, so later connections find it set.
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                _retry_while_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"), timeout_s=self.BUSY_TIMEOUT_S)
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- connections and transactions --------------------------------------------------------
    @property
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use).

        Raises:
            CollectionError: the collection was closed.
        """
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise CollectionError(f"{self.root}: the collection was closed")
        conn = sqlite3.connect(self._db, timeout=self.BUSY_TIMEOUT_S, isolation_level=None,
                               # used by this thread only; closed by another one (close(), or
                               # after this thread ended), which check_same_thread would refuse
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        with self._conns_lock:
            if self._closed:
                conn.close()
                raise CollectionError(f"{self.root}: the collection was closed")
            for thread in [t for t in self._conns if not t.is_alive()]:
                # Streamlit runs each rerun of a session in a new thread: drop the ended ones'.
                self._conns.pop(thread).close()
            self._conns[threading.current_thread()] = conn
        self._local.conn, self._local.depth = conn, 0
        return conn

    def close(self) -> None:
        """Close every thread's database connection; later use raises :class:`CollectionError`.

        Call it when no other thread is using the collection (a connection in use by another
        thread would be closed under it)."""
        with self._conns_lock:
            self._closed = True
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection: ``BEGIN IMMEDIATE`` ... ``COMMIT``,
        ``ROLLBACK`` on any exception.

        Nests: inside another :meth:`transaction` of the same thread it is a ``SAVEPOINT``
        (released on success, rolled back to on an exception), and only the outermost one
        commits. The outermost one first takes the process's writer lock (a ``threading.RLock``),
        so two threads' transactions never interleave; ``BEGIN IMMEDIATE`` then takes SQLite's
        write lock, waiting up to :attr:`BUSY_TIMEOUT_S` for other processes (SQLite docs,
        "Transaction", section "Immediate"; "Write-Ahead Logging").

        Yields:
            This thread's ``sqlite3.Connection``.

        Raises:
            CollectionBusyError: another thread of this process kept writing for longer than
                :attr:`BUSY_TIMEOUT_S`.
            sqlite3.OperationalError: "database is locked" when another process kept SQLite's
                write lock for longer than that.
        """
        conn = self._conn
        depth = self._local.depth
        if depth:
            name = f"docsort_sp{depth}"
            conn.execute(f"SAVEPOINT {name}")
            self._local.depth = depth + 1
            try:
                yield conn
            except BaseException:
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
                raise
            else:
                conn.execute(f"RELEASE {name}")
            finally:
                self._local.depth = depth
            return
        if not self._writer.acquire(timeout=self.BUSY_TIMEOUT_S):
            raise CollectionBusyError(
                f"collection {self.root} is busy: another thread of this process has been writing to it "
                f"for over {self.BUSY_TIMEOUT_S:.0f} s")
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._local.depth = 1
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
            finally:
                self._local.depth = 0
        finally:
            self._writer.release()

    def schema_version(self) -> int:
        """The database's schema: the number of the last :data:`MIGRATIONS` step applied
        (``PRAGMA user_version``)."""
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Bring the database up to :data:`SCHEMA_VERSION` by applying the missing
        :data:`MIGRATIONS`, each in its own transaction that also sets ``PRAGMA user_version``.

        Each step re-reads the version inside its transaction (``BEGIN IMMEDIATE``), so two
        processes opening the same old or new collection at once apply each step once. A
        database of docsort before numbered migrations (user_version 0 but a ``meta`` table with
        ``schema_version`` 1 to 3; a missing row counts as 1) is adopted at that version first;
        its rows are kept. ``meta.schema_version`` is kept equal to the version, for older
        docsort's check.

        Raises:
            CollectionError: the database's version (or its legacy ``schema_version``) is newer
                than :data:`SCHEMA_VERSION`; the message names the collection and both versions.
        """
        version = self.schema_version()
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise self._newer_error(version)
        with self.transaction() as c:
            if self.schema_version() == 0 and c.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
            ).fetchone():
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                legacy = 1 if row is None else int(row[0])
                if legacy > _LEGACY_MAX:
                    raise self._newer_error(legacy)
                c.execute(f"PRAGMA user_version = {legacy:d}")
        for step in MIGRATIONS:
            with self.transaction() as c:
                if self.schema_version() >= step.version:
                    continue
                step.apply(c)
                c.execute(f"PRAGMA user_version = {step.version:d}")
                c.execute(
                    "INSERT INTO meta VALUES('schema_version', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(step.version),),
                )

    def _newer_error(self, version: int) -> CollectionError:
        return CollectionError(
            f"{self.root}: the collection has schema version {version}, newer than {SCHEMA_VERSION}, the newest "
            "this docsort knows; upgrade docsort to open it"
        )

    @contextmanager
    def write_lock(self, timeout_s: float = 600.0, on_wait=None) -> Iterator[None]:
        """Hold the collection's writer lock (a ``filelock`` on ``.lock``).

        Args:
            timeout_s: how long to wait for another writer, seconds.
            on_wait: called once with a message if the lock is not free at once.

        Raises:
            CollectionBusyError: still locked after ``timeout_s``.
        """
        lock = FileLock(str(self.root / self.LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait(f"collection {self.root} is busy (another docsort process is writing); waiting up to {timeout_s:.0f} s")
            try:
                lock.acquire(timeout=timeout_s)
            except Timeout as exc:
                raise CollectionBusyError(
                    f"collection {self.root} is busy: another docsort process is writing to it "
                    f"(lock {self.root / self.LOCK}); try again when it has finished"
                ) from exc
        try:
            self._remove_stale_temp_files()
            yield
        finally:
            lock.release()

    def _remove_stale_temp_files(self) -> None:
        """Delete the temp files of a writer killed mid-write (``atomic_write_bytes`` writes
        ``.NAME.XXXX`` next to ``NAME``, then renames it); only lock holders write these files."""
        for name in (self.INDEX, self.MANIFEST, self.MODELS, self.CLASSIFIER, self.TEXT_MODEL, self.INVARIANCE, "index.*.faiss"):
            for tmp in self.root.glob(f".{name}.*"):
                try:
                    tmp.unlink()
                except OSError:
                    pass

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Run one read statement on this thread's connection and return all its rows (for stage
        modules that own tables, such as :mod:`docsort.jobs.classify`; writes go through
        :meth:`transaction`, and a read inside one sees its uncommitted writes)."""
        return self._conn.execute(sql, tuple(params)).fetchall()

    # -- manifest --------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / self.MANIFEST

    def manifest(self) -> dict | None:
        """The manifest as a dict, or ``None`` for a collection with nothing ingested yet."""
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise CollectionError(f"{self.manifest_path}: unreadable manifest: {exc}") from exc

    def write_manifest(self, manifest: dict) -> None:
        """Replace the manifest atomically (write then rename)."""
        data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode("utf-8") + b"\n"
        atomic_write_bytes(self.manifest_path, data)

    # -- invariance projection and the index files ----------------------------------------
    def index_path(self, projection_sha256: str | None = None) -> Path:
        """The FAISS index file: ``index.faiss`` over the stored vectors, or, for vectors projected
        by the invariance projection with this sha256, ``index.<first 16 hex digits>.faiss``; one
        file per projection, so an index can never be read with another projection's queries."""
        return self.root / (self.INDEX if projection_sha256 is None else f"index.{projection_sha256[:16]}.faiss")

    def remove_other_indexes(self, keep: Path) -> int:
        """Delete projected index files (``index.*.faiss``) other than ``keep`` (after a refit;
        the caller holds the write lock). Returns how many were deleted."""
        n = 0
        for p in self.root.glob("index.*.faiss"):
            if p.resolve() != Path(keep).resolve():
                try:
                    p.unlink()
                    n += 1
                except OSError:
                    pass
        return n

    def write_invariance(self, data: bytes, description: dict) -> None:
        """Store the projection's bytes atomically (``invariance.bin``), then record
        ``description`` (with its ``sha256``) under ``"invariance"`` in the manifest. The caller
        holds the write lock."""
        import hashlib

        atomic_write_bytes(self.root / self.INVARIANCE, data)
        manifest = self.manifest() or {}
        manifest["invariance"] = {**description, "sha256": hashlib.sha256(data).hexdigest()}
        self.write_manifest(manifest)

    def read_invariance(self) -> bytes | None:
        """The stored projection's bytes when the manifest records one as ``active`` and the file's
        sha256 matches the manifest's; ``None`` otherwise (none fitted, turned off at the last
        clustering, or the file missing or damaged: then the raw vectors are used)."""
        import hashlib

        entry = (self.manifest() or {}).get("invariance")
        if not entry or not entry.get("active", False):
            return None
        try:
            data = (self.root / self.INVARIANCE).read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == entry.get("sha256") else None

    # -- adapted weights and staged vectors (docsort adapt) -------------------------------
    @property
    def adapted_weights_path(self) -> Path:
        """Where ``docsort adapt`` keeps the collection's fine-tuned weights."""
        return self.root / self.ADAPTED_WEIGHTS

    def write_adapted_weights(self, data: bytes, sidecar: dict) -> str:
        """Store fine-tuned weights atomically, then their sidecar JSON (``sidecar`` plus the
        ``sha256`` of ``data``) next to them. The caller holds the write lock.

        Returns:
            The hex sha256 of ``data``.
        """
        import hashlib

        from docsort.core.weights import sidecar_path

        sha = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(self.adapted_weights_path, data)
        side = json.dumps({**sidecar, "sha256": sha}, indent=2, sort_keys=True).encode("utf-8") + b"\n"
        atomic_write_bytes(sidecar_path(self.adapted_weights_path), side)
        return sha

    def stage_vectors(self, page_ids: Sequence[int], vectors: np.ndarray, weights_sha256: str) -> None:
        """Keep new vectors of ``page_ids`` (float32 (n, D)) aside, tagged with the weights that
        made them, without touching the vectors in use. One transaction per call."""
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO staged_vectors(page_id, weights_sha256, vector) VALUES(?, ?, ?) "
                "ON CONFLICT(page_id) DO UPDATE SET weights_sha256 = excluded.weights_sha256, vector = excluded.vector",
                [(int(i), weights_sha256, v.tobytes()) for i, v in zip(page_ids, vecs)],
            )

    def staged_page_ids(self, weights_sha256: str) -> set[int]:
        """Pages with a staged vector made by these weights."""
        rows = self._conn.execute("SELECT page_id FROM staged_vectors WHERE weights_sha256 = ?", (weights_sha256,)).fetchall()
        return {int(r[0]) for r in rows}

    def discard_staged_vectors(self, keep_sha256: str | None = None) -> int:
        """Delete staged vectors (all, or all but those of ``keep_sha256``). Returns how many."""
        with self.transaction() as c:
            if keep_sha256 is None:
                return c.execute("DELETE FROM staged_vectors").rowcount
            return c.execute("DELETE FROM staged_vectors WHERE weights_sha256 != ?", (keep_sha256,)).rowcount

    def swap_in_staged_vectors(self, weights_sha256: str) -> int:
        """Replace every page's vector by its staged one, in one transaction, and record in
        ``meta`` (key ``vectors_weights_sha256``) which weights the vectors now come from.

        Returns:
            The number of pages swapped.

        Raises:
            CollectionError: some page has no staged vector of these weights (nothing changed).
        """
        with self.transaction() as c:
            missing = c.execute(
                "SELECT COUNT(*) FROM pages WHERE id NOT IN (SELECT page_id FROM staged_vectors WHERE weights_sha256 = ?)",
                (weights_sha256,)).fetchone()[0]
            if missing:
                raise CollectionError(f"{self.root}: {missing} pages have no vector from weights {weights_sha256[:12]}; not swapping")
            n = c.execute(
                "UPDATE pages SET vector = (SELECT s.vector FROM staged_vectors s WHERE s.page_id = pages.id)").rowcount
            c.execute("DELETE FROM staged_vectors")
            c.execute("INSERT INTO meta VALUES('vectors_weights_sha256', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      (weights_sha256,))
        return int(n)

    def vectors_weights_sha256(self) -> str | None:
        """The weights sha256 recorded by the last :meth:`swap_in_staged_vectors`, or ``None``."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'vectors_weights_sha256'").fetchone()
        return None if row is None else str(row[0])

    # -- documents and pages ---------------------------------------------------------------
    def find_document(self, sha256: str) -> int | None:
        """The id of the stored document with this sha256, or ``None``."""
        row = self._conn.execute("SELECT id FROM documents WHERE sha256=?", (sha256,)).fetchone()
        return None if row is None else int(row[0])

    def add_path(self, document_id: int, path: str) -> bool:
        """Record another path (a renamed or copied file) for a stored document.

        Returns:
            True if the path was new for this document.
        """
        with self.transaction() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO document_paths VALUES(?, ?, ?)", (document_id, path, _now())
            )
            c.execute("DELETE FROM failures WHERE path=?", (path,))
        return cur.rowcount > 0

    def add_document(
        self,
        *,
        sha256: str,
        path: str,
        format: str,
        size_bytes: int,
        pages: Sequence[tuple[int, int, int, np.ndarray, bytes]],
    ) -> tuple[int, list[int]] | None:
        """Store a document and all its pages in one transaction.

        Args:
            sha256, path, format, size_bytes: the file (``format`` as detected; size in bytes).
            pages: ``(page_no, width_px, height_px, vector, thumbnail_jpeg)`` per page, vector a
                float32 array of shape (D,).

        Returns:
            ``(document_id, page_ids)``, or ``None`` when a document with this sha256 was stored
            meanwhile by another process (nothing is written then).

        Raises:
            ValueError: no pages, or vectors of different lengths.
        """
        if not pages:
            raise ValueError(f"{path}: no pages to store")
        dims = {int(p[3].shape[-1]) for p in pages}
        if len(dims) != 1:
            raise ValueError(f"{path}: vectors of different lengths {sorted(dims)}")
        now = _now()
        with self.transaction() as c:
            try:
                cur = c.execute(
                    "INSERT INTO documents(sha256, path, format, size_bytes, n_pages, added_at) VALUES(?,?,?,?,?,?)",
                    (sha256, path, format, size_bytes, len(pages), now),
                )
            except sqlite3.IntegrityError:
                return None
            doc_id = int(cur.lastrowid)
            c.execute("INSERT INTO document_paths VALUES(?, ?, ?)", (doc_id, path, now))
            page_ids = []
            for page_no, width, height, vector, thumb in pages:
                vec = np.ascontiguousarray(vector, dtype=np.float32)
                cur = c.execute(
                    "INSERT INTO pages(document_id, page_no, width_px, height_px, vector) VALUES(?,?,?,?,?)",
                    (doc_id, int(page_no), int(width), int(height), vec.tobytes()),
                )
                pid = int(cur.lastrowid)
                page_ids.append(pid)
                c.execute("INSERT INTO thumbnails VALUES(?, ?)", (pid, thumb))
            c.execute("DELETE FROM failures WHERE path=?", (path,))
        return doc_id, page_ids

    def add_documents(self, documents: Sequence[dict]) -> list[tuple[int, list[int]] | None]:
        """Store many documents, each with all its pages, in one transaction (a shard's take-in).

        Args:
            documents: dicts with the keyword arguments of :meth:`add_document` (``sha256``,
                ``path``, ``format``, ``size_bytes``, ``pages``).

        Returns:
            Per document, ``(document_id, page_ids)``, or ``None`` when its sha256 is already
            stored (or repeated earlier in ``documents``): nothing of it is written again.

        Raises:
            ValueError: a document without pages, or with vectors of different lengths (nothing
                of the batch is stored).
        """
        for d in documents:
            if not d["pages"]:
                raise ValueError(f"{d['path']}: no pages to store")
            if len({int(p[3].shape[-1]) for p in d["pages"]}) != 1:
                raise ValueError(f"{d['path']}: vectors of different lengths")
        now = _now()
        out: list[tuple[int, list[int]] | None] = []
        with self.transaction() as c:
            for d in documents:
                cur = c.execute("INSERT OR IGNORE INTO documents(sha256, path, format, size_bytes, n_pages, added_at) VALUES(?,?,?,?,?,?)",
                                (d["sha256"], d["path"], d["format"], int(d["size_bytes"]), len(d["pages"]), now))
                if cur.rowcount == 0:
                    out.append(None)
                    continue
                doc_id = int(cur.lastrowid)
                c.execute("INSERT INTO document_paths VALUES(?, ?, ?)", (doc_id, d["path"], now))
                page_ids = []
                for page_no, width, height, vector, thumb in d["pages"]:
                    cur = c.execute("INSERT INTO pages(document_id, page_no, width_px, height_px, vector) VALUES(?,?,?,?,?)",
                                    (doc_id, int(page_no), int(width), int(height), np.ascontiguousarray(vector, np.float32).tobytes()))
                    page_ids.append(int(cur.lastrowid))
                    c.execute("INSERT INTO thumbnails VALUES(?, ?)", (page_ids[-1], thumb))
                c.execute("DELETE FROM failures WHERE path=?", (d["path"],))
                out.append((doc_id, page_ids))
        return out

    def shards_dir(self) -> Path:
        """The folder (created) where Ray workers write an ingest's Parquet shards
        (:mod:`docsort.store.shards`) until the collection has taken them in."""
        path = self.root / self.SHARDS
        path.mkdir(exist_ok=True)
        return path

    def record_failure(self, path: str, reason: str) -> None:
        """Remember that ``path`` could not be ingested (shown by ``docsort info``)."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO failures VALUES(?, ?, ?)", (path, reason, _now()))

    def failures(self) -> list[tuple[str, str, str]]:
        """``(path, reason, when)`` of files whose last ingest failed."""
        return [tuple(r) for r in self._conn.execute("SELECT path, reason, at FROM failures ORDER BY path")]

    def counts(self) -> dict[str, int]:
        """Numbers of documents, pages, clustered pages, clusters (excluding noise), noise pages
        (provisional noise included), pages reassigned from noise, provisional pages, failures."""
        q = lambda sql: int(self._conn.execute(sql).fetchone()[0])  # noqa: E731
        return {
            "documents": q("SELECT COUNT(*) FROM documents"),
            "pages": q("SELECT COUNT(*) FROM pages"),
            "clustered_pages": q("SELECT COUNT(*) FROM page_clusters"),
            "clusters": q("SELECT COUNT(DISTINCT cluster) FROM page_clusters WHERE cluster >= 0"),
            "noise_pages": q("SELECT COUNT(*) FROM page_clusters WHERE cluster < 0"),
            "reassigned_pages": q("SELECT COUNT(*) FROM page_clusters WHERE membership = 'reassigned'"),
            "provisional_pages": q("SELECT COUNT(*) FROM page_clusters WHERE membership = 'provisional'"),
            "failures": q("SELECT COUNT(*) FROM failures"),
        }

    def page_ids(self) -> np.ndarray:
        """All page ids, ascending, int64 (n,)."""
        rows = self._conn.execute("SELECT id FROM pages ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vectors(self, page_ids: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stored vectors.

        Args:
            page_ids: which pages (default: all, ascending id).

        Returns:
            ``(ids, vectors)``: int64 (n,) and float32 (n, D); an empty (0, 0) array when there are
            no pages.
        """
        if page_ids is None:
            rows = self._conn.execute("SELECT id, vector FROM pages ORDER BY id").fetchall()
        else:
            wanted = [int(i) for i in page_ids]
            rows = []
            for chunk, marks in _id_chunks(wanted):
                found = dict(self._conn.execute(f"SELECT id, vector FROM pages WHERE id IN ({marks})", chunk).fetchall())
                missing = [i for i in chunk if i not in found]
                if missing:
                    raise CollectionError(f"no page with id {missing[0]} in {self.root}")
                rows += [(i, found[i]) for i in chunk]
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, 0), np.float32)
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return ids, vecs.copy()

    def thumbnail(self, page_id: int) -> bytes | None:
        """The page's JPEG thumbnail bytes, or ``None``."""
        row = self._conn.execute("SELECT jpeg FROM thumbnails WHERE page_id=?", (int(page_id),)).fetchone()
        return None if row is None else bytes(row[0])

    def pages(self, page_ids: Iterable[int] | None = None) -> list[StoredPage]:
        """Page records with their document and cluster, ascending id (or in the given order)."""
        sql = """
            SELECT p.id, p.document_id, d.path, d.sha256, p.page_no, pc.cluster,
                   COALESCE(c.name, CASE WHEN pc.cluster < 0 THEN 'noise' WHEN pc.cluster IS NULL THEN NULL
                                         ELSE 'cluster ' || pc.cluster END)
            FROM pages p JOIN documents d ON d.id = p.document_id
            LEFT JOIN page_clusters pc ON pc.page_id = p.id
            LEFT JOIN clusters c ON c.id = pc.cluster
        """
        if page_ids is None:
            rows = self._conn.execute(sql + " ORDER BY p.id").fetchall()
            return [StoredPage(*r) for r in rows]
        wanted = [int(i) for i in page_ids]
        found: dict[int, StoredPage] = {}
        for chunk, marks in _id_chunks(wanted):
            for r in self._conn.execute(sql + f" WHERE p.id IN ({marks})", chunk):
                found[r[0]] = StoredPage(*r)
        return [found[i] for i in wanted if i in found]

    def page_table(self):
        """One row per page as a ``pandas.DataFrame``.

        Columns: page_id, document_id, path, page, sha256, format, width_px, height_px, cluster
        (Int64, -1 noise, <NA> before clustering), cluster_name, probability, umap_x, umap_y,
        membership (``member`` | ``reassigned`` | ``noise`` | ``provisional``, None before
        clustering; see :mod:`docsort.core.clustering`).
        """
        import pandas as pd

        sql = """
            SELECT p.id AS page_id, p.document_id, d.path, p.page_no AS page, d.sha256, d.format,
                   p.width_px, p.height_px, pc.cluster, pc.probability, pc.umap_x, pc.umap_y,
                   COALESCE(c.name, CASE WHEN pc.cluster < 0 THEN 'noise' WHEN pc.cluster IS NULL THEN NULL
                                         ELSE 'cluster ' || pc.cluster END) AS cluster_name,
                   pc.membership
            FROM pages p JOIN documents d ON d.id = p.document_id
            LEFT JOIN page_clusters pc ON pc.page_id = p.id
            LEFT JOIN clusters c ON c.id = pc.cluster
            ORDER BY p.id
        """
        df = pd.read_sql_query(sql, self._conn)
        df["cluster"] = df["cluster"].astype("Int64")
        return df

    def document_paths(self, document_id: int) -> list[str]:
        """Every path under which the document was seen, first-seen first."""
        rows = self._conn.execute(
            "SELECT path FROM document_paths WHERE document_id=? ORDER BY seen_at, path", (int(document_id),)
        )
        return [r[0] for r in rows]

    # -- clusters --------------------------------------------------------------------------
    def store_clustering(
        self,
        page_ids: np.ndarray,
        labels: np.ndarray,
        probabilities: np.ndarray,
        embedding_2d: np.ndarray,
        settings: dict,
        seconds: float,
        membership: np.ndarray | None = None,
    ) -> int:
        """Replace all cluster assignments (provisional ones included) in one transaction.

        Cluster ids are stored as given: :func:`docsort.jobs.cluster.cluster` has already matched them
        to the previous run's (:func:`docsort.core.clustering.match_cluster_ids`). Names in
        ``clusters`` stay with their id (user-given names survive; an id no longer used keeps its
        row and is never handed out again, see :meth:`next_cluster_id`).

        Args:
            page_ids: int64 (n,); labels: int (n,), -1 = noise; probabilities: float (n,)
            membership strength in [0, 1]; embedding_2d: float (n, 2) UMAP map coordinates;
            settings: the UMAP/HDBSCAN parameters used; seconds: wall time of the run;
            membership: str (n,) ``member`` | ``reassigned`` | ``noise`` (default: from labels).

        Returns:
            The run id.

        Raises:
            ValueError: arrays of different lengths or an unknown membership value.
        """
        labels = np.asarray(labels, dtype=np.int64)
        if membership is None:
            membership = np.where(labels < 0, "noise", "member")
        membership = np.asarray(membership).astype(str)
        if not (len(page_ids) == len(labels) == len(probabilities) == len(embedding_2d) == len(membership)):
            raise ValueError("page_ids, labels, probabilities, embedding_2d and membership differ in length")
        unknown = set(membership.tolist()) - {"member", "reassigned", "noise"}
        if unknown:
            raise ValueError(f"unknown membership values {sorted(unknown)}")
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO cluster_runs(created_at, settings, n_pages, n_clusters, n_noise, seconds, n_reassigned) "
                "VALUES(?,?,?,?,?,?,?)",
                (
                    _now(),
                    json.dumps(settings, sort_keys=True, default=str),
                    len(labels),
                    len(set(labels.tolist()) - {-1}),
                    int((labels < 0).sum()),
                    float(seconds),
                    int((membership == "reassigned").sum()),
                ),
            )
            run_id = int(cur.lastrowid)
            c.execute("DELETE FROM page_clusters")
            c.executemany(
                "INSERT INTO page_clusters(page_id, cluster, probability, umap_x, umap_y, run_id, membership) VALUES(?,?,?,?,?,?,?)",
                [
                    (int(pid), int(lab), float(prob), float(xy[0]), float(xy[1]), run_id, str(mem))
                    for pid, lab, prob, xy, mem in zip(page_ids, labels, probabilities, embedding_2d, membership)
                ],
            )
            c.execute("DELETE FROM clusters WHERE user_named = 0")
            if len(labels) and labels.max() >= 0:
                self._raise_next_cluster_id(c, int(labels.max()) + 1)
        return run_id

    def _raise_next_cluster_id(self, c: sqlite3.Connection, at_least: int) -> None:
        c.execute(
            "INSERT INTO meta VALUES('next_cluster_id', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value "
            "WHERE CAST(meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)",
            (str(int(at_least)),),
        )

    def next_cluster_id(self) -> int:
        """The smallest cluster id never used in this collection (fresh ids start here).

        The larger of ``meta.next_cluster_id`` (raised by every :meth:`store_clustering`) and one
        more than any id in ``page_clusters`` or ``clusters`` (for collections clustered before
        schema 2); 0 for a collection never clustered.
        """
        row = self._conn.execute(
            "SELECT MAX(COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key='next_cluster_id'), 0), "
            "COALESCE((SELECT MAX(cluster) + 1 FROM page_clusters), 0), COALESCE((SELECT MAX(id) + 1 FROM clusters), 0))"
        ).fetchone()
        return int(row[0])

    def cluster_assignments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored assignment of every clustered page, ascending page id.

        Returns:
            ``(page_ids, clusters, membership)``: int64 (n,), int64 (n,) (-1 noise), str (n,).
        """
        rows = self._conn.execute("SELECT page_id, cluster, membership FROM page_clusters ORDER BY page_id").fetchall()
        ids = np.array([r[0] for r in rows], np.int64)
        clusters = np.array([r[1] for r in rows], np.int64)
        return ids, clusters, np.array([r[2] for r in rows], dtype=object).astype(str)

    def unclustered_page_ids(self) -> np.ndarray:
        """Pages with no cluster assignment (ingested since the last clustering), int64, ascending."""
        rows = self._conn.execute(
            "SELECT id FROM pages WHERE id NOT IN (SELECT page_id FROM page_clusters) ORDER BY id"
        ).fetchall()
        return np.array([r[0] for r in rows], np.int64)

    def store_provisional(
        self, page_ids: np.ndarray, clusters: np.ndarray, probabilities: np.ndarray, embedding_2d: np.ndarray
    ) -> int:
        """Store provisional assignments (membership ``provisional``) of pages ingested after the
        last clustering, under that run's id, in one transaction; the next full clustering
        replaces them.

        Args:
            page_ids: int64 (m,), pages without an assignment; clusters: int (m,) stored ids, -1
            noise; probabilities: float (m,) in [0, 1]; embedding_2d: float (m, 2) map coordinates.

        Returns:
            The number of pages stored.

        Raises:
            CollectionError: the collection has never been clustered.
            ValueError: arrays of different lengths.
        """
        if not (len(page_ids) == len(clusters) == len(probabilities) == len(embedding_2d)):
            raise ValueError("page_ids, clusters, probabilities and embedding_2d differ in length")
        run = self.last_cluster_run()
        if run is None:
            raise CollectionError(f"{self.root} has not been clustered yet")
        with self.transaction() as c:
            c.executemany(
                "INSERT OR REPLACE INTO page_clusters(page_id, cluster, probability, umap_x, umap_y, run_id, membership) "
                "VALUES(?,?,?,?,?,?,'provisional')",
                [
                    (int(pid), int(lab), float(prob), float(xy[0]), float(xy[1]), int(run["id"]))
                    for pid, lab, prob, xy in zip(page_ids, clusters, probabilities, embedding_2d)
                ],
            )
        return len(page_ids)

    def last_cluster_run(self) -> dict | None:
        """The latest clustering run: id, created_at, settings, counts (n_pages, n_clusters, n_noise
        after reassignment, n_reassigned), seconds; or ``None``."""
        row = self._conn.execute(
            "SELECT id, created_at, settings, n_pages, n_clusters, n_noise, seconds, n_reassigned "
            "FROM cluster_runs ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        keys = ("id", "created_at", "settings", "n_pages", "n_clusters", "n_noise", "seconds", "n_reassigned")
        out = dict(zip(keys, row))
        out["settings"] = json.loads(out["settings"])
        return out

    def rename_cluster(self, cluster_id: int, name: str) -> None:
        """Give a cluster a user name (kept across restarts; ``docsort export`` and the UI show it).

        Raises:
            CollectionError: no such cluster, an empty name, or the noise label -1.
        """
        name = name.strip()
        if not name:
            raise CollectionError("a cluster name cannot be empty")
        if cluster_id < 0:
            raise CollectionError("noise (-1) is not a cluster and cannot be renamed")
        with self.transaction() as c:
            # Checked inside the transaction: a re-clustering committed meanwhile may have retired the id.
            if c.execute("SELECT 1 FROM page_clusters WHERE cluster=? LIMIT 1", (int(cluster_id),)).fetchone() is None:
                raise CollectionError(f"no cluster {cluster_id} in {self.root}")
            c.execute(
                "INSERT INTO clusters(id, name, user_named) VALUES(?, ?, 1) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, user_named=1",
                (int(cluster_id), name),
            )

    def set_default_cluster_names(self, names: dict[int, str]) -> int:
        """Store default (not user-given) cluster names, e.g. keywords from the clusters' OCR text.

        A cluster a user has named keeps its name; :meth:`store_clustering` drops default names
        (they describe the previous run's members), so call this after it.

        Args:
            names: ``{cluster id: name}``; empty names are skipped.

        Returns:
            The number of names stored.
        """
        rows = [(int(cid), str(name).strip()) for cid, name in names.items() if int(cid) >= 0 and str(name).strip()]
        with self.transaction() as c:
            for cid, name in rows:
                c.execute(
                    "INSERT INTO clusters(id, name, user_named) VALUES(?, ?, 0) "
                    "ON CONFLICT(id) DO UPDATE SET name=excluded.name WHERE clusters.user_named = 0",
                    (cid, name),
                )
        return len(rows)

    # -- hand edits (issue 18: docsort merge / split / move / rename / undo) -----------------
    #: The kinds of edit in the ``edits`` log.
    EDIT_KINDS = ("merge", "split", "move", "rename")

    def cluster_names(self) -> dict[int, tuple[str, bool]]:
        """Every stored cluster name: ``{cluster id: (name, user_named)}`` (default names and
        user-given ones; ids without a row show as ``cluster N``)."""
        return {int(r[0]): (str(r[1]), bool(r[2])) for r in self._conn.execute("SELECT id, name, user_named FROM clusters")}

    def allocate_cluster_ids(self, n: int) -> list[int]:
        """Reserve ``n`` fresh cluster ids (never handed out again, :meth:`next_cluster_id`), for
        the new clusters of a split or a move to a new cluster. The caller holds the write lock,
        so a clustering cannot take them meanwhile; ids reserved by an edit that then fails are
        retired unused.

        Returns:
            ``n`` ascending ids.
        """
        with self.transaction() as c:
            start = self.next_cluster_id()
            self._raise_next_cluster_id(c, start + int(n))
        return list(range(start, start + int(n)))

    def record_edit(self, kind: str, who: str, payload: dict, assign: dict[int, int], names: dict[int, str] | None = None) -> int:
        """Apply one hand edit and log it, in one transaction: pages get their new cluster, clusters
        their user-given names, and the ``edits`` / ``edit_pages`` rows keep what was there before
        (for :meth:`undo_last_edit`) and what the edit pinned (for the next clustering).

        A page put somewhere by hand gets membership ``member`` and probability 1.0 (a person's
        assignment, not a model's); its map coordinates and run id stay.

        Args:
            kind: one of :attr:`EDIT_KINDS`.
            who: the user (login name, ``--by``, or ``ui``).
            payload: JSON-able description (cluster ids, page count, names); the names' previous
                state is added under ``names_before``.
            assign: ``{page id: cluster id >= 0}``, the pages the edit pins (empty for a rename).
            names: ``{cluster id: name}`` to give (stripped; stored as user-given).

        Returns:
            The edit's id.

        Raises:
            ValueError: an unknown kind, a cluster id < 0, an empty name.
            CollectionError: a page that has no cluster assignment (never clustered, or not in the
                collection); nothing is written then.
        """
        if kind not in self.EDIT_KINDS:
            raise ValueError(f"unknown edit kind {kind!r}; one of {', '.join(self.EDIT_KINDS)}")
        names = {int(k): str(v).strip() for k, v in (names or {}).items()}
        if any(not v for v in names.values()):
            raise ValueError("a cluster name cannot be empty")
        targets = {int(v) for v in assign.values()} | set(names)
        if any(t < 0 for t in targets):
            raise ValueError("an edit cannot put pages in noise (-1) or name it")
        pages = sorted(int(p) for p in assign)
        with self.transaction() as c:
            before: dict[int, tuple] = {}
            for chunk, marks in _id_chunks(pages):
                for r in c.execute(
                    f"SELECT page_id, cluster, membership, probability FROM page_clusters WHERE page_id IN ({marks})", chunk
                ):
                    before[int(r[0])] = (int(r[1]), str(r[2]), float(r[3]))
            missing = [p for p in pages if p not in before]
            if missing:
                raise CollectionError(
                    f"page {missing[0]} has no cluster in {self.root} (not a stored page, or added since the last "
                    "clustering and not placed: run `docsort cluster`)")
            names_before = {}
            for cid in names:
                row = c.execute("SELECT name, user_named FROM clusters WHERE id=?", (cid,)).fetchone()
                names_before[str(cid)] = None if row is None else [str(row[0]), int(row[1])]
            body = json.dumps({**payload, "names": {str(k): v for k, v in names.items()}, "names_before": names_before},
                              sort_keys=True, default=int)
            cur = c.execute("INSERT INTO edits(kind, payload, who, at) VALUES(?,?,?,?)", (kind, body, str(who), _now()))
            edit_id = int(cur.lastrowid)
            c.executemany(
                "INSERT INTO edit_pages(edit_id, page_id, after_cluster, before_cluster, before_membership, before_probability) "
                "VALUES(?,?,?,?,?,?)",
                [(edit_id, p, int(assign[p]), *before[p]) for p in pages],
            )
            c.executemany("UPDATE page_clusters SET cluster=?, membership='member', probability=1.0 WHERE page_id=?",
                          [(int(assign[p]), p) for p in pages])
            for cid, name in names.items():
                c.execute("INSERT INTO clusters(id, name, user_named) VALUES(?, ?, 1) "
                          "ON CONFLICT(id) DO UPDATE SET name=excluded.name, user_named=1", (cid, name))
            if targets:
                self._raise_next_cluster_id(c, max(targets) + 1)
        return edit_id

    def _edit_row(self, r) -> dict:
        keys = ("id", "kind", "payload", "who", "at", "undone", "n_pages")
        out = dict(zip(keys, r))
        out["payload"] = json.loads(out["payload"])
        out["undone"] = bool(out["undone"])
        return out

    def edits(self) -> list[dict]:
        """The edits log, oldest first: ``{"id", "kind", "payload" (dict), "who", "at" (UTC ISO),
        "undone" (bool), "n_pages" (pages the edit pinned)}``."""
        rows = self._conn.execute(
            "SELECT e.id, e.kind, e.payload, e.who, e.at, e.undone, (SELECT COUNT(*) FROM edit_pages p WHERE p.edit_id = e.id) "
            "FROM edits e ORDER BY e.id").fetchall()
        return [self._edit_row(r) for r in rows]

    def edit_pins(self, *, include_undone: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The page assignments the edits pinned, in edit order (oldest first, then page id).

        Returns:
            ``(edit_ids, page_ids, clusters)``, int64 (m,) each; without ``include_undone`` only
            the edits not undone.
        """
        where = "" if include_undone else " WHERE e.undone = 0"
        rows = self._conn.execute(
            "SELECT p.edit_id, p.page_id, p.after_cluster FROM edit_pages p JOIN edits e ON e.id = p.edit_id"
            + where + " ORDER BY p.edit_id, p.page_id").fetchall()
        arr = np.array(rows, np.int64).reshape(-1, 3)
        return arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy()

    def undo_last_edit(self) -> dict | None:
        """Undo the last edit not yet undone, in one transaction: its pages get back exactly the
        cluster, membership and probability they had before it, its names their previous state
        (a name row it created is deleted), and it is marked undone (kept in the log).

        Returns:
            The edit (as :meth:`edits` gives it, ``undone`` true), or ``None`` when there is
            nothing to undo.
        """
        with self.transaction() as c:
            row = c.execute(
                "SELECT e.id, e.kind, e.payload, e.who, e.at, e.undone, (SELECT COUNT(*) FROM edit_pages p WHERE p.edit_id = e.id) "
                "FROM edits e WHERE e.undone = 0 ORDER BY e.id DESC LIMIT 1").fetchone()
            if row is None:
                return None
            edit = self._edit_row(row)
            c.execute(
                "UPDATE page_clusters SET cluster = p.before_cluster, membership = p.before_membership, "
                "probability = p.before_probability FROM edit_pages p WHERE p.edit_id = ? AND p.page_id = page_clusters.page_id",
                (edit["id"],))
            for cid, was in (edit["payload"].get("names_before") or {}).items():
                if was is None:
                    c.execute("DELETE FROM clusters WHERE id=?", (int(cid),))
                else:
                    c.execute("INSERT INTO clusters(id, name, user_named) VALUES(?, ?, ?) "
                              "ON CONFLICT(id) DO UPDATE SET name=excluded.name, user_named=excluded.user_named",
                              (int(cid), was[0], int(was[1])))
            c.execute("UPDATE edits SET undone = 1 WHERE id = ?", (edit["id"],))
        edit["undone"] = True
        return edit

    # -- OCR text --------------------------------------------------------------------------
    def pages_needing_text(self, lang: str, *, retry_failed: bool = False, page_ids: Iterable[int] | None = None) -> list[tuple[int, int, int]]:
        """Pages that have no OCR text in ``lang`` yet, ordered by document and page number.

        A page OCR'd in another language (``eng`` vs ``eng+fra``) counts as needing text; a page
        whose OCR failed (``error`` set) is left out unless ``retry_failed``.

        Args:
            lang: the tesseract language string (``"eng"``, ``"eng+fra"``).
            retry_failed: include pages whose last OCR failed.
            page_ids: restrict to these pages (default: all pages).

        Returns:
            ``[(page_id, document_id, page_no), ...]`` (page_no 1-based).
        """
        sql = (
            "SELECT p.id, p.document_id, p.page_no FROM pages p LEFT JOIN page_text t ON t.page_id = p.id "
            "WHERE (t.page_id IS NULL OR t.lang != ?" + (" OR t.error IS NOT NULL)" if retry_failed else ")")
        )
        rows = [tuple(r) for r in self._conn.execute(sql + " ORDER BY p.document_id, p.page_no", (lang,))]
        if page_ids is not None:
            wanted = {int(i) for i in page_ids}
            rows = [r for r in rows if r[0] in wanted]
        return rows

    def document_record(self, document_id: int) -> dict:
        """A stored document: ``{"id", "sha256", "path", "format", "size_bytes", "n_pages", "paths"}``,
        ``paths`` every path it was seen under (first-seen first).

        Raises:
            CollectionError: no such document.
        """
        row = self._conn.execute(
            "SELECT id, sha256, path, format, size_bytes, n_pages FROM documents WHERE id=?", (int(document_id),)
        ).fetchone()
        if row is None:
            raise CollectionError(f"no document with id {document_id} in {self.root}")
        out = dict(zip(("id", "sha256", "path", "format", "size_bytes", "n_pages"), row))
        out["paths"] = self.document_paths(document_id) or [out["path"]]
        return out

    def store_page_texts(self, rows: Iterable[dict]) -> int:
        """Store (or replace) the OCR text of pages, all in one transaction.

        Args:
            rows: dicts with ``page_id``, ``text`` (str, "" when none), ``confidence`` (mean word
                confidence 0-100 as tesseract reports it, or None when no words), ``n_words``,
                ``lang``, ``engine`` (e.g. ``"tesseract 5.3.0"``), ``long_side_px`` (the OCR
                image's longer side, pixels), ``seconds`` (OCR wall time), and optionally
                ``error`` (why OCR failed; the text is then "").

        Returns:
            The number of rows written. The FTS5 index follows by trigger.
        """
        vals = [
            (int(r["page_id"]), str(r.get("text") or ""), None if r.get("confidence") is None else float(r["confidence"]),
             int(r.get("n_words") or 0), str(r["lang"]), str(r["engine"]), int(r["long_side_px"]), float(r.get("seconds") or 0.0),
             r.get("error"), _now())
            for r in rows
        ]
        if not vals:
            return 0
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO page_text(page_id, text, confidence, n_words, lang, engine, long_side_px, seconds, error, at) "
                "VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT(page_id) DO UPDATE SET text=excluded.text, "
                "confidence=excluded.confidence, n_words=excluded.n_words, lang=excluded.lang, engine=excluded.engine, "
                "long_side_px=excluded.long_side_px, seconds=excluded.seconds, error=excluded.error, at=excluded.at",
                vals,
            )
        return len(vals)

    def page_texts(self, page_ids: Iterable[int] | None = None) -> dict[int, dict]:
        """Stored OCR results: ``{page_id: {"text", "confidence", "n_words", "lang", "engine",
        "long_side_px", "seconds", "error", "at"}}``; pages never OCR'd are absent."""
        sql = "SELECT page_id, text, confidence, n_words, lang, engine, long_side_px, seconds, error, at FROM page_text"
        keys = ("text", "confidence", "n_words", "lang", "engine", "long_side_px", "seconds", "error", "at")
        if page_ids is None:
            return {r[0]: dict(zip(keys, r[1:])) for r in self._conn.execute(sql)}
        wanted = [int(i) for i in page_ids]
        out: dict[int, dict] = {}
        for chunk, marks in _id_chunks(wanted):
            for r in self._conn.execute(sql + f" WHERE page_id IN ({marks})", chunk):
                out[r[0]] = dict(zip(keys, r[1:]))
        return out

    def text_counts(self) -> dict[str, int]:
        """``{"pages_with_text": pages OCR'd without error (words found or not), "pages_with_words":
        of those, pages where OCR found at least one word, "ocr_failed": OCR errors, "ocr_words":
        words in all}``."""
        row = self._conn.execute(
            "SELECT COALESCE(SUM(error IS NULL), 0), COALESCE(SUM(error IS NULL AND n_words > 0), 0), "
            "COALESCE(SUM(error IS NOT NULL), 0), COALESCE(SUM(n_words), 0) FROM page_text"
        ).fetchone()
        return {"pages_with_text": int(row[0]), "pages_with_words": int(row[1]), "ocr_failed": int(row[2]), "ocr_words": int(row[3])}

    def search_text(self, query: str, limit: int = 20) -> list[tuple[int, float, str]]:
        """Full-text search over the stored OCR text (SQLite FTS5, BM25 ranking).

        Args:
            query: FTS5 query syntax (SQLite docs "FTS5", section 3): words are ANDed,
                ``"exact phrase"``, ``OR``, ``NOT``, ``prefix*``; words are stemmed (porter).
            limit: most hits returned.

        Returns:
            ``[(page_id, score, snippet), ...]`` best first; ``score`` is FTS5's ``bm25()``
            negated, so larger is better; ``snippet`` shows the match in ``[...]``.

        Raises:
            ValueError: the query is empty or not valid FTS5 syntax (the message says why).
        """
        if not query or not query.strip():
            raise ValueError("empty text query")
        try:
            rows = self._conn.execute(
                "SELECT rowid, -bm25(page_text_fts), snippet(page_text_fts, 0, '[', ']', ' … ', 12) "
                "FROM page_text_fts WHERE page_text_fts MATCH ? ORDER BY bm25(page_text_fts), rowid LIMIT ?",
                (query, int(limit)),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            raise ValueError(f"cannot search for {query!r}: {exc} (SQLite FTS5 query syntax)") from exc
        return [(int(r[0]), float(r[1]), str(r[2])) for r in rows]

    # -- near-duplicate families (issue 18) -----------------------------------------------------

    def pages_needing_maps(self, settings_token: str) -> list[tuple[int, int, int]]:
        """Pages without a page map made with ``settings_token`` (a failed attempt counts as made).

        Returns:
            ``[(page_id, document_id, page_no), ...]`` ordered by document, then page.
        """
        rows = self._conn.execute(
            "SELECT p.id, p.document_id, p.page_no FROM pages p LEFT JOIN page_maps m ON m.page_id = p.id "
            "WHERE m.page_id IS NULL OR m.settings <> ? ORDER BY p.document_id, p.page_no", (settings_token,)
        ).fetchall()
        return [(int(a), int(b), int(c)) for a, b, c in rows]

    def store_page_maps(self, rows: Iterable[tuple[int, bytes | None, bytes | None, bytes | None, str, str | None]]) -> int:
        """Store (or replace) page maps, keypoints and inks in one transaction.

        Args:
            rows: ``(page_id, map bytes or None, keypoint bytes or None, ink bytes or None,
                settings token, error or None)``; ``None`` map bytes with an error record a page
                that could not be mapped (its file is missing).

        Returns:
            The number of rows written.
        """
        blob = lambda b: None if b is None else bytes(b)  # noqa: E731
        vals = [(int(p), blob(m), blob(k), blob(i), str(t), e, _now()) for p, m, k, i, t, e in rows]
        if vals:
            with self.transaction() as c:
                c.executemany(
                    "INSERT INTO page_maps(page_id, map, keypoints, ink, settings, error, at) VALUES(?,?,?,?,?,?,?) "
                    "ON CONFLICT(page_id) DO UPDATE SET map=excluded.map, keypoints=excluded.keypoints, ink=excluded.ink, "
                    "settings=excluded.settings, error=excluded.error, at=excluded.at", vals)
        return len(vals)

    def pages_mapped_with(self, settings_token: str, page_ids: Iterable[int]) -> set[int]:
        """Those of ``page_ids`` whose page map and keypoints are stored with ``settings_token``
        (pages without, or whose map failed, left out)."""
        out: set[int] = set()
        for chunk, marks in _id_chunks([int(p) for p in page_ids]):
            out.update(int(a) for (a,) in self._conn.execute(
                f"SELECT page_id FROM page_maps WHERE settings = ? AND map IS NOT NULL AND keypoints IS NOT NULL "
                f"AND page_id IN ({marks})", (settings_token, *chunk)))
        return out

    def store_page_inks(self, rows: Iterable[tuple[int, bytes]], settings_token: str, from_tokens: Iterable[str]) -> int:
        """Add the ink to stored page maps whose map and keypoints are kept as they are, and tag
        them with ``settings_token``, in one transaction: for pages mapped by an earlier version
        whose maps and keypoints this one makes the same way
        (:func:`docsort.core.duplicates.older_settings_tokens`).

        Args:
            rows: ``(page_id, ink bytes)``; only rows stored with one of ``from_tokens`` change.

        Returns:
            The number of rows changed.
        """
        olds = list(from_tokens)
        marks = ",".join("?" * len(olds))
        vals = [(bytes(ink), str(settings_token), _now(), int(p), *olds) for p, ink in rows]
        if not vals or not olds:
            return 0
        with self.transaction() as c:
            before = c.total_changes
            c.executemany(f"UPDATE page_maps SET ink = ?, settings = ?, at = ? WHERE page_id = ? AND settings IN ({marks})", vals)
            return c.total_changes - before

    def page_inks(self, settings_token: str, page_ids: Iterable[int]) -> list[bytes | None]:
        """The stored ink BLOBs (:func:`docsort.core.duplicates.page_ink`) of ``page_ids`` made with
        ``settings_token``, in that order; ``None`` for a page without one."""
        ids = [int(p) for p in page_ids]
        got: dict[int, bytes | None] = {}
        for chunk, marks in _id_chunks(ids):
            got.update((int(a), None if b is None else bytes(b)) for a, b in self._conn.execute(
                f"SELECT page_id, ink FROM page_maps WHERE settings = ? AND map IS NOT NULL AND page_id IN ({marks})",
                (settings_token, *chunk)))
        return [got.get(p) for p in ids]

    def page_maps(self, settings_token: str, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored page maps made with ``settings_token``.

        Args:
            settings_token: the settings the maps must have been made with.
            side: the maps' side, cells (each BLOB holds ``side * side`` uint8).

        Returns:
            ``(page_ids int64 (n,), maps uint8 (n, side, side))``, ascending page id; pages whose
            map failed are left out.
        """
        rows = self._conn.execute(
            "SELECT page_id, map FROM page_maps WHERE settings = ? AND map IS NOT NULL ORDER BY page_id", (settings_token,)
        ).fetchall()
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        maps = np.frombuffer(b"".join(r[1] for r in rows), np.uint8).reshape(len(rows), side, side).copy()
        return ids, maps

    def page_keypoints(self, settings_token: str, page_ids: Iterable[int]) -> list[bytes]:
        """The stored keypoint BLOBs of ``page_ids`` (made with ``settings_token``), in that order.

        Raises:
            CollectionError: a page has no page map made with ``settings_token``.
        """
        ids = [int(p) for p in page_ids]
        got: dict[int, bytes] = {}
        for chunk, marks in _id_chunks(ids):
            got.update((int(a), bytes(b or b"")) for a, b in self._conn.execute(
                f"SELECT page_id, keypoints FROM page_maps WHERE settings = ? AND map IS NOT NULL AND page_id IN ({marks})",
                (settings_token, *chunk)))
        missing = [p for p in ids if p not in got]
        if missing:
            raise CollectionError(f"{self.root}: pages {missing[:5]} have no page map made with {settings_token!r}")
        return [got[p] for p in ids]

    def page_map_errors(self, settings_token: str) -> list[tuple[int, str]]:
        """``[(page_id, error), ...]`` of pages whose map could not be made with ``settings_token``."""
        return [(int(a), str(b)) for a, b in self._conn.execute(
            "SELECT page_id, error FROM page_maps WHERE settings = ? AND map IS NULL ORDER BY page_id", (settings_token,))]

    def store_duplicate_families(self, page_ids: np.ndarray, family: np.ndarray, similarity: np.ndarray, run: dict) -> None:
        """Replace the stored families with a new run's, in one transaction.

        Args:
            page_ids: int64 (m,) pages in families; family: int64 (m,) their family numbers;
                similarity: float (m,) each page's similarity with its family's first page.
            run: ``{"settings": dict, "pages": pages compared, "seconds": wall time}``.
        """
        vals = [(int(p), int(f), float(s)) for p, f, s in zip(page_ids, family, similarity)]
        with self.transaction() as c:
            c.execute("DELETE FROM duplicate_families")
            c.executemany("INSERT INTO duplicate_families(page_id, family, similarity) VALUES(?,?,?)", vals)
            c.execute("INSERT INTO duplicate_runs(at, settings, pages, families, seconds) VALUES(?,?,?,?,?)",
                      (_now(), json.dumps(run.get("settings", {}), sort_keys=True), int(run["pages"]),
                       len({v[1] for v in vals}), float(run.get("seconds", 0.0))))

    def duplicate_families(self):
        """The stored near-duplicate families as a ``pandas.DataFrame``, one row per page in a
        family: family, path, page, page_id, document_id, similarity; ordered by family, then page id."""
        import pandas as pd

        return pd.read_sql_query(
            "SELECT f.family, d.path, p.page_no AS page, f.page_id, p.document_id, f.similarity "
            "FROM duplicate_families f JOIN pages p ON p.id = f.page_id JOIN documents d ON d.id = p.document_id "
            "ORDER BY f.family, f.page_id", self._conn)

    def last_duplicate_run(self) -> dict | None:
        """The last ``docsort duplicates`` run: ``{"at", "settings", "pages", "families", "seconds"}``, or None."""
        row = self._conn.execute(
            "SELECT at, settings, pages, families, seconds FROM duplicate_runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        return {"at": row[0], "settings": json.loads(row[1]), "pages": int(row[2]), "families": int(row[3]), "seconds": float(row[4])}
