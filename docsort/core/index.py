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
* ``ivfpq``: ``IndexIVFPQ`` (Jégou, Douze & Schmid 2011, "Product quantization for nearest
  neighbor search", IEEE TPAMI 33(1); FAISS wiki "Lower memory footprint"): the same inverted lists,
  each vector stored as ``pq_m`` one-byte codes of its residual instead of 288 float32s
  (1,152 bytes), so a 10M-page index fits in a few hundred MB instead of 11.5 GB, for some recall.
* ``auto``: flat up to ``IndexSettings.auto_above`` pages (100k: p50 40 ms exact), then
  ``auto_kind`` (IVF), and IVF-PQ above ``IndexSettings.pq_above``.

:func:`train_index` makes the empty, trained index and :func:`add_chunk` fills it, so an index
can be filled in bounded-size chunks (:func:`docsort.store.index_file.sync_index` reads the
collection in chunks); :func:`build_index` is the two in one call and gives the same index.

The index is derived data: the database holds every vector, :func:`docsort.store.index_file.sync_index` brings the file
up to date (adding what is missing, rebuilding when the file disagrees with the database), and
the file is always replaced atomically (write to a temp file, then rename).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import faiss
import numpy as np

from docsort.config.settings import IndexSettings

__all__ = ["IndexInfo", "add_chunk", "build_index", "load_index", "index_ids", "index_kind", "ivf_nlist", "pq_params",
           "search_index", "train_index", "training_rows"]


@dataclass(frozen=True)
class IndexInfo:
    """What :func:`docsort.store.index_file.sync_index` did: index type, size, and whether it was rebuilt or extended."""

    kind: str
    ntotal: int
    action: str  # "unchanged" | "added" | "rebuilt"


def _kind_for(settings: IndexSettings, n: int) -> str:
    if settings.type == "auto":
        if n > settings.pq_above:
            return "ivfpq"
        return settings.auto_kind if n > settings.auto_above else "flat"
    return settings.type


def ivf_nlist(settings: IndexSettings, n: int) -> int:
    """Inverted lists for ``n`` vectors: ``settings.ivf_nlist`` or ``4 * sqrt(n)``, at least 1 and
    at most ``n // 39`` (FAISS k-means wants 39 training points per centroid)."""
    want = settings.ivf_nlist or int(4 * np.sqrt(max(n, 1)))
    return int(max(1, min(want, n // 39 if n >= 39 else 1)))


def pq_params(settings: IndexSettings, d: int, n_train: int) -> tuple[int, int]:
    """``(m, nbits)`` of the product quantizer for ``d``-dimensional vectors trained on ``n_train``.

    ``m``: the largest divisor of ``d`` not above ``settings.pq_m`` (FAISS needs ``d % m == 0``).
    ``nbits``: ``settings.pq_nbits``, lowered for small training sets so that each of the
    ``2**nbits`` centroids of a sub-quantizer has 39 training points (FAISS k-means' minimum; it
    warns below it), at least 1.
    """
    m = max(k for k in range(1, min(settings.pq_m, d) + 1) if d % k == 0)
    nbits = settings.pq_nbits
    while nbits > 1 and n_train < 39 * 2**nbits:
        nbits -= 1
    return m, nbits


def training_rows(settings: IndexSettings, n: int) -> np.ndarray | None:
    """Row positions (int64, sorted) of the seeded training sample of ``n`` vectors, or ``None``
    when the index kind for ``n`` needs no training (flat, HNSW) or trains on all ``n`` rows.

    At most ``256 * nlist`` rows (FAISS k-means' ``max_points_per_centroid``: it samples down to
    that itself), drawn with ``numpy.random.default_rng(0)``, so a rebuild trains on the same rows."""
    if _kind_for(settings, n) not in ("ivf", "ivfpq") or n == 0:
        return None
    cap = 256 * ivf_nlist(settings, n)
    return None if n <= cap else np.sort(np.random.default_rng(0).choice(n, cap, replace=False))


def train_index(d: int, n: int, sample: np.ndarray, settings: IndexSettings) -> faiss.Index:
    """An empty ``IndexIDMap2`` of the kind ``settings`` want for ``n`` vectors, trained.

    Args:
        d: vector dimension.
        n: how many vectors the index will hold (sets the kind and the IVF lists).
        sample: float32 (s, d) unit-norm training vectors: the rows :func:`training_rows` names
            (all ``n`` vectors when it says ``None``); ignored by flat and HNSW.
        settings: index type and HNSW / IVF / PQ parameters.

    Returns:
        The trained, empty index; fill it with :func:`add_chunk`.
    """
    kind = _kind_for(settings, n)
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(d, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = settings.hnsw_ef_construction
        inner.hnsw.efSearch = settings.hnsw_ef_search
    elif kind in ("ivf", "ivfpq") and n:
        nlist = ivf_nlist(settings, n)
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            inner = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m, nbits = pq_params(settings, d, len(sample))
            inner = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        inner.train(np.ascontiguousarray(sample, np.float32))
        inner.nprobe = min(settings.ivf_nprobe, nlist)
        inner.own_fields = True
        quantizer.this.disown()
    else:
        inner = faiss.IndexFlatIP(d)
    return faiss.IndexIDMap2(inner)


def add_chunk(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Add ``vectors`` (float32 (c, D), unit-norm) with ``ids`` (int64 (c,)) to ``index``."""
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))


def build_index(ids: np.ndarray, vectors: np.ndarray, settings: IndexSettings) -> faiss.Index:
    """Build an ``IndexIDMap2`` over ``vectors`` with ``ids``.

    Args:
        ids: int64 (n,), page ids.
        vectors: float32 (n, D), unit-norm rows.
        settings: index type and HNSW / IVF / PQ parameters.

    Returns:
        A FAISS index with ``ntotal == n``. An IVF or IVF-PQ index is trained on at most
        ``256 * nlist`` vectors drawn with a fixed seed (:func:`training_rows`; and FAISS k-means'
        fixed seed), so the same vectors give the same index.
    """
    x = np.ascontiguousarray(vectors, np.float32)
    rows = training_rows(settings, len(ids))
    index = train_index(x.shape[1], len(ids), x if rows is None else x[rows], settings)
    add_chunk(index, ids, x)
    return index


def index_kind(index: faiss.Index) -> str:
    """``flat``, ``hnsw``, ``ivf`` or ``ivfpq`` for an index made by :func:`build_index`."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVFPQ):
        return "ivfpq"
    return "ivf" if isinstance(inner, faiss.IndexIVF) else "flat"


def _fits(index: faiss.Index, settings: IndexSettings, n: int) -> bool:
    """The index's type is the one the settings want for ``n`` pages, and an IVF index has not
    been outgrown (fewer than half the lists ``n`` vectors call for)."""
    kind = index_kind(index)
    if kind != _kind_for(settings, n):
        return False
    if kind in ("ivf", "ivfpq"):
        inner = faiss.downcast_index(index.index)
        return 2 * inner.nlist >= ivf_nlist(settings, n)
    return True


def index_ids(index: faiss.Index) -> np.ndarray:
    """The ids stored in an ``IndexIDMap2``, int64 (ntotal,), in insertion order."""
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def load_index(path: str | os.PathLike[str]) -> faiss.Index | None:
    """Read an index file; ``None`` when it is missing or unreadable (it will be rebuilt)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
        return faiss.deserialize_index(data)
    except (OSError, RuntimeError, ValueError):
        return None


def search_index(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours by inner product (= cosine for unit vectors).

    Args:
        index: from :func:`build_index` / :func:`docsort.store.index_file.sync_index`.
        queries: float32 (q, D).
        k: neighbours per query (clamped to the index size).

    Returns:
        ``(scores, ids)``: float32 (q, k) cosine similarities, descending, and int64 (q, k) page
        ids; -1 ids (and -inf scores) pad rows when fewer than ``k`` pages exist.
    """
    k = max(1, min(int(k), int(index.ntotal))) if index.ntotal else 1
    scores, ids = index.search(np.ascontiguousarray(queries, np.float32), k)
    return scores, ids
