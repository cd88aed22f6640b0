"""A token that changes whenever anyone commits to a collection's database: SQLite's
``PRAGMA data_version`` read on a watcher connection of its own.

SQLite documents that two ``PRAGMA data_version`` results of one connection differ when another
connection, of this process or another, committed in between (https://sqlite.org/pragma.html#pragma_data_version).
The watcher connection is read-only and never writes, so every commit is "another connection's": the
counter moves for the app's own writes, the re-cluster thread's and a CLI ingest in another process alike.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from docsort.store.storage import Collection

__all__ = ["data_version", "text_state"]

_lock = threading.Lock()
#: {database path: the watcher connection}, one per database for the life of the process.
_watchers: dict[str, sqlite3.Connection] = {}


def _watcher(db: Path) -> sqlite3.Connection:
    key = str(db.resolve())
    con = _watchers.get(key)
    if con is None:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
        _watchers[key] = con
    return con


def data_version(collection: Collection) -> tuple[int, ...]:
    """A token that changes whenever any connection commits to ``collection``'s database.

    Costs one ``PRAGMA data_version`` on the watcher connection (microseconds). Equal tokens mean
    nothing was committed in between; use it as a cache key for data read from the collection.

    Returns:
        ``(id of the watcher connection, data_version)``: ints; the first tells tokens of a reopened
        watcher apart.

    Raises:
        CollectionError: the database cannot be opened.
    """
    from docsort.store.storage import CollectionError

    db = collection.root / Collection.DB
    with _lock:
        try:
            con = _watcher(db)
            (n,) = con.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as exc:
            _watchers.pop(str(db.resolve()), None)
            raise CollectionError(f"{db}: cannot read: {exc}") from exc
        return (id(con), int(n))


def text_state(collection: Collection) -> tuple:
    """A token of the stored OCR text and of the page set: (pages with text, total text length,
    total words, latest OCR time, total confidence, pages, largest page id). It changes when a page's
    text or the pages change; the key of a text model fitted in memory (:mod:`docsort.queries.vectors`)."""
    text = collection.query("SELECT COUNT(*), TOTAL(LENGTH(text)), TOTAL(n_words), MAX(at), TOTAL(confidence) FROM page_text")[0]
    pages = collection.query("SELECT COUNT(*), MAX(id) FROM pages")[0]  # the visual mean is part of the model
    return (*text, *pages)
