"""Export: the page table as CSV / Parquet / JSON, optionally with vectors (visual, text, raw or the
clustered ones). Writes only the output file, never the collection."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from docsort import __version__
from docsort.config.settings import PipelineSettings
from docsort.core.clustering import document_clusters
from docsort.queries.vectors import active_projection, page_vectors
from docsort.store.manifest import effective_settings
from docsort.store.storage import Collection, atomic_write_bytes

#: What ``export_pages(vectors=...)`` can write.
EXPORT_VECTORS = ("clustering", "visual", "text", "raw")


def export_vectors(collection: Collection, kind: str, settings: PipelineSettings | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The page vectors of one kind, as :func:`export_pages` writes them.

    Args:
        kind: ``clustering``: what the last :func:`cluster` clustered (fused visual + text where it
            fused, else visual; through the invariance projection when one is active), ``visual``
            when never clustered; ``visual``: what search by look uses (projected when active);
            ``text``: the text model's vectors (all-zero rows for pages without usable text);
            ``raw``: the stored backbone vectors, never projected.
        settings: default the collection's (:func:`effective_settings`), with the text settings of
            the last clustering for ``clustering``.

    Returns:
        ``(ids int64 (n,), vectors float32 (n, D), meta)``, ascending page id; ``meta`` says what
        they are: kind, mode, dim, invariance sha256 (or ``None``), fusion weight, text model token.

    Raises:
        ValueError: an unknown kind. CollectionError: ``text`` and no page has usable text.
    """
    if kind not in EXPORT_VECTORS:
        raise ValueError(f"unknown vectors {kind!r}; use one of {', '.join(EXPORT_VECTORS)}")
    settings = settings or effective_settings(collection, PipelineSettings())
    projection = active_projection(collection, settings)
    if kind == "raw":
        ids, vecs = collection.vectors()
        meta = {"mode": "raw", "fusion_weight": 0.0, "text_model_token": None}
        projection = None
    else:
        mode = kind
        if kind == "clustering":
            run = collection.last_cluster_run()
            mode = run["settings"].get("features", "visual") if run else "visual"
            if run and "text" in run["settings"]:
                settings = settings.model_copy(update={"text": type(settings.text)(**run["settings"]["text"])})
        pv = page_vectors(collection, settings, mode)
        ids, vecs = pv.ids, pv.vectors
        meta = {"mode": pv.mode, "fusion_weight": pv.fusion_weight, "text_model_token": pv.text_model.token if pv.text_model else None}
        if pv.mode == "text":
            projection = None
    dim = int(vecs.shape[1]) if vecs.ndim == 2 else 0
    meta = {"vectors": kind, **meta, "dim": dim, "invariance_sha256": projection.sha256 if projection is not None else None,
            "docsort_version": __version__}
    return ids, vecs, meta


def export_pages(collection: Collection, out: str | Path, *, vectors: bool | str = False, page_ids=None) -> int:
    """Write one row per page to ``.parquet`` or ``.csv``.

    Columns: path, page, sha256, cluster, cluster_name, document_cluster, umap_x, umap_y, page_id,
    document_id, membership (``member`` | ``reassigned`` | ``noise`` | ``provisional``),
    duplicate_family (the page's near-duplicate family from the last ``docsort duplicates``, empty
    for a page in none); with
    ``vectors`` also ``vector`` (a list of D float32, Parquet) or ``f0..f{D-1}`` columns (CSV).

    ``vectors``: ``True`` or ``"clustering"`` writes the vectors the index and clustering use;
    ``"visual"``, ``"text"`` or ``"raw"`` another kind (:func:`export_vectors`). What they are
    (kind, mode, dim, invariance sha256, fusion weight) is written to the Parquet schema metadata
    under the key ``docsort`` (JSON), or for CSV to a sidecar ``OUT.json``.

    ``page_ids`` (optional) keeps only these pages' rows (``document_cluster`` is still the
    majority over all of each document's pages).

    Returns:
        The number of rows written.

    Raises:
        ValueError: an unsupported file extension or vectors kind.
    """
    import json

    import pandas as pd

    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"{out}: export to .parquet or .csv")
    kind = "clustering" if vectors is True else (vectors or None)
    if kind is not None and kind not in EXPORT_VECTORS:
        raise ValueError(f"unknown vectors {kind!r}; use one of {', '.join(EXPORT_VECTORS)}")
    df = collection.page_table()
    clustered = df[df["cluster"].notna()]
    doc_cluster = document_clusters(clustered["document_id"].to_numpy(), clustered["cluster"].to_numpy(dtype=np.int64)) if len(clustered) else {}
    df["document_cluster"] = df["document_id"].map(doc_cluster).astype("Int64")
    fams = collection.duplicate_families()
    df["duplicate_family"] = df["page_id"].map(dict(zip(fams["page_id"], fams["family"]))).astype("Int64")
    cols = ["path", "page", "sha256", "cluster", "cluster_name", "document_cluster", "umap_x", "umap_y", "page_id", "document_id",
            "membership", "duplicate_family"]
    df = df[cols]
    if page_ids is not None:
        df = df[df["page_id"].isin([int(i) for i in page_ids])]
    df = df.reset_index(drop=True)
    meta = None
    if kind is not None:
        ids, vecs, meta = export_vectors(collection, kind)
        row = {int(i): r for r, i in enumerate(ids)}
        order = np.array([row[int(p)] for p in df["page_id"]], dtype=np.int64)
        vecs = vecs[order] if len(order) else vecs
        if out.suffix.lower() == ".parquet":
            df = df.assign(vector=list(vecs))
        else:
            df = pd.concat([df, pd.DataFrame(vecs, columns=[f"f{i}" for i in range(vecs.shape[1])])], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(df, preserve_index=False)
        if meta is not None:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"docsort": json.dumps(meta).encode()})
        pq.write_table(table, out)
    else:
        df.to_csv(out, index=False)
        if meta is not None:
            atomic_write_bytes(out.with_name(out.name + ".json"), json.dumps(meta, indent=2).encode() + b"\n")
    return len(df)


def assignments_csv(collection: Collection, page_ids=None) -> bytes:
    """The page-level cluster assignments as CSV bytes (UTF-8), exactly what ``docsort export X.csv`` writes.

    Columns: path, page, sha256, cluster, cluster_name, document_cluster, umap_x, umap_y, page_id,
    document_id, membership, duplicate_family (one row per page; cluster empty for pages not yet
    clustered).

    Args:
        page_ids: only these pages' rows (the app's map selection), in the export's order;
            default every page.
    """
    with tempfile.TemporaryDirectory(prefix="docsort-export-") as tmp:
        out = Path(tmp) / "clusters.csv"
        export_pages(collection, out, page_ids=page_ids)
        return out.read_bytes()
