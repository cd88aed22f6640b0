"""Read-side helpers for browsing a collection: galleries, paging, uploads, export, sorting.

The Streamlit app (``app.py``) is a thin shell over these functions and over
:mod:`docsort.jobs.pipeline`; nothing here re-implements ingest, clustering or search. They take an open
:class:`~docsort.store.storage.Collection` and, where a caller already holds it, the collection's page
table (``Collection.page_table()``) so a UI can read it once per change instead of once per call.

* :func:`cluster_pages` / :func:`representative_pages` / :func:`page_slice`: a cluster's pages
  ordered by cosine similarity to the cluster centre (its most typical pages first), and paging.
* :func:`document_assignments` / :func:`assignments_csv`: cluster assignments per document / page.
* :func:`sort_into_folders`: copy (never move) every document into ``OUT/<cluster name>/``.
* :func:`sanitise_name` / :func:`save_upload` / :func:`ingest_uploads`: files that arrive with a
  name chosen by someone else (a browser upload) are stored under the collection with a safe name
  and ingested with :func:`docsort.jobs.pipeline.ingest`.
* :func:`data_version`: a cheap token that changes whenever any process writes the collection.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from docsort.store.storage import Collection, CollectionError, atomic_write_bytes

__all__ = [
    "NOISE",
    "added_since_clustering",
    "UPLOADS_DIR",
    "UPLOAD_EXTENSIONS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "UploadOutcome",
    "SortReport",
    "data_version",
    "cluster_label",
    "cluster_pages",
    "representative_pages",
    "page_slice",
    "document_assignments",
    "assignments_csv",
    "folder_names",
    "sort_into_folders",
    "sanitise_name",
    "save_upload",
    "ingest_uploads",
    "selection_page_ids",
    "map_figure",
]

#: The cluster label HDBSCAN gives to noise (outlier) pages.
NOISE = -1

#: Folder, inside the collection directory, that holds uploaded files (they are the stored
#: documents' sources afterwards, so they stay there).
UPLOADS_DIR = "uploads"

#: File extensions accepted from an upload (the content is still checked by the pages stage).
UPLOAD_EXTENSIONS = (".pdf", ".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: Default cap on one uploaded file, bytes (the app's ``server.maxUploadSize`` is the same 200 MB).
DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024

_TABLE_COLUMNS = ["page_id", "document_id", "path", "file", "page", "cluster", "cluster_name", "probability", "similarity"]


# ---------------------------------------------------------------------------------------------
# change detection and labels
# ---------------------------------------------------------------------------------------------


def data_version(collection: Collection) -> tuple[int, ...]:
    """A token that changes whenever any process commits to the collection's database.

    Built from the size and modification time (ns) of ``docsort.sqlite`` and its WAL file, so it
    costs two ``stat`` calls and also sees writes made by the CLI in another process. Use it as a
    cache key for data read from the collection.

    Returns:
        A tuple of ints (equal tokens mean nothing was written in between).
    """
    out: list[int] = []
    for name in (Collection.DB, Collection.DB + "-wal"):
        try:
            st = os.stat(collection.root / name)
            out += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            out += [0, 0]
    return tuple(out)


def cluster_label(cluster: int | None, name: str | None = None) -> str:
    """How a cluster is shown: its name, ``"noise"`` for -1, ``"not yet clustered"`` for ``None``."""
    if cluster is None or _isna(cluster):
        return "not yet clustered"
    if int(cluster) < 0:
        return "noise"
    return str(name) if name else f"cluster {int(cluster)}"


# ---------------------------------------------------------------------------------------------
# cluster galleries
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# assignments and export
# ---------------------------------------------------------------------------------------------


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


def assignments_csv(collection: Collection) -> bytes:
    """The page-level cluster assignments as CSV bytes (UTF-8), exactly what ``docsort export X.csv`` writes.

    Columns: path, page, sha256, cluster, cluster_name, document_cluster, umap_x, umap_y, page_id,
    document_id (one row per page; cluster empty for pages not yet clustered).
    """
    from docsort.jobs.pipeline import export_pages

    with tempfile.TemporaryDirectory(prefix="docsort-export-") as tmp:
        out = Path(tmp) / "clusters.csv"
        export_pages(collection, out)
        return out.read_bytes()


def folder_names(clusters: dict[int | None, str | None]) -> dict[int | None, str]:
    """Safe, distinct folder names for clusters.

    Args:
        clusters: ``{cluster id: name}``; -1 is noise, ``None`` is "not yet clustered".

    Returns:
        ``{cluster id: folder name}``: the name with ``/`` and ``\\`` replaced by ``_``, passed
        through :func:`sanitise_name` (noise becomes
        ``noise``, unclustered ``not yet clustered``, an unusable name ``cluster N``); when two
        clusters would share a folder, the later ids get `` (N)`` appended.
    """
    out: dict[int | None, str] = {}
    used: set[str] = set()
    order = sorted(clusters, key=lambda c: (c is None, -1 if c is None else c))
    for cid in order:
        if cid is None:
            base = "not yet clustered"
        elif cid < 0:
            base = "noise"
        else:
            # A name is a label, not a path: separators become "_" instead of cutting the name.
            label = re.sub(r"[\\/]", "_", clusters[cid] or "")
            base = sanitise_name(label or f"cluster {cid}", fallback=f"cluster {cid}")
        name = base
        if name.casefold() in used:
            name = sanitise_name(f"{base} ({cid})", fallback=f"cluster {cid}")
        used.add(name.casefold())
        out[cid] = name
    return out


@dataclass
class SortReport:
    """What :func:`sort_into_folders` did.

    Attributes:
        out_dir: the output folder (absolute).
        copied: documents copied now.
        already_there: documents whose identical copy (same sha256) was already in place.
        missing: ``(stored path, reason)`` for documents with no readable, unchanged source file.
        folders: ``{folder name: documents in it}`` (copied or already there).
    """

    out_dir: Path
    copied: int = 0
    already_there: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)
    folders: dict[str, int] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    from docsort.core.pages import sha256_file

    return sha256_file(path)


def sort_into_folders(
    collection: Collection,
    out_dir: str | os.PathLike[str],
    *,
    table=None,
    on_progress: Callable[[int, int], None] | None = None,
    folder_of: dict[int, str] | None = None,
) -> SortReport:
    """Copy (never move) every document into ``out_dir/<cluster name>/<file name>``.

    Each document goes to the folder of its document-level cluster (the majority of its pages,
    see :func:`document_assignments`); noise documents go to ``noise/``, documents added since the
    last clustering to ``not yet clustered/``. Folder names come from :func:`folder_names`. The
    source is the first of the document's recorded paths whose bytes still have the stored sha256
    (a changed or deleted file is reported, never copied). A file of the same name but other
    content already in the folder is not overwritten: the copy is named ``STEM-<sha256[:8]>SUFFIX``.
    Re-running is idempotent (identical copies are counted as ``already_there``). Each copy is
    written to a temporary file in the folder and renamed into place.

    Args:
        collection: an open collection.
        out_dir: the output folder; created if missing. It must not be inside the collection.
        table: ``collection.page_table()`` if already read.
        on_progress: called with ``(documents_done, documents_total)`` after each document.
        folder_of: ``{document_id: folder name}`` to sort by something other than clusters
            (:func:`docsort.jobs.classify.sort_by_type` sorts by document type); names must already be
            safe (e.g. from :func:`folder_names`). Documents missing from it are not copied.

    Returns:
        A :class:`SortReport`.

    Raises:
        ValueError: ``out_dir`` is inside the collection directory, or is an existing file.
        OSError: the output folder cannot be created or written.
    """
    out = Path(out_dir).expanduser().resolve()
    root = collection.root.resolve()
    if out == root or root in out.parents:
        raise ValueError(f"{out}: the output folder must not be inside the collection ({root})")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    docs = document_assignments(collection, table=table)
    names = {None if c is None or _isna(c) else int(c): n for c, n in zip(docs["cluster"], docs["cluster_name"])}
    folders = folder_names(names)
    if folder_of is not None:
        docs = docs[docs["document_id"].isin(list(folder_of))]
    report = SortReport(out_dir=out)
    total = len(docs)
    for i, row in enumerate(docs.itertuples(index=False)):
        cid = None if _isna(row.cluster) else int(row.cluster)
        fname = folders[cid] if folder_of is None else folder_of[int(row.document_id)]
        folder = out / fname
        src = None
        for candidate in collection.document_paths(int(row.document_id)) or [row.path]:
            p = Path(candidate)
            try:
                if p.is_file() and _sha256(p) == row.sha256:
                    src = p
                    break
            except OSError:
                continue
        if src is None:
            report.missing.append((row.path, "source file missing or changed since it was ingested"))
        else:
            folder.mkdir(parents=True, exist_ok=True)
            name = sanitise_name(src.name, fallback=f"document-{row.sha256[:12]}")
            dst = folder / name
            if dst.exists():
                alt = folder / f"{Path(name).stem}-{row.sha256[:8]}{Path(name).suffix}"
                if dst.is_file() and _sha256(dst) == row.sha256:
                    alt = None
                elif alt.exists() and alt.is_file() and _sha256(alt) == row.sha256:
                    alt = None
                if alt is None:
                    report.already_there += 1
                    report.folders[fname] = report.folders.get(fname, 0) + 1
                    if on_progress:
                        on_progress(i + 1, total)
                    continue
                dst = alt
            fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=folder)
            os.close(fd)
            try:
                shutil.copy2(src, tmp)
                os.replace(tmp, dst)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            report.copied += 1
            report.folders[fname] = report.folders.get(fname, 0) + 1
        if on_progress:
            on_progress(i + 1, total)
    return report


def _isna(value) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------
# uploads
# ---------------------------------------------------------------------------------------------

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_SAFE_PUNCT = set(" ._-()+,#@&=[]")


def _clean(name: str) -> str:
    text = unicodedata.normalize("NFKC", str(name))
    text = re.split(r"[\\/]", text)[-1]
    text = "".join(ch if (ch.isalnum() or ch in _SAFE_PUNCT) else "_" for ch in text)
    text = re.sub(r"\s+", " ", text).strip(" .")
    return text if text.strip("_ .") else ""


def sanitise_name(name: str, *, fallback: str = "upload", max_len: int = 120) -> str:
    """A file or folder name that is safe to join onto a directory.

    Keeps only the last path component (after ``/`` or ``\\``), NFKC-normalises it, replaces every
    character that is not a letter, digit or one of `` ._-()+,#@&=[]`` with ``_`` (so control
    characters, ``:`` and path separators never survive), collapses whitespace, strips leading and
    trailing dots and spaces (no ``..``, no hidden files), avoids Windows device names, and caps the
    length at ``max_len`` characters keeping the extension.

    Args:
        name: the untrusted name (e.g. what a browser sent).
        fallback: used when nothing usable is left; it is sanitised too.
        max_len: longest result, characters (>= 16).

    Returns:
        A non-empty name without path separators that is neither ``.`` nor ``..``.
    """
    max_len = max(16, int(max_len))
    text = _clean(name) or _clean(fallback) or "upload"
    stem, dot, suffix = text.rpartition(".")
    if not dot or not stem or len(suffix) > 10:
        stem, suffix = text, ""
    if stem.split(" ")[0].casefold() in _WINDOWS_RESERVED:
        stem = "_" + stem
    suffix = f".{suffix}" if suffix else ""
    stem = stem[: max_len - len(suffix)].rstrip(" .") or "upload"
    return stem + suffix


def save_upload(
    collection_root: str | os.PathLike[str],
    name: str,
    data: bytes,
    *,
    max_bytes: int | None = DEFAULT_MAX_UPLOAD_BYTES,
) -> Path:
    """Store uploaded bytes under the collection as ``uploads/<sha256[:16]>/<sanitised name>``.

    The client's name only ever contributes one sanitised path component (:func:`sanitise_name`);
    the folder is derived from the content's sha256, so two uploads with the same name never
    collide and the stored document keeps a readable file name. Writing is atomic; storing the
    same bytes under the same name again reuses the file.

    Args:
        collection_root: the collection directory.
        name: the client's file name (untrusted).
        data: the file's bytes.
        max_bytes: largest accepted size, bytes (``None``: no limit).

    Returns:
        The absolute path of the stored file.

    Raises:
        ValueError: the upload is empty, larger than ``max_bytes``, or its name does not end in
            one of :data:`UPLOAD_EXTENSIONS`.
    """
    if not data:
        raise ValueError("the file is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"the file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    safe = sanitise_name(name)
    if Path(safe).suffix.lower() not in UPLOAD_EXTENSIONS:
        raise ValueError("not a PDF, TIFF, PNG or JPEG file (by its name)")
    sha = hashlib.sha256(data).hexdigest()
    folder = Path(collection_root).resolve() / UPLOADS_DIR / sha[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / safe
    if not (path.is_file() and path.stat().st_size == len(data) and _sha256(path) == sha):
        atomic_write_bytes(path, data)
    return path


@dataclass
class UploadOutcome:
    """What happened to one uploaded file.

    Attributes:
        name: the sanitised file name (what the user sees).
        status: ``added`` (new document stored), ``already`` (its bytes were already in the
            collection), ``failed`` (not readable as a document) or ``rejected`` (empty, too large,
            wrong kind of name; nothing was written).
        message: a sentence for the user.
        stored_path: where the file was stored (``None`` when rejected or already stored).
        document_id: the stored document (for ``added`` and ``already``).
        page_ids: its page ids, ascending (empty when none).
    """

    name: str
    status: Literal["added", "already", "failed", "rejected"]
    message: str
    stored_path: Path | None = None
    document_id: int | None = None
    page_ids: list[int] = field(default_factory=list)


def ingest_uploads(
    collection: Collection,
    files: Sequence[tuple[str, bytes]],
    settings,
    *,
    extractor=None,
    extractor_factory: Callable[[], object] | None = None,
    max_bytes: int | None = DEFAULT_MAX_UPLOAD_BYTES,
    on_progress: Callable[[int, int], None] | None = None,
    lock_timeout_s: float = 30.0,
    log: Callable[[str], None] | None = None,
):
    """Store uploaded files under the collection (:func:`save_upload`) and ingest the new ones.

    Files whose bytes are already in the collection (or repeat an earlier file of the same batch)
    are reported as ``already`` and not written again. The rest are ingested in one call of
    :func:`docsort.jobs.pipeline.ingest`; a file it cannot read is reported as ``failed`` with the reason
    and its stored copy removed.

    Args:
        collection: an open collection (may be empty).
        files: ``(client file name, bytes)`` pairs.
        settings: from :func:`docsort.jobs.pipeline.effective_settings`.
        extractor: a built :class:`~docsort.core.features.FeatureExtractor` to reuse.
        extractor_factory: called (once, without arguments) for an extractor when ``extractor`` is
            ``None`` and something new is to be ingested, so a UI builds or fetches its cached
            TensorFlow model only when needed. With neither, ``ingest`` builds one.
        max_bytes: per-file size limit, bytes.
        on_progress: ``(pages_done, pages_total)`` callback, forwarded to ``ingest``.
        lock_timeout_s: how long to wait for another writer, seconds.
        log: where ingest's messages go (default: discarded).

    Returns:
        ``(outcomes, report)``: one :class:`UploadOutcome` per input file, in input order, and the
        :class:`~docsort.jobs.pipeline.IngestReport` (``None`` when nothing needed ingesting).

    Raises:
        CollectionBusyError: another writer held the lock for ``lock_timeout_s``.
        CollectionError: the collection was built with other weights or settings.
        PopplerMissingError, WeightsError, BackboneError: as :func:`docsort.jobs.pipeline.ingest`.
    """
    from docsort.jobs.pipeline import ingest

    outcomes: list[UploadOutcome] = []
    first_in_batch: dict[str, str] = {}
    pending: dict[Path, int] = {}
    shas: list[str | None] = []
    for name, data in files:
        safe = sanitise_name(name)
        sha = hashlib.sha256(data).hexdigest() if data else None
        shas.append(sha)
        existing = collection.find_document(sha) if sha else None
        if existing is not None:
            outcomes.append(UploadOutcome(safe, "already", f"{safe}: already in the collection", document_id=existing))
            continue
        if sha in first_in_batch:
            outcomes.append(UploadOutcome(safe, "already", f"{safe}: already in the collection (same file as {first_in_batch[sha]})"))
            continue
        try:
            path = save_upload(collection.root, name, data, max_bytes=max_bytes)
        except ValueError as exc:
            outcomes.append(UploadOutcome(safe, "rejected", f"{safe}: {exc}"))
            continue
        first_in_batch[sha] = safe
        pending[path] = len(outcomes)
        outcomes.append(UploadOutcome(safe, "added", f"{safe}: added", stored_path=path))
    report = None
    if pending:
        if extractor is None and extractor_factory is not None:
            extractor = extractor_factory()
        report = ingest(
            collection,
            list(pending),
            settings,
            extractor=extractor,
            progress=False,
            log=log or (lambda _msg: None),
            lock_timeout_s=lock_timeout_s,
            on_progress=on_progress,
        )
        failed = {str(Path(p).resolve()): reason for p, reason in report.failures}
        for path, i in pending.items():
            reason = failed.get(str(path.resolve()))
            if reason is not None:
                outcomes[i].status = "failed"
                outcomes[i].message = f"{outcomes[i].name}: could not be read ({reason})"
                outcomes[i].stored_path = None
                path.unlink(missing_ok=True)
                try:
                    path.parent.rmdir()
                except OSError:
                    pass
    # Resolve document and page ids for everything now in the collection.
    wanted = {i for i, o in enumerate(outcomes) if o.status in ("added", "already")}
    if wanted:
        table = collection.page_table()
        for i in wanted:
            o = outcomes[i]
            if o.document_id is None and shas[i]:
                o.document_id = collection.find_document(shas[i])
            if o.document_id is not None:
                o.page_ids = sorted(int(p) for p in table.loc[table["document_id"] == o.document_id, "page_id"])
                if o.status == "added":
                    n = len(o.page_ids)
                    o.message = f"{o.name}: added ({n} page{'s' if n != 1 else ''})"
    return outcomes, report


# ---------------------------------------------------------------------------------------------
# chart selections
# ---------------------------------------------------------------------------------------------


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


def map_figure(table, *, webgl_above: int = 1000, height_px: int = 600):
    """The cluster map: the stored 2-D UMAP coordinates as a Plotly scatter, one trace per cluster.

    Clusters are ordered by size (largest first) with noise last in light grey; hovering shows the
    file name, page and cluster; each point's ``customdata`` is ``[page_id]`` (see
    :func:`selection_page_ids`). Axes are hidden: UMAP coordinates have no units. Above
    ``webgl_above`` points the traces are WebGL (``scattergl``) so 100k points stay responsive;
    below it SVG, which needs no GPU in the browser.

    Args:
        table: rows of ``Collection.page_table()`` with a cluster (NaN coordinates are dropped).
        webgl_above: number of points above which WebGL is used.
        height_px: figure height, pixels.

    Returns:
        A ``plotly.graph_objects.Figure`` (needs the ``plotly`` package).
    """
    import plotly.express as px

    df = table[table["cluster"].notna() & table["umap_x"].notna()].copy()
    df["file"] = [Path(p).name for p in df["path"]]
    df["group"] = [cluster_label(c, n) for c, n in zip(df["cluster"], df["cluster_name"])]
    sizes = df.loc[df["cluster"] >= 0, "group"].value_counts()
    order = list(sizes.index) + (["noise"] if (df["cluster"] < 0).any() else [])
    fig = px.scatter(
        df, x="umap_x", y="umap_y", color="group", custom_data=["page_id"], hover_name="file",
        hover_data={"page": True, "group": True, "umap_x": False, "umap_y": False},
        category_orders={"group": order}, color_discrete_map={"noise": "#b0b0b0"},
        render_mode="webgl" if len(df) > webgl_above else "svg", labels={"group": "cluster"},
    )
    fig.update_traces(marker={"size": 9 if len(df) <= 2000 else 4})
    fig.update_layout(height=height_px, xaxis={"visible": False}, yaxis={"visible": False}, legend_title_text="cluster",
                      margin={"l": 0, "r": 0, "t": 10, "b": 0})
    return fig
