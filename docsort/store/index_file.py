"""The collection's FAISS index files (``index.faiss``, ``index-<projection sha256>.faiss``): kept
holding exactly the stored pages (:func:`sync_index`), written atomically (:func:`save_index`).
Building and searching an index is :mod:`docsort.core.index`'s."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from docsort.config.settings import IndexSettings
from docsort.core.index import (
    IndexInfo,
    _fits,
    _kind_for,
    add_chunk,
    build_index,
    index_ids,
    index_kind,
    load_index,
    train_index,
    training_rows,
)
from docsort.store.storage import Collection, atomic_write_bytes

__all__ = ["build_in_chunks", "save_index", "sync_index"]


def save_index(index: faiss.Index, path: str | os.PathLike[str]) -> None:
    """Serialise and atomically replace ``path`` (write to a temp file, then rename)."""
    atomic_write_bytes(Path(path), faiss.serialize_index(index).tobytes())


def build_in_chunks(ids: np.ndarray, read, settings: IndexSettings) -> faiss.Index:
    """Build the index over the pages ``ids`` reading their vectors in bounded chunks.

    The same index as :func:`docsort.core.index.build_index` over all the vectors at once (the
    same seeded training rows, :func:`docsort.core.index.training_rows`, then the vectors added in
    id order), with at most the training sample and ``settings.build_chunk`` vectors in memory
    besides the index itself (issue 17: "trained on a sample and filled" in chunks). Read from
    the collection, not from an ingest's Parquet shards: the database holds every vector, and an
    index rebuilt later (wrong kind for the size, a damaged file) has no shards to read.

    Args:
        ids: int64 (n,) page ids, ascending.
        read: ``read(page_ids) -> (ids int64 (c,), vectors float32 (c, D))`` in the order asked.
        settings: the index settings (``build_chunk``: vectors per read).

    Returns:
        The filled index, ``ntotal == n``.
    """
    n = len(ids)
    rows = training_rows(settings, n)
    chunk = settings.build_chunk
    first_ids, first = read(ids[:chunk])
    if rows is None and n > chunk and _kind_for(settings, n) in ("ivf", "ivfpq"):
        rows = np.arange(n)  # trains on every vector: read them as the sample
    sample = first if rows is None else read(ids[rows])[1]
    index = train_index(first.shape[1], n, sample, settings)
    del sample
    add_chunk(index, first_ids, first)
    for start in range(chunk, n, chunk):
        add_chunk(index, *read(ids[start : start + chunk]))
    return index


def sync_index(collection: Collection, settings: IndexSettings, *, persist: bool = True, projection=None) -> tuple[faiss.Index, IndexInfo]:
    """Make the collection's index file hold exactly the stored pages, and return it.

    Without ``projection`` the file is ``index.faiss`` over the stored vectors; with one (an
    :class:`docsort.core.invariance.InvarianceProjection`) it is
    :meth:`Collection.index_path` ``(projection.sha256)`` over the projected vectors (new pages
    between fits are projected as they are added: a (n, D) x (D, dims) product).

    Adds the pages missing from the file when the file's ids are a subset of the database's and
    its type still fits the settings; otherwise rebuilds from the stored vectors, read in
    chunks of ``settings.build_chunk`` (:func:`build_in_chunks`). With
    ``persist`` (writers, holding the collection's write lock) the file is replaced atomically;
    readers pass ``persist=False`` and repair only their in-memory copy.

    Returns:
        ``(index, info)``.
    """
    path = collection.index_path(None if projection is None else projection.sha256)

    def vectors(page_ids=None):
        ids, vecs = collection.vectors(page_ids)
        return ids, (projection.transform(vecs) if projection is not None and len(ids) else vecs)

    db_ids = collection.page_ids()
    index = load_index(path)
    if index is not None and _fits(index, settings, len(db_ids)):
        have = index_ids(index)
        if len(have) == len(db_ids) and np.array_equal(np.sort(have), db_ids):
            return index, IndexInfo(index_kind(index), int(index.ntotal), "unchanged")
        have_set = np.isin(have, db_ids)
        if have_set.all() and len(np.unique(have)) == len(have):
            missing = np.setdiff1d(db_ids, have, assume_unique=True)
            ids, vecs = vectors(missing)
            if len(ids) and vecs.shape[1] == index.d:
                index.add_with_ids(vecs, ids)
                if persist:
                    save_index(index, path)
                return index, IndexInfo(index_kind(index), int(index.ntotal), "added")
    if len(db_ids) == 0:
        if persist and path.exists():
            path.unlink()
        return build_index(db_ids, np.zeros((0, 1), np.float32), settings), IndexInfo("flat", 0, "rebuilt")
    index = build_in_chunks(db_ids, vectors, settings)
    if persist:
        save_index(index, path)
    return index, IndexInfo(index_kind(index), int(index.ntotal), "rebuilt")
