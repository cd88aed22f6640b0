"""The *index* stage: a FAISS inner-product index over the L2-normalised page vectors.

Vectors have unit norm, so inner product is cosine similarity (FAISS wiki, "MetricType and
distances"). Ids in the index are the pages' row ids in the collection database
(``IndexIDMap2``), so a hit maps straight to a page.

* ``flat``: exact ``IndexFlatIP``; measured here: 100k x 288 added in 0.07 s, 11 ms per query.
* ``hnsw``: ``IndexHNSWFlat`` (Malkov & Yashunin 2018, arXiv:1603.09320) with inner product;
  recall@10 0.98 at ``efSearch`` 64 on 100k x 288 here.
* ``ivf``: ``IndexIVFFlat`` (Jégou et al. 2011 inverted file; FAISS wiki "Faster search") with
  inner product, ``4 sqrt(n)`` lists, 64 probed; at 1M x 288 here p50 1.7 ms, recall@10 0.9999,
  built in 76 s (HNSW: 6.6 ms, 0.965, 709 s). Trained on a seeded sample, so rebuilds are
  deterministic; retrained when the collection outgrows its lists.
* ``auto``: flat up to ``IndexSettings.auto_above`` pages (100k: p50 40 ms exact), then
  ``auto_kind`` (IVF).

The index is derived data: the database holds every vector, :func:`sync_index` brings the file
up to date (adding what is missing, rebuilding when the file disagrees with the database), and
the file is always replaced atomically (write to a temp file, then rename).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from docsort.config.settings import IndexSettings
from docsort.store.storage import Collection, atomic_write_bytes

__all__ = ["IndexInfo", "build_index", "load_index", "save_index", "index_ids", "index_kind", "ivf_nlist", "sync_index", "search_index"]


@dataclass(frozen=True)
class IndexInfo:
    """What :func:`sync_index` did: index type, size, and whether it was rebuilt or extended."""

    kind: str
    ntotal: int
    action: str  # "unchanged" | "added" | "rebuilt"


def _kind_for(settings: IndexSettings, n: int) -> str:
    if settings.type == "auto":
        return settings.auto_kind if n > settings.auto_above else "flat"
    return settings.type


def ivf_nlist(settings: IndexSettings, n: int) -> int:
    """Inverted lists for ``n`` vectors: ``settings.ivf_nlist`` or ``4 * sqrt(n)``, at least 1 and
    at most ``n // 39`` (FAISS k-means wants 39 training points per centroid)."""
    want = settings.ivf_nlist or int(4 * np.sqrt(max(n, 1)))
    return int(max(1, min(want, n // 39 if n >= 39 else 1)))


def build_index(ids: np.ndarray, vectors: np.ndarray, settings: IndexSettings) -> faiss.Index:
    """Build an ``IndexIDMap2`` over ``vectors`` with ``ids``.

    Args:
        ids: int64 (n,), page ids.
        vectors: float32 (n, D), unit-norm rows.
        settings: index type and HNSW / IVF parameters.

    Returns:
        A FAISS index with ``ntotal == n``. An IVF index is trained on at most ``256 * nlist``
        vectors drawn with a fixed seed (and FAISS k-means' fixed seed), so the same vectors give
        the same index.
    """
    d = vectors.shape[1]
    kind = _kind_for(settings, len(ids))
    x = np.ascontiguousarray(vectors, np.float32)
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = settings.hnsw_ef_construction
        inner.hnsw.efSearch = settings.hnsw_ef_search
    elif kind == "ivf" and len(ids):
        nlist = ivf_nlist(settings, len(ids))
        quantizer = faiss.IndexFlatIP(d)
        inner = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = x if len(x) <= 256 * nlist else x[np.sort(np.random.default_rng(0).choice(len(x), 256 * nlist, replace=False))]
        inner.train(sample)
        inner.nprobe = min(settings.ivf_nprobe, nlist)
        inner.own_fields = True
        quantizer.this.disown()
    else:
        inner = faiss.IndexFlatIP(d)
    index = faiss.IndexIDMap2(inner)
    if len(ids):
        index.add_with_ids(x, np.ascontiguousarray(ids, np.int64))
    return index


def index_kind(index: faiss.Index) -> str:
    """``flat``, ``hnsw`` or ``ivf`` for an index made by :func:`build_index`."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    return "ivf" if isinstance(inner, faiss.IndexIVF) else "flat"


def _fits(index: faiss.Index, settings: IndexSettings, n: int) -> bool:
    """The index's type is the one the settings want for ``n`` pages, and an IVF index has not
    been outgrown (fewer than half the lists ``n`` vectors call for)."""
    kind = index_kind(index)
    if kind != _kind_for(settings, n):
        return False
    if kind == "ivf":
        inner = faiss.downcast_index(index.index)
        return 2 * inner.nlist >= ivf_nlist(settings, n)
    return True


def index_ids(index: faiss.Index) -> np.ndarray:
    """The ids stored in an ``IndexIDMap2``, int64 (ntotal,), in insertion order."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def save_index(index: faiss.Index, path: str | os.PathLike[str]) -> None:
    """Serialise and atomically replace ``path`` (write to a temp file, then rename)."""
    atomic_write_bytes(Path(path), faiss.serialize_index(index).tobytes())


def load_index(path: str | os.PathLike[str]) -> faiss.Index | None:
    """Read an index file; ``None`` when it is missing or unreadable (it will be rebuilt)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
        return faiss.deserialize_index(data)
    except (OSError, RuntimeError, ValueError):
        return None


def sync_index(collection: Collection, settings: IndexSettings, *, persist: bool = True, projection=None) -> tuple[faiss.Index, IndexInfo]:
    """Make the collection's index file hold exactly the stored pages, and return it.

    Without ``projection`` the file is ``index.faiss`` over the stored vectors; with one (an
    :class:`docsort.core.invariance.InvarianceProjection`) it is
    :meth:`Collection.index_path` ``(projection.sha256)`` over the projected vectors (new pages
    between fits are projected as they are added: a (n, D) x (D, dims) product).

    Adds the pages missing from the file when the file's ids are a subset of the database's and
    its type still fits the settings; otherwise rebuilds from the stored vectors. With
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
    ids, vecs = vectors()
    if len(ids) == 0:
        if persist and path.exists():
            path.unlink()
        return build_index(ids, np.zeros((0, 1), np.float32), settings), IndexInfo("flat", 0, "rebuilt")
    index = build_index(ids, vecs, settings)
    if persist:
        save_index(index, path)
    return index, IndexInfo(index_kind(index), int(index.ntotal), "rebuilt")


def search_index(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours by inner product (= cosine for unit vectors).

    Args:
        index: from :func:`build_index` / :func:`sync_index`.
        queries: float32 (q, D).
        k: neighbours per query (clamped to the index size).

    Returns:
        ``(scores, ids)``: float32 (q, k) cosine similarities, descending, and int64 (q, k) page
        ids; -1 ids (and -inf scores) pad rows when fewer than ``k`` pages exist.
    """
    k = max(1, min(int(k), int(index.ntotal))) if index.ntotal else 1
    scores, ids = index.search(np.ascontiguousarray(queries, np.float32), k)
    return scores, ids
