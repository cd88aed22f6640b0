"""Parquet shards of an ingest on Ray (issue 17): the cluster's workers write their pages under
``COLLECTION/shards/`` (:func:`write_shard`), and the collection takes each shard in with one
transaction (:class:`ShardIntake`), instead of the driver storing one document per transaction.

A shard is one Parquet file (Apache Parquet through pyarrow), one row per page, columns
:data:`COLUMNS`: the document (``sha256``, ``path``, ``format``, ``size_bytes``, ``n_pages``), the
page (``page_no``, ``width_px``, ``height_px``, ``vector`` a fixed-size list of float32,
``thumbnail`` JPEG bytes) and ``error`` (non-empty on the rows of a chunk that failed to render;
such a row may have ``page_no`` 0). Rows of one document may be spread over several shards.

Rules of the take-in:

* **documents complete**: a document is stored only once rows for all its pages ``1..n_pages``
  have been seen (in this shard or in earlier ones of the same intake); it is stored with its
  pages in the transaction of the shard that completed it. A document with an error row is not
  stored (it is reported as failed when the intake finishes).
* **idempotent**: a page seen twice (a shard written twice by a retried task, a shard taken in
  again after a crash) is taken once, and a document already stored (sha256) is skipped.
* **recorded**: a shard is deleted once it has been taken in and no incomplete document still
  needs rows from it, so a restarted ingest does not take it in again (and taking it in again
  would store nothing twice).
* **left behind**: a driver killed mid-run leaves the shards it had not taken in yet, and
  perhaps the temporary file of a shard being written; every ingest takes such leftovers in
  first, whichever way it runs (:func:`take_leftovers`), so nothing embedded is lost and no
  shard stays behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["COLUMNS", "ShardIntake", "TakeIn", "take_leftovers", "write_shard"]

#: A shard being written is ``.shard-<16 hex>.parquet.<pid>.tmp`` until it is renamed.
_TMP_PREFIX = "."

#: The shard columns, in order.
COLUMNS = ("sha256", "path", "format", "size_bytes", "n_pages", "page_no", "width_px", "height_px", "vector", "thumbnail", "error")


def write_shard(directory: str | os.PathLike[str], rows: dict) -> str:
    """Write one shard (run in a Ray worker) and return its file name.

    Args:
        directory: :meth:`docsort.store.storage.Collection.shards_dir` (the same path on every node).
        rows: column -> sequence, one entry per page, the keys of :data:`COLUMNS`; ``vector``
            float32 (n, D).

    Returns:
        ``shard-<16 hex>.parquet``, named by the sha256 of its ``(sha256, page_no)`` keys, so a
        task that Ray re-runs writes the same file again (written to a temporary file, then
        renamed: a reader never sees half a shard).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(np.asarray(rows["vector"], np.float32))
    n, d = vectors.shape
    keys = hashlib.sha256("\n".join(f"{s}:{int(p)}" for s, p in zip(rows["sha256"], rows["page_no"])).encode()).hexdigest()
    table = pa.table({
        "sha256": pa.array([str(x) for x in rows["sha256"]], pa.string()),
        "path": pa.array([str(x) for x in rows["path"]], pa.string()),
        "format": pa.array([str(x) for x in rows["format"]], pa.string()),
        "size_bytes": pa.array(np.asarray(rows["size_bytes"], np.int64)),
        "n_pages": pa.array(np.asarray(rows["n_pages"], np.int32)),
        "page_no": pa.array(np.asarray(rows["page_no"], np.int32)),
        "width_px": pa.array(np.asarray(rows["width_px"], np.int32)),
        "height_px": pa.array(np.asarray(rows["height_px"], np.int32)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), d),
        "thumbnail": pa.array([bytes(x) for x in rows["thumbnail"]], pa.binary()),
        "error": pa.array([str(x) for x in rows["error"]], pa.string()),
    })
    assert table.num_rows == n
    name = f"shard-{keys[:16]}.parquet"
    tmp = Path(directory) / f"{_TMP_PREFIX}{name}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, Path(directory) / name)
    return name


