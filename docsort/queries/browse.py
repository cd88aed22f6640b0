"""Read-side helpers for browsing a collection: galleries, paging, uploads, export, sorting.

The Streamlit app (``app.py``) is a thin shell over these functions and over
:mod:`docsort.jobs` / :mod:`docsort.queries`; nothing here re-implements ingest, clustering or search. They take an open
:class:`~docsort.store.storage.Collection` and, where a caller already holds it, the collection's page
table (``Collection.page_table()``) so a UI can read it once per change instead of once per call.

* :func:`cluster_pages` / :func:`representative_pages` / :func:`page_slice`: a cluster's pages
  ordered by cosine similarity to the cluster centre (its most typical pages first), and paging.
* :func:`document_assignments` / :func:`assignments_csv`: cluster assignments per document / page.
* :func:`sort_into_folders`: copy (never move) every document into ``OUT/<cluster name>/``.
* :func:`sanitise_name` / :func:`save_upload` / :func:`ingest_uploads`: files that arrive with a
  name chosen by someone else (a browser upload) are stored under the collection with a safe name
  and ingested with :func:`docsort.jobs.ingest.ingest`.
* :func:`data_version`: a cheap token that changes whenever any process writes the collection."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from docsort.store.storage import Collection, CollectionError
from docsort.store.version import data_version as _store_data_version


def _isna(value) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


#: The cluster label HDBSCAN gives to noise (outlier) pages.
NOISE = -1


_TABLE_COLUMNS = ["page_id", "document_id", "path", "file", "page", "cluster", "cluster_name", "probability", "similarity"]


def data_version(collection: Collection) -> tuple[int, ...]:
    """A token that changes whenever any process commits to the collection's database
    (:func:`docsort.store.version.data_version`: SQLite's ``PRAGMA data_version``), so it also sees
    writes made by the CLI in another process. Use it as a cache key for data read from the collection.

    Returns:
        A tuple of ints (equal tokens mean nothing was written in between).
    """
    return _store_data_version(collection)


def cluster_label(cluster: int | None, name: str | None = None) -> str:
    """How a cluster is shown: its name, ``"noise"`` for -1, ``"not yet clustered"`` for ``None``."""
    if cluster is None or _isna(cluster):
        return "not yet clustered"
    if int(cluster) < 0:
        return "noise"
    return str(name) if name else f"cluster {int(cluster)}"


def added_since_clustering(table):
    """Boolean mask over ``Collection.page_table()`` rows: pages added after the last clustering
    run, i.e. not clustered at all or only placed provisionally (``membership == "provisional"``,
    UMAP ``transform`` + ``hdbscan.approximate_predict`` at ingest) until the next re-cluster."""
    mask = table["cluster"].isna()
    if "membership" in table.columns:
        mask = mask | (table["membership"] == "provisional")
    return mask


def _members(table, cluster: int | None):
    if cluster is None:
        return table[added_since_clustering(table)]
    return table[table["cluster"].notna() & (table["cluster"].fillna(-2) == int(cluster))]


def cluster_pages(collection: Collection, cluster: int | None, *, table=None):
    """All pages of a cluster, the most typical first.

    For a real cluster (id >= 0) pages are ordered by the cosine similarity of their stored feature
    vector to the cluster centre (the L2-normalised mean of its members' unit vectors), highest
    first, ties by page id. Noise (-1) and not-yet-clustered (``None``) pages have no centre: they
    come in page-id order (the order they were added) with ``similarity`` NaN.

    Args:
        collection: an open collection.
        cluster: cluster id (>= 0), :data:`NOISE` (-1), or ``None`` for pages added after the last
            clustering run (unclustered or provisional, see :func:`added_since_clustering`).
        table: ``collection.page_table()`` if the caller already has it (read otherwise).

    Returns:
        A ``pandas.DataFrame`` with columns page_id (int64), document_id (int64), path (str),
        file (str, the path's base name), page (int64, 1-based), cluster (Int64, <NA> when not
        clustered), cluster_name (str or None), probability (float64 HDBSCAN membership in [0, 1],
        NaN when not clustered), similarity (float64 cosine similarity to the centre in [-1, 1]);
        index 0..n-1. Empty (same columns) when noise or unclustered has no pages.

    Raises:
        CollectionError: ``cluster`` >= 0 names no cluster of the stored clustering.
    """
    import pandas as pd

    table = collection.page_table() if table is None else table
    rows = _members(table, cluster).copy()
    if cluster is not None and int(cluster) >= 0 and rows.empty:
        raise CollectionError(f"no cluster {int(cluster)} in {collection.root}")
    rows["file"] = [Path(p).name for p in rows["path"]]
    rows["similarity"] = np.nan
    if cluster is not None and int(cluster) >= 0:
        _, vecs = collection.vectors(rows["page_id"].to_numpy(dtype=np.int64))
        centre = vecs.astype(np.float64).mean(axis=0)
        centre /= max(float(np.linalg.norm(centre)), 1e-12)
        rows["similarity"] = vecs.astype(np.float64) @ centre
        rows = rows.sort_values(["similarity", "page_id"], ascending=[False, True], kind="stable")
    else:
        rows = rows.sort_values("page_id", kind="stable")
    rows = rows[_TABLE_COLUMNS].reset_index(drop=True)
    rows["probability"] = pd.to_numeric(rows["probability"], errors="coerce").astype("float64")
    return rows


def representative_pages(collection: Collection, cluster: int | None, n: int = 12, *, table=None):
    """The ``n`` pages nearest the cluster's centre (see :func:`cluster_pages`; same columns).

    Raises:
        ValueError: ``n`` < 1.
        CollectionError: no such cluster.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return cluster_pages(collection, cluster, table=table).head(n).reset_index(drop=True)


def page_slice(frame, page: int, per_page: int):
    """One page of a long listing (1-based ``page``, clamped to the valid range).

    Args:
        frame: any ``pandas.DataFrame`` (e.g. from :func:`cluster_pages`).
        page: 1-based page number; values outside ``1..n_pages`` are clamped.
        per_page: rows per page.

    Returns:
        ``(rows, n_pages)``: the rows of that page (index kept) and the number of pages (at least 1).

    Raises:
        ValueError: ``per_page`` < 1.
    """
    if per_page < 1:
        raise ValueError(f"per_page must be at least 1, got {per_page}")
    n_pages = max(1, -(-len(frame) // per_page))
    page = min(max(int(page), 1), n_pages)
    start = (page - 1) * per_page
    return frame.iloc[start : start + per_page], n_pages


def document_assignments(collection: Collection, *, table=None):
    """One row per document with its document-level cluster (the majority of its pages).

    Returns:
        A ``pandas.DataFrame`` ordered by document_id with columns document_id (int64), path (str),
        file (str), sha256 (str), pages (int64, number of pages), cluster (Int64: id, -1 noise, <NA>
        when none of its pages is clustered yet), cluster_name (str: the cluster's name, "noise" or
        "not yet clustered").
    """
    import pandas as pd

    from docsort.core.clustering import document_clusters

    table = collection.page_table() if table is None else table
    if table.empty:
        return pd.DataFrame(
            {c: pd.Series(dtype=t) for c, t in [("document_id", "int64"), ("path", "object"), ("file", "object"),
                                               ("sha256", "object"), ("pages", "int64"), ("cluster", "Int64"),
                                               ("cluster_name", "object")]}
        )
    docs = table.groupby("document_id", sort=True).agg(path=("path", "first"), sha256=("sha256", "first"), pages=("page_id", "size")).reset_index()
    clustered = table[table["cluster"].notna()]
    majority = (
        document_clusters(clustered["document_id"].to_numpy(), clustered["cluster"].to_numpy(dtype=np.int64))
        if len(clustered)
        else {}
    )
    names = dict(zip(clustered["cluster"].astype(int), clustered["cluster_name"])) if len(clustered) else {}
    docs["file"] = [Path(p).name for p in docs["path"]]
    docs["cluster"] = pd.array([majority.get(int(d)) for d in docs["document_id"]], dtype="Int64")
    docs["cluster_name"] = [cluster_label(majority.get(int(d)), names.get(majority.get(int(d)))) for d in docs["document_id"]]
    return docs[["document_id", "path", "file", "sha256", "pages", "cluster", "cluster_name"]]


def selection_page_ids(points: Iterable[dict]) -> list[int]:
    """Page ids of the points selected in the cluster map, in selection order, without repeats.

    Args:
        points: the ``selection.points`` list of a Streamlit Plotly chart event; each point's
            ``customdata`` holds the page id first (a list, or the scalar itself).

    Returns:
        The page ids as ints; points without ``customdata`` are skipped.
    """
    out: dict[int, None] = {}
    for point in points or []:
        data = point.get("customdata") if isinstance(point, dict) else None
        if data is None:
            continue
        value = data[0] if isinstance(data, (list, tuple)) else data
        try:
            out[int(value)] = None
        except (TypeError, ValueError):
            continue
    return list(out)
