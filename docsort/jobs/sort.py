"""Sorting into folders: copy (never move) every document into a folder named after its cluster
(or, :mod:`docsort.jobs.classify`, its document type)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from docsort.core.names import sanitise_name
from docsort.queries.browse import document_assignments
from docsort.store.storage import Collection


def _isna(value) -> bool:
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


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
        duplicates_skipped: documents not copied because ``one_per_family`` found another
            document of their near-duplicate families already copied (ids, ascending).
    """

    out_dir: Path
    copied: int = 0
    already_there: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)
    folders: dict[str, int] = field(default_factory=dict)
    duplicates_skipped: list[int] = field(default_factory=list)


def redundant_documents(collection: Collection) -> set[int]:
    """Documents that add nothing once one document per near-duplicate family is kept.

    Documents are visited by ascending id; a document is kept when one of its pages is in no
    stored family or in a family no kept document has reached yet (then all its families count
    as reached), and is redundant otherwise.

    Returns:
        The redundant documents' ids (empty when ``docsort duplicates`` never ran).
    """
    fams = collection.duplicate_families()
    if not len(fams):
        return set()
    pages = collection.page_table()[["page_id", "document_id"]]
    family = dict(zip(fams["page_id"].astype(int), fams["family"].astype(int)))
    by_doc: dict[int, list[int | None]] = {}
    for pid, did in zip(pages["page_id"].astype(int), pages["document_id"].astype(int)):
        by_doc.setdefault(did, []).append(family.get(pid))
    reached: set[int] = set()
    redundant: set[int] = set()
    for did in sorted(by_doc):
        fs = by_doc[did]
        if all(f is not None and f in reached for f in fs):
            redundant.add(did)
        else:
            reached.update(f for f in fs if f is not None)
    return redundant


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
    one_per_family: bool = False,
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
        one_per_family: copy one document per near-duplicate family (the stored families of
            ``docsort duplicates``): a document all of whose pages are in families that an
            earlier document (lower id) already brought is skipped (listed in
            ``duplicates_skipped``). Documents with a page in no family, or in a family not yet
            covered, are copied as usual.

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
    if one_per_family:
        docs = docs.sort_values("document_id", kind="stable")
        skip = redundant_documents(collection)
        report.duplicates_skipped = sorted(int(d) for d in docs["document_id"] if int(d) in skip)
        docs = docs[~docs["document_id"].isin(list(skip))]
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