@dataclass
class TakeIn:
    """What taking shards in stored: ``stored`` sha256 -> pages stored now; ``already`` sha256s
    that were stored before (nothing written); ``pages_seen`` rows read; ``seconds`` wall time."""

    stored: dict[str, int] = field(default_factory=dict)
    already: set[str] = field(default_factory=set)
    pages_seen: int = 0
    seconds: float = 0.0

    def add(self, other: "TakeIn") -> None:
        """Add what another take-in stored and saw to this one."""
        self.stored.update(other.stored)
        self.already |= other.already
        self.pages_seen += other.pages_seen
        self.seconds += other.seconds


class ShardIntake:
    """Takes an ingest's shards into a collection, one transaction per shard (see the module's rules).

    Holds the rows of documents not complete yet (those spread over shards) between shards; the
    caller holds the collection's write lock.
    """

    def __init__(self, collection):
        self.collection = collection
        self.directory = collection.shards_dir()
        self._rows: dict[str, dict[int, tuple]] = {}  # sha256 -> page_no -> page tuple
        self._doc: dict[str, tuple[str, str, int, int]] = {}  # sha256 -> (path, format, size_bytes, n_pages)
        self._errors: dict[str, tuple[str, str]] = {}  # sha256 -> (path, error)
        self._needs: dict[str, set[str]] = {}  # shard name -> sha256s of incomplete documents with rows in it
        self.taken: set[str] = set()

    def pending(self) -> list[str]:
        """Shard files in the collection's ``shards/`` not taken in by this intake, sorted."""
        return sorted(p.name for p in self.directory.glob("shard-*.parquet") if p.name not in self.taken)

    def take(self, name: str, on_stored: Callable[[str, int], None] | None = None) -> TakeIn:
        """Take in one shard: the documents it completes are stored in one transaction.

        Args:
            name: a shard file name under ``shards/`` (from :func:`write_shard` or :meth:`pending`).
            on_stored: called with ``(sha256, pages)`` for each document stored.

        Raises:
            OSError, pyarrow.ArrowInvalid: the shard cannot be read (it is left in place).
        """
        import time

        import pyarrow.parquet as pq

        t = time.perf_counter()
        out = TakeIn()
        path = self.directory / name
        table = pq.read_table(path, columns=list(COLUMNS))
        cols = {c: table.column(c).to_pylist() for c in COLUMNS if c not in ("vector",)}
        vec = table.column("vector").combine_chunks()
        vectors = vec.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(table.num_rows, -1) if table.num_rows else None
        out.pages_seen = table.num_rows
        touched: set[str] = set()
        for j in range(table.num_rows):
            sha = cols["sha256"][j]
            if sha not in self._doc:
                self._doc[sha] = (cols["path"][j], cols["format"][j], int(cols["size_bytes"][j]), int(cols["n_pages"][j]))
            touched.add(sha)
            if cols["error"][j]:
                self._errors.setdefault(sha, (cols["path"][j], cols["error"][j]))
                continue
            page_no = int(cols["page_no"][j])
            if page_no > 0:
                self._rows.setdefault(sha, {}).setdefault(
                    page_no, (page_no, int(cols["width_px"][j]), int(cols["height_px"][j]), vectors[j].copy(), cols["thumbnail"][j]))
        ready, incomplete = [], set()
        for sha in sorted(touched):
            path_, fmt, size, n_pages = self._doc[sha]
            pages = self._rows.get(sha, {})
            if sha in self._errors or self.collection.find_document(sha) is not None:
                if sha not in self._errors:
                    out.already.add(sha)
                self._rows.pop(sha, None)
                continue
            if len(pages) == n_pages and set(pages) == set(range(1, n_pages + 1)):
                ready.append({"sha256": sha, "path": path_, "format": fmt, "size_bytes": size,
                              "pages": [pages[k] for k in sorted(pages)]})
            else:
                incomplete.add(sha)
        results = self.collection.add_documents(ready) if ready else []
        for d, res in zip(ready, results):
            self._rows.pop(d["sha256"], None)
            if res is None:
                out.already.add(d["sha256"])
            else:
                out.stored[d["sha256"]] = len(d["pages"])
                if on_stored:
                    on_stored(d["sha256"], len(d["pages"]))
        self.taken.add(name)
        self._needs[name] = incomplete
        for shard in list(self._needs):  # a shard is done once no incomplete document has rows from it
            self._needs[shard] = {sha for sha in self._needs[shard] if sha in self._rows}
            if not self._needs[shard]:
                (self.directory / shard).unlink(missing_ok=True)
                del self._needs[shard]
        out.seconds = time.perf_counter() - t
        return out

    def take_pending(self, on_stored: Callable[[str, int], None] | None = None) -> TakeIn:
        """Take in every shard of :meth:`pending` (those an earlier, interrupted run left), in order."""
        total = TakeIn()
        for name in self.pending():
            total.add(self.take(name, on_stored))
        return total

    def finish(self) -> dict[str, tuple[str, str]]:
        """End of the run: the documents seen but not stored, ``sha256 -> (path, reason)`` (an
        error row's error, or the pages missing), and every shard taken in is deleted (the
        documents not stored are done again by the next run, from their files)."""
        failed: dict[str, tuple[str, str]] = {}
        for sha, (path, _, _, n_pages) in self._doc.items():
            if self.collection.find_document(sha) is not None:
                continue
            if sha in self._errors:
                failed[sha] = self._errors[sha]
            else:
                failed[sha] = (path, f"expected {n_pages} pages, read {len(self._rows.get(sha, {}))}")
        for shard in self.taken:
            (self.directory / shard).unlink(missing_ok=True)
        self._rows.clear()
        self._needs.clear()
        return failed

    def discard_partial(self) -> int:
        """Delete the temporary files of shards whose writer died before renaming them (half a
        shard, never read: its pages are embedded again from their files); returns how many.
        Only for when no writer of this collection runs (the caller holds the write lock, and
        this run's own Ray tasks have finished or not started)."""
        partial = list(self.directory.glob(f"{_TMP_PREFIX}shard-*.tmp"))
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)


