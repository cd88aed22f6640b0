"""Near-duplicate families (``docsort duplicates``): the same page scanned more than once.

:func:`find_duplicates` brings the collection's near-duplicate families up to date:

1. **Page maps and keypoints, incrementally.** Every page without a page map made with the
   current settings (:func:`docsort.core.duplicates.settings_token`) is rendered again from its
   document's file (the first recorded path whose bytes still have the stored sha256, as
   ``docsort ocr`` does) at ``DuplicateSettings.render_px``, mapped, its ORB keypoints taken and
   its ink binarised (:func:`docsort.core.duplicates.render_page_maps`), by a pool of ``spawn``-ed worker processes
   (:func:`docsort.core.workers.worker_pool`); each document's maps are stored at once, so an
   interrupted run resumes where it stopped. Pages added since the last run are the only ones
   rendered; a page whose file is gone gets an error row and takes no part (reported). A page
   whose map and keypoints were stored before the ink existed (schema 7) keeps them and gets
   only its ink made (:func:`docsort.core.duplicates.older_settings_tokens`).
2. **Families, from all maps.** Candidate pairs, their verification by keypoints and connected
   components run on every stored map, keypoint set, visual vector and OCR text
   (:func:`docsort.core.duplicates.find_families`), and the families replace the stored ones in one
   transaction. Verification, a quick first test and the full match for the ~10 % of pairs that pass it,
   is about 0.35 ms of CPU a candidate pair (0.16-0.19 ms a pair wall on two cores), and there are
   about 23 candidate pairs a page with 15 neighbours (benchmarks/RESULTS.md, "Near-duplicate
   families": 100,000 pages in 810 CPU-seconds, 6.6 minutes on two cores). The pairs accepted
   are then checked against the stored inks of their pages (only theirs are read), so that two
   pages of one template with different details are not joined.

Families are stored (schema 6: ``duplicate_families``; keypoints: schema 7; inks: schema 8), so export (column
``duplicate_family``), sort-into-folders (one document per family) and the app read them without
recomputing; a run is stale once pages were added after it (:func:`duplicates_stale`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from docsort.config.settings import DuplicateSettings
from docsort.core.duplicates import (KEYPOINT_DTYPE, find_families, older_settings_tokens, render_page_maps, settings_token,
                                     text_minhashes)
from docsort.core.pages import exit_with_parent
from docsort.core.workers import ProcessExpired, in_worker, worker_pool
from docsort.jobs.ocr import _find_source
from docsort.store.storage import Collection

Log = Callable[[str], None]

__all__ = ["DuplicateReport", "find_duplicates", "duplicates_stale", "family_of_page"]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class DuplicateReport:
    """What :func:`find_duplicates` did.

    Attributes:
        pages: pages compared (those with a page map).
        mapped: pages mapped in this run (new since the last run, or all after a settings change).
        unmapped: ``(page_id, reason)`` of pages without a map (file missing or unreadable).
        families: near-duplicate families found.
        pages_in_families: pages in them.
        pages_with_text: compared pages that took part in the word test.
        kept_apart: pairs of pages that the keypoints (or words) accepted and the ink check
            kept apart (their pages differ in content: two pages of one template).
        map_seconds, family_seconds: wall time of the two steps, seconds.
        table: the families, one row per page (:meth:`Collection.duplicate_families`).
    """

    pages: int = 0
    mapped: int = 0
    unmapped: list[tuple[int, str]] = field(default_factory=list)
    families: int = 0
    pages_in_families: int = 0
    pages_with_text: int = 0
    kept_apart: int = 0
    map_seconds: float = 0.0
    family_seconds: float = 0.0
    table: object = None


def _map_pages(collection: Collection, settings: DuplicateSettings, token: str, workers: int, log: Log,
               on_progress: Callable[[int, int], None] | None) -> int:
    """Make and store the page maps that are missing; returns how many pages were processed."""
    import os

    todo = collection.pages_needing_maps(token)
    if not todo:
        return 0
    # Maps and keypoints stored by the version before the ink (same code): kept, only the ink is made.
    older = older_settings_tokens(settings)
    kept: set[int] = set()
    for old in older:
        kept |= collection.pages_mapped_with(old, [pid for pid, _, _ in todo])
    by_doc: dict[int, list[tuple[int, int]]] = {}
    for page_id, doc_id, page_no in todo:
        by_doc.setdefault(doc_id, []).append((page_id, page_no))
    done = 0
    total = len(todo)
    tasks = []
    for doc_id, pages in by_doc.items():
        src, first_path, _ = _find_source(collection, doc_id)
        if src is None:
            reason = f"{first_path}: source file not found or changed since it was ingested"
            collection.store_page_maps([(pid, None, None, None, token, reason) for pid, _ in pages])
            done += len(pages)
            if on_progress:
                on_progress(done, total)
            continue
        tasks.append((doc_id, src, pages, all(pid in kept for pid, _ in pages)))
    workers = workers or os.cpu_count() or 1
    if in_worker() or workers <= 1 or len(tasks) <= 1:
        results = ((t, render_page_maps(t[1], [p for _, p in t[2]], settings, t[3])) for t in tasks)
        pool = None
    else:
        pool = worker_pool(min(workers, len(tasks)), exit_with_parent, (os.getpid(),))
        futures = [(t, pool.schedule(render_page_maps, args=(t[1], [p for _, p in t[2]], settings, t[3]))) for t in tasks]

        def collect():
            for t, fut in futures:
                try:
                    yield t, fut.result()
                except ProcessExpired:
                    yield t, [(p, None, None, None, f"{t[1].path}: page map worker crashed") for _, p in t[2]]

        results = collect()
    try:
        for (doc_id, src, pages, ink_only), maps in results:
            by_no = {no: (m, k, i, e) for no, m, k, i, e in maps}
            if ink_only:
                collection.store_page_inks([(pid, by_no[no][2]) for pid, no in pages if by_no[no][3] is None], token, older)
            collection.store_page_maps([(pid, *by_no[no][:3], token, by_no[no][3]) for pid, no in pages
                                        if not ink_only or by_no[no][3] is not None])
            done += len(pages)
            if on_progress:
                on_progress(done, total)
    finally:
        if pool is not None:
            pool.stop()
            pool.join()
    return total


def find_duplicates(
    collection: Collection,
    settings: DuplicateSettings | None = None,
    *,
    workers: int = 0,
    use_vectors: bool = True,
    use_text: bool = True,
    log: Log = _stderr,
    on_progress: Callable[[int, int], None] | None = None,
) -> DuplicateReport:
    """Bring the near-duplicate families up to date and store them (see the module docstring).

    Args:
        collection: an open collection.
        settings: thresholds and map settings (default :class:`DuplicateSettings`).
        workers: page-map worker processes; 0 = one per CPU core, 1 = in this process.
        use_vectors: add the visual vectors' nearest neighbours to the candidate pairs.
        use_text: use the stored OCR text (``docsort ocr``) for the word test.
        log: where warnings go.
        on_progress: called with ``(pages_mapped, pages_to_map)`` while mapping.

    Returns:
        A :class:`DuplicateReport` (with the stored families as ``table``).

    Raises:
        CollectionError: the collection cannot be read or written.
    """
    settings = settings or DuplicateSettings()
    token = settings_token(settings)
    report = DuplicateReport()
    t0 = time.perf_counter()
    report.mapped = _map_pages(collection, settings, token, workers, log, on_progress)
    report.map_seconds = time.perf_counter() - t0
    report.unmapped = collection.page_map_errors(token)
    t1 = time.perf_counter()
    ids, maps = collection.page_maps(token, settings.map_px)
    report.pages = int(len(ids))
    vectors = None
    if use_vectors and len(ids):
        _, vectors = collection.vectors(ids)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    minhashes = has_text = None
    if use_text and len(ids):
        texts = collection.page_texts(ids)
        rows = [texts.get(int(i)) for i in ids]
        minhashes, has_text = text_minhashes([r["text"] if r and not r.get("error") else None for r in rows], settings)
        report.pages_with_text = int(has_text.sum())
    keypoints = [np.frombuffer(b, KEYPOINT_DTYPE) for b in collection.page_keypoints(token, ids)]
    fams = find_families(maps, keypoints, vectors, minhashes, has_text, settings,
                         inks=lambda rows: collection.page_inks(token, ids[rows])) if len(ids) else None
    report.family_seconds = time.perf_counter() - t1
    if fams is None:
        page_ids, family, sim = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    else:
        page_ids, family, sim = ids[fams.rows], fams.family, fams.similarity
    collection.store_duplicate_families(page_ids, family, sim, {
        "settings": settings.model_dump(), "pages": int(collection.counts()["pages"]),
        "seconds": report.map_seconds + report.family_seconds})
    report.kept_apart = 0 if fams is None else int(len(fams.kept_apart))
    report.families = int(len(np.unique(family)))
    report.pages_in_families = int(len(page_ids))
    report.table = collection.duplicate_families()
    return report


def duplicates_stale(collection: Collection) -> str | None:
    """Why the stored families may be out of date (no run yet, or pages added since), or None."""
    run = collection.last_duplicate_run()
    pages = int(collection.counts()["pages"])
    if run is None:
        return "no near-duplicate run yet: run docsort duplicates"
    if pages > run["pages"]:
        return f"{pages - run['pages']} pages were added since the last near-duplicate run: run docsort duplicates"
    return None


def family_of_page(collection: Collection) -> dict[int, int]:
    """``{page_id: family}`` of the stored families (pages in no family are absent)."""
    df = collection.duplicate_families()
    return {int(p): int(f) for p, f in zip(df["page_id"], df["family"])}