def take_leftovers(collection, on_stored: Callable[[str, int], None] | None = None) -> tuple[TakeIn, list[str]]:
    """Take in the shards an interrupted earlier ingest left in ``COLLECTION/shards/`` and delete
    them, with any half-written shard: the documents they hold whole are stored (one transaction
    per shard, the rules of :class:`ShardIntake`); the others are not, and are embedded again
    from their files by the ingest that calls this. Run by every ingest under the write lock,
    before it lists its files, so a run on one machine finishes what a killed run on Ray began.

    Args:
        collection: the :class:`~docsort.store.storage.Collection`, write lock held.
        on_stored: called with ``(sha256, pages)`` for each document stored.

    Returns:
        ``(what was stored, the shards that could not be read)``: a shard that cannot be read
        (cut short by a crash of the machine) is deleted, not taken in; its documents are
        embedded again. A collection without a ``shards/`` folder returns at once (no folder
        is created).
    """
    total = TakeIn()
    if not (Path(collection.root) / collection.SHARDS).is_dir():
        return total, []
    import pyarrow as pa

    intake = ShardIntake(collection)
    unreadable: list[str] = []
    for name in intake.pending():
        try:
            total.add(intake.take(name, on_stored))
        except (OSError, pa.ArrowException):
            unreadable.append(name)
            (intake.directory / name).unlink(missing_ok=True)
    intake.finish()
    intake.discard_partial()
    return total, unreadable
