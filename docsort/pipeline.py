"""Compose the stages: files -> pages -> features -> collection/index -> clusters -> search.

This is the one place that calls the stage modules in order; the CLI (:mod:`docsort.cli`) and the
Streamlit app (``app.py``) both call these functions, so there is one implementation of ingest,
clustering and search.

A collection pins the settings that shape its vectors (render, backbone, layer, pooling,
weights and their sha256, input size, preprocessing) in its manifest at the first ingest. Later
commands reuse them, and an ingest that would add vectors made differently is refused.
"""

from __future__ import annotations

import importlib.metadata as _md
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from . import classify
from .clustering import ClusterResult, cluster_vectors, document_clusters, match_cluster_ids, predict_clusters
from .features import FeatureExtractor
from .index import search_index, sync_index
from .ocr import OcrReport, backfill as ocr_backfill, require_tesseract
from .pages import (
    NotADocumentError,
    PageError,
    SourceFile,
    count_pages,
    discover_files,
    exit_with_parent,
    iter_pages,
    render_for_network,
    require_poppler,
    sha256_file,
    thumbnail_jpeg,
    to_network_input,
)
from .settings import PipelineSettings
from .storage import Collection, CollectionError, atomic_write_bytes

__all__ = [
    "IngestReport",
    "PageHit",
    "DocumentHit",
    "SearchResult",
    "ClusterRow",
    "effective_settings",
    "make_extractor",
    "ingest",
    "cluster",
    "cluster_table",
    "assign_provisional",
    "search_file",
    "search_page",
    "info",
    "export_pages",
    "library_versions",
]

#: Fields of the features description that must match for vectors to be comparable.
_PINNED_FEATURE_KEYS = ("backbone", "layer", "pooling", "dim", "input_size", "channels_in", "preprocessing")

#: Feature settings free to differ between ingests: weights are compared by sha256 instead,
#: and batch size and precision do not change what a vector means.
_FEATURE_KEYS_NOT_IN_VECTORS = {"weights", "weights_sha256", "batch_size", "precision"}
#: Render settings that do not change the vectors (free to differ between ingests).
_RENDER_KEYS_NOT_IN_VECTORS = ("pdf_chunk_pages", "workers", "thumbnail_px")

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def library_versions() -> dict[str, str]:
    """Versions of Python, the libraries that shape vectors and clusters, and poppler."""
    out = {"python": platform.python_version(), "docsort": __version__}
    for dist in ("numpy", "keras", "tensorflow", "tensorflow-hub", "faiss-cpu", "umap-learn", "hdbscan",
                 "scikit-learn", "pynndescent", "numba", "pillow", "pdf2image"):
        try:
            out[dist] = _md.version(dist)
        except _md.PackageNotFoundError:
            pass
    try:
        res = subprocess.run(["pdftoppm", "-v"], capture_output=True, text=True, timeout=10)
        out["poppler"] = (res.stderr or res.stdout).splitlines()[0].split()[-1]
    except (OSError, IndexError, subprocess.SubprocessError):
        out["poppler"] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------
# settings pinned by the collection
# ---------------------------------------------------------------------------------------------


def effective_settings(
    collection: Collection, requested: PipelineSettings, *, explicit: bool = False, weights: str | None = None
) -> PipelineSettings:
    """The settings a command on ``collection`` must run with.

    A new collection takes ``requested`` (with ``weights`` if given). An existing one keeps the
    render and feature settings of its manifest (its weights pinned to the resolved source, so an
    ``auto`` collection built with the bundled weights stays on them); index, UMAP, HDBSCAN,
    classifier, OCR and text settings come from ``requested`` when the user chose a pipeline (``explicit``), else from the
    manifest.

    Raises:
        CollectionError: an explicitly chosen pipeline or ``weights`` would change how vectors are
            made for a collection that already has vectors.
    """
    manifest = collection.manifest()
    if manifest is None:
        return requested.with_overrides(weights=weights)
    pinned = PipelineSettings(**manifest["pipeline"])
    recorded = manifest["features"]["weights"]
    pinned_weights = recorded["source"] if recorded["source"] in ("imagenet", "bundled", "random") else recorded["spec"]
    pinned = pinned.with_overrides(weights=pinned_weights)
    if explicit:
        a = requested.features.model_dump(exclude=_FEATURE_KEYS_NOT_IN_VECTORS)
        b = pinned.features.model_dump(exclude=_FEATURE_KEYS_NOT_IN_VECTORS)
        diffs = [f"features.{k}: collection {b[k]!r}, requested {a[k]!r}" for k in a if a[k] != b[k]]
        ra, rb = requested.render.model_dump(), pinned.render.model_dump()
        diffs += [f"render.{k}: collection {rb[k]!r}, requested {ra[k]!r}" for k in ra if ra[k] != rb[k] and k not in _RENDER_KEYS_NOT_IN_VECTORS]
        if diffs:
            raise CollectionError(
                f"{collection.root} was built with different feature settings; refusing to mix vectors:\n  "
                + "\n  ".join(diffs)
                + "\nUse a new --collection for these settings."
            )
        pinned = pinned.model_copy(update={"index": requested.index, "umap": requested.umap, "hdbscan": requested.hdbscan,
                                           "classifier": requested.classifier, "ocr": requested.ocr, "text": requested.text,
                                           "name": requested.name})
    if weights is not None:
        pinned = pinned.with_overrides(weights=weights)
    return pinned


def _check_extractor(collection: Collection, extractor: FeatureExtractor) -> None:
    manifest = collection.manifest()
    if manifest is None:
        return
    old, new = manifest["features"], extractor.description
    diffs = [f"{k}: collection {old.get(k)!r}, now {new.get(k)!r}" for k in _PINNED_FEATURE_KEYS if old.get(k) != new.get(k)]
    if old["weights"]["sha256"] != new["weights"]["sha256"]:
        diffs.append(
            f"weights sha256: collection {old['weights']['sha256']} ({old['weights']['source']}), "
            f"now {new['weights']['sha256']} ({new['weights']['source']})"
        )
    if diffs:
        raise CollectionError(
            f"{collection.root} holds vectors made with other weights or settings; refusing to mix them:\n  "
            + "\n  ".join(diffs)
            + "\nUse a new --collection, or the weights the collection was built with."
        )


def make_extractor(settings: PipelineSettings, *, announce: bool = True) -> FeatureExtractor:
    """Build the feature extractor for a pipeline (channels follow ``render.color``)."""
    return FeatureExtractor(settings.features, channels=1 if settings.render.color == "gray" else 3, announce=announce)


# ---------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------


@dataclass
class IngestReport:
    """What one ingest did.

    Attributes:
        documents_added, pages_added: newly stored.
        already_stored: files whose bytes (sha256) were already in the collection.
        new_paths: of those, how many were seen under a new path (renamed or copied).
        skipped: files in walked folders that are not documents (README.md, .csv...).
        failures: ``(path, reason)`` for every file that could not be ingested.
        seconds: wall time, seconds; pages_per_s: pages_added / seconds.
        weights_note: which weights were used.
        index: what happened to the FAISS index.
        stage_seconds: wall seconds per stage: ``scan`` (walk, sha256, page count), ``render``
            (rasterize + resize + thumbnail, summed over worker processes, so it can exceed the
            wall time), ``model`` (forward pass and pooling), ``database``, ``index``, and
            ``pipeline_wall`` (the whole render/embed/store loop).
        provisional_pages: pages without a cluster given a provisional one by the stored models of
            the last clustering (:func:`assign_provisional`; 0 when never clustered).
        ocr: what the OCR run after the visual ingest did (``ingest(..., ocr=True)``), else ``None``.
    """

    documents_added: int = 0
    pages_added: int = 0
    already_stored: int = 0
    new_paths: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    weights_note: str = ""
    index: str = ""
    stage_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    provisional_pages: int = 0
    ocr: OcrReport | None = None

    @property
    def pages_per_s(self) -> float:
        return self.pages_added / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Pending:
    src: SourceFile
    sha256: str
    n_pages: int
    pages: list = field(default_factory=list)  # (page_no, w, h, vector|None, thumb)
    read: int = 0
    embedded: int = 0
    stored: bool = False
    failed: bool = False


def _new_manifest(settings: PipelineSettings, extractor: FeatureExtractor) -> dict:
    import datetime as dt

    return {
        "collection_format": 1,
        "docsort_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pipeline": settings.model_dump(mode="json"),
        "features": extractor.description,
        "render": settings.render.model_dump(mode="json"),
        "seeds": {"weights_init": settings.features.seed, "umap_random_state": settings.umap.random_state},
        "libraries": library_versions(),
    }


def ingest(
    collection: Collection,
    paths: Iterable[str | Path],
    settings: PipelineSettings,
    *,
    extractor: FeatureExtractor | None = None,
    progress: bool = True,
    log: Log = _stderr,
    lock_timeout_s: float = 600.0,
    on_progress: Callable[[int, int], None] | None = None,
    ocr: bool | None = None,
) -> IngestReport:
    """Rasterize, embed and store every new page under ``paths``, then update the FAISS index.

    Files are identified by the sha256 of their bytes: a file already stored (under any name) adds
    nothing, only its new path is recorded. Each document is stored in one transaction with all its
    pages, so an interrupted ingest resumes on the next run with every page stored exactly once.
    A file that cannot be read is reported (path and reason) and skipped; the batch goes on.

    Args:
        collection: an open collection (created if empty).
        paths: files and folders (walked recursively).
        settings: from :func:`effective_settings`.
        extractor: a ready extractor to reuse (the UI caches one); built from ``settings`` if None.
        progress: show a tqdm progress bar on stderr.
        log: where per-file errors and notes go.
        lock_timeout_s: how long to wait for another writer, seconds.
        on_progress: called with ``(pages_done, pages_total)`` after each batch (the UI's bar).
        ocr: OCR the pages of these files after the visual ingest (default ``settings.ocr.enabled``):
            Tesseract is checked before anything is embedded; once the vectors are stored and
            indexed and the write lock is released, :func:`docsort.ocr.backfill` OCRs the new pages
            and the already stored pages of these files still without text (so re-running an
            interrupted ``ingest --ocr`` finishes the OCR); the result is ``report.ocr``.

    Returns:
        An :class:`IngestReport`.

    Raises:
        CollectionBusyError: another writer held the lock for ``lock_timeout_s``.
        CollectionError: the collection's vectors were made with other weights or settings.
        PopplerMissingError: PDFs were found and poppler is not installed.
        WeightsError, BackboneError: the backbone cannot be built.
        TesseractMissingError: with ``ocr``, Tesseract or a language of ``settings.ocr.lang`` is missing.
    """
    from tqdm import tqdm

    run_ocr = settings.ocr.enabled if ocr is None else ocr
    if run_ocr:
        require_tesseract(settings.ocr.lang)
    t0 = time.perf_counter()
    report = IngestReport()
    with collection.write_lock(lock_timeout_s, on_wait=log):
        known_pages, stored_docs = collection.page_ids(), set()  # for OCR: this ingest's pages
        t = time.perf_counter()
        extractor = extractor or make_extractor(settings)
        report.stage_seconds["model_build"] += time.perf_counter() - t
        _check_extractor(collection, extractor)
        report.weights_note = extractor.description["weights"]["note"]
        if collection.manifest() is None:
            collection.write_manifest(_new_manifest(settings, extractor))

        # 1. discover, hash, count pages
        t_scan = time.perf_counter()
        queue: list[_Pending] = []
        seen: set[str] = set()
        found = list(discover_files(paths))
        for item in tqdm(found, desc="scanning files", unit="file", disable=not progress or len(found) < 50, file=sys.stderr):
            if isinstance(item, NotADocumentError):
                report.skipped += 1
                continue
            if isinstance(item, PageError):
                report.failures.append(_fail(collection, _path_reason(item), log))
                continue
            try:
                sha = sha256_file(item.path)
            except OSError as exc:
                report.failures.append(_fail(collection, (str(item.path), f"cannot read: {exc.strerror or exc}"), log))
                continue
            existing = collection.find_document(sha)
            if existing is not None or sha in seen:
                report.already_stored += 1
                stored_docs.add(existing)
                if existing is not None and collection.add_path(existing, str(item.path)):
                    report.new_paths += 1
                continue
            if item.format == "pdf":
                require_poppler()
            try:
                n = count_pages(item)
            except PageError as exc:
                report.failures.append(_fail(collection, _path_reason(exc, item.path), log))
                continue
            seen.add(sha)
            queue.append(_Pending(item, sha, n))

        report.stage_seconds["scan"] += time.perf_counter() - t_scan

        # 2. render in worker processes (bounded queue), embed in batches, store each document
        #    in one transaction as soon as all its pages have vectors.
        total = sum(p.n_pages for p in queue)
        bar = tqdm(total=total, desc="embedding pages", unit="page", disable=not progress or total == 0, file=sys.stderr)
        stages = report.stage_seconds
        batch: list[np.ndarray] = []
        owners: list[tuple[_Pending, int]] = []
        done = 0

        def flush() -> None:
            nonlocal done
            if not batch:
                return
            t = time.perf_counter()
            vecs = extractor.embed(np.stack(batch))
            stages["model"] += time.perf_counter() - t
            for (doc, slot), vec in zip(owners, vecs):
                page_no, w, h, _, thumb = doc.pages[slot]
                doc.pages[slot] = (page_no, w, h, vec, thumb)
                doc.embedded += 1
            done += len(batch)
            bar.update(len(batch))
            if on_progress:
                on_progress(done, total)
            batch.clear()
            finished = {id(d): d for d, _ in owners if d.embedded == d.n_pages}
            owners.clear()
            t = time.perf_counter()
            for doc in finished.values():
                _store(collection, doc, report, log)
            stages["database"] += time.perf_counter() - t

        def drop(doc: _Pending, exc: PageError) -> None:
            # Nothing of a failed document is stored: take its pages out of the pending batch.
            keep = [(i, o) for i, o in enumerate(owners) if o[0] is not doc]
            batch[:] = [batch[i] for i, _ in keep]
            owners[:] = [o for _, o in keep]
            bar.update(doc.n_pages - doc.embedded)
            doc.failed, doc.pages = True, []
            report.failures.append(_fail(collection, _path_reason(exc, doc.src.path), log))

        tasks = [
            (doc, first, min(doc.n_pages, first + settings.render.pdf_chunk_pages - 1))
            for doc in queue
            for first in range(1, doc.n_pages + 1, settings.render.pdf_chunk_pages)
        ]
        workers = settings.render.workers or os.cpu_count() or 1
        t_wait = time.perf_counter()
        try:
            for doc, pages, error, seconds, last_chunk in _render_stream(tasks, settings.render, extractor.input_size, workers, log):
                stages["render"] += seconds
                if doc.failed:
                    continue
                for rp in pages:
                    doc.pages.append((rp.page_no, rp.width_px, rp.height_px, None, rp.thumbnail))
                    doc.read += 1
                    batch.append(rp.pixels)
                    owners.append((doc, len(doc.pages) - 1))
                    if len(batch) >= extractor.batch_size:
                        flush()
                if error is None and last_chunk and doc.read != doc.n_pages:
                    error = PageError(f"{doc.src.path}: expected {doc.n_pages} pages, read {doc.read}")
                if error is not None:
                    drop(doc, error)
                elif last_chunk and doc.embedded == doc.n_pages:  # all pages embedded in earlier batches
                    _store(collection, doc, report, log)
            flush()
        finally:
            bar.close()
            # Always: also repairs an index file that disagrees with the database.
            stages["pipeline_wall"] += time.perf_counter() - t_wait
            t = time.perf_counter()
            _, info_ = sync_index(collection, settings.index)
            stages["index"] += time.perf_counter() - t
            report.index = f"{info_.kind}, {info_.ntotal} vectors ({info_.action})"
        classify.after_ingest(collection, settings, log=log)  # document types for new pages; no-op without a classifier
        report.provisional_pages = assign_provisional(collection, log=log)  # issue 5: clusters for new pages, no re-fit
        if run_ocr:
            ocr_pages = np.setdiff1d(collection.page_ids(), known_pages).tolist() + [
                pid for pid, doc, _ in collection.pages_needing_text(settings.ocr.lang) if doc in stored_docs]
    if run_ocr:  # after the write lock: OCR is slow and must not block other writers
        report.ocr = ocr_backfill(collection, settings, page_ids=ocr_pages, progress=progress, log=log, lock_timeout_s=lock_timeout_s)
    report.seconds = time.perf_counter() - t0
    return report


@contextmanager
def _without_main_module():
    """Hide the caller's ``__main__`` while worker processes are started.

    ``spawn`` makes each new process re-run the parent's main script (as ``__mp_main__``) so that
    functions defined there can be unpickled. Rendering workers only need :mod:`docsort.pages`,
    and re-running a user's script that calls docsort without an ``if __name__ == "__main__":``
    guard would make every worker load TensorFlow and start an ingest of its own (Python docs,
    multiprocessing, "Safe importing of main module"). A bare stand-in module is put in place
    for the moment the processes are started.
    """
    import types

    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def _render_stream(tasks, render, input_size, workers: int, log: Log = _stderr):
    """Yield ``(doc, pages, error, seconds, last_chunk)`` for each task, in task order.

    With ``workers > 1`` the chunks are rendered by a pool of ``spawn``-ed worker processes
    (no TensorFlow in them), at most ``2 * workers`` chunks in flight, so rasterization overlaps
    the forward pass in this process and memory stays flat whatever the corpus size. A worker
    that dies fails only its chunk's document; if a fresh pool cannot finish a single chunk,
    the rest is rendered in this process.
    """
    import multiprocessing

    last_of = {}
    for i, (doc, _, _) in enumerate(tasks):
        last_of[id(doc)] = i
    if multiprocessing.parent_process() is not None:
        workers = 1  # never start a pool from inside a worker process
    if workers <= 1 or len(tasks) <= 1:
        for i, (doc, first, last) in enumerate(tasks):
            yield (doc, *render_for_network(doc.src, render, input_size, first, last), last_of[id(doc)] == i)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    def new_pool():
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=exit_with_parent, initargs=(os.getpid(),))

    pool = new_pool()
    pool_done = 0  # chunks finished by the current pool
    in_process = False
    pending: deque = deque()
    next_task = 0

    def submit(i):
        doc, first, last = tasks[i]
        if in_process:
            pending.append((i, None))
            return
        with _without_main_module():  # worker processes start inside submit()
            pending.append((i, pool.submit(render_for_network, doc.src, render, input_size, first, last)))

    try:
        while next_task < min(len(tasks), 2 * workers):
            submit(next_task)
            next_task += 1
        while pending:
            i, fut = pending.popleft()
            doc, first, last = tasks[i]
            try:
                result = render_for_network(doc.src, render, input_size, first, last) if fut is None else fut.result()
                pool_done += fut is not None
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                inflight = [j for j, _ in pending]
                pending.clear()
                if pool_done == 0:
                    # The pool never worked (workers cannot start here): render in this process.
                    log("warning: rasterization worker processes failed; rendering in this process instead")
                    in_process = True
                    result = render_for_network(doc.src, render, input_size, first, last)
                else:
                    # A worker died (out of memory, a crash in a decoder): fail this chunk's
                    # document, start a fresh pool and resubmit what was in flight.
                    result = ([], PageError(f"{doc.src.path}: rendering worker crashed", doc.src.path), 0.0)
                    pool, pool_done = new_pool(), 0
                for j in inflight:
                    submit(j)
            if next_task < len(tasks):
                submit(next_task)
                next_task += 1
            yield (doc, *result, last_of[id(doc)] == i)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _path_reason(exc: PageError, path: str | Path | None = None) -> tuple[str, str]:
    """``(path, reason)`` of a per-file error ``"PATH: reason"``; a path may contain ``": "``."""
    text = str(exc)
    path = str(path) if path is not None else getattr(exc, "path", None) or text.split(": ", 1)[0]
    return path, text[len(path) + 2 :] if text.startswith(f"{path}: ") else text


def _fail(collection: Collection, path_reason, log: Log) -> tuple[str, str]:
    path, reason = (list(path_reason) + ["unknown error"])[:2]
    # The database keeps the real path; the log escapes control characters (a newline in a name).
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)
    log(f"error: {shown}: {reason}")
    collection.record_failure(path, reason)
    return (path, reason)


def _store(collection: Collection, doc: _Pending, report: IngestReport, log: Log) -> None:
    if doc.stored:
        return
    doc.stored = True
    result = collection.add_document(
        sha256=doc.sha256,
        path=str(doc.src.path),
        format=doc.src.format,
        size_bytes=doc.src.size_bytes,
        pages=doc.pages,
    )
    if result is None:
        report.already_stored += 1
        return
    report.documents_added += 1
    report.pages_added += len(doc.pages)
    doc.pages = []  # free thumbnails and vectors


# ---------------------------------------------------------------------------------------------
# clustering
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterRow:
    """One line of the cluster summary table.

    Attributes:
        cluster: id (-1 = noise); name: user-given or default name; pages, documents: counts
        (documents by majority of their pages); examples: up to three file names;
        members, reassigned, provisional: how many of ``pages`` are confident HDBSCAN members,
        noise pages reassigned by soft clustering, and pages placed since the last clustering
        (see :mod:`docsort.clustering`); for the noise row, ``members`` counts clustering noise.
    """

    cluster: int
    name: str
    pages: int
    documents: int
    examples: list[str]
    members: int = 0
    reassigned: int = 0
    provisional: int = 0


def cluster(collection: Collection, settings: PipelineSettings, *, log: Log = _stderr, lock_timeout_s: float = 600.0) -> ClusterResult:
    """Run UMAP + HDBSCAN over every stored page and store labels, 2-D map and fitted models.

    Noise is reassigned by soft clustering when ``settings.hdbscan.reassign_noise_threshold > 0``
    (:func:`~docsort.clustering.reassign_noise`). Cluster ids are matched to the stored ones by
    member overlap (:func:`~docsort.clustering.match_cluster_ids`, Hungarian assignment), so ids
    and user-given names survive a re-clustering; provisional assignments are replaced. The models
    file is written before the database, both tagged with one ``models_token``, so a crash between
    the two leaves models that :func:`assign_provisional` refuses to use rather than misreads.

    Returns:
        The :class:`~docsort.clustering.ClusterResult`, its ``labels`` the stored ids and
        ``label_map`` ``{HDBSCAN label: stored id}``.

    Raises:
        ClusteringError: too few pages; CollectionBusyError: another writer holds the lock.
    """
    import io
    import uuid

    import joblib

    with collection.write_lock(lock_timeout_s, on_wait=log):
        ids, vecs = collection.vectors()
        result = cluster_vectors(vecs, settings.umap, settings.hdbscan)
        for note in result.notes:
            log(note)
        old_ids, old_clusters, _ = collection.cluster_assignments()
        old = np.full(len(ids), -2, np.int64)
        pos = np.searchsorted(ids, old_ids)
        known = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == old_ids)
        old[pos[known]] = old_clusters[known]
        result.labels, result.label_map = match_cluster_ids(old, result.labels, collection.next_cluster_id())
        token = uuid.uuid4().hex
        buf = io.BytesIO()
        joblib.dump({"page_ids": ids, **result.models, "params": result.params, "label_map": result.label_map,
                     "models_token": token}, buf)
        atomic_write_bytes(collection.root / Collection.MODELS, buf.getvalue())
        collection.store_clustering(ids, result.labels, result.probabilities, result.embedding_2d,
                                    {**result.params, "models_token": token}, result.seconds, membership=result.membership)
        manifest = collection.manifest() or {}
        manifest["clustering"] = {**result.params, "libraries": library_versions()}
        collection.write_manifest(manifest)
    return result


def assign_provisional(collection: Collection, *, log: Log = _stderr) -> int:
    """Give pages ingested since the last clustering a provisional cluster, without a re-fit.

    Loads the models of the last :func:`cluster` (``clustering.joblib``) and places every page
    that has no assignment with :func:`~docsort.clustering.predict_clusters` (stored UMAP
    ``transform`` + ``hdbscan.approximate_predict``, nearest-neighbour fallback; 2-D UMAP
    ``transform`` for the map); stored with membership ``provisional`` until the next
    :func:`cluster` replaces them. The caller must hold the collection's write lock
    (:func:`ingest` calls this at its end).

    Returns:
        The number of pages given a provisional assignment (noise included); 0 when the collection
        was never clustered, every page has an assignment, or the models file is missing,
        unreadable or not the one of the stored clustering (said in ``log``: run ``docsort
        cluster``).
    """
    import joblib

    pending = collection.unclustered_page_ids()
    run = collection.last_cluster_run()
    if len(pending) == 0 or run is None:
        return 0
    path = collection.root / Collection.MODELS
    try:
        models = joblib.load(path)
    except Exception as exc:  # missing, truncated, or pickled by incompatible library versions
        log(f"{len(pending)} new pages not given a cluster: cannot read {path} ({exc}); run `docsort cluster`")
        return 0
    if models.get("models_token") != run["settings"].get("models_token"):
        log(f"{len(pending)} new pages not given a cluster: {path} is not the model of the stored clustering; run `docsort cluster`")
        return 0
    page_ids, vecs = collection.vectors(pending)
    clusters, strengths, xy, _ = predict_clusters(models, vecs)
    return collection.store_provisional(page_ids, clusters, strengths, xy)


def cluster_table(collection: Collection) -> list[ClusterRow]:
    """Summary of the stored clustering: one :class:`ClusterRow` per cluster, largest first, noise
    last, with the confident members, reassigned and provisional pages of each counted apart."""
    df = collection.page_table()
    df = df[df["cluster"].notna()]
    if df.empty:
        return []
    doc_cluster = document_clusters(df["document_id"].to_numpy(), df["cluster"].to_numpy(dtype=np.int64))
    rows = []
    for cid, group in df.groupby("cluster"):
        cid = int(cid)
        examples = list(dict.fromkeys(Path(p).name for p in group["path"]))[:3]
        kinds = group["membership"].value_counts()
        rows.append(
            ClusterRow(
                cluster=cid,
                name=str(group["cluster_name"].iloc[0]),
                pages=len(group),
                documents=sum(1 for c in doc_cluster.values() if c == cid),
                examples=examples,
                members=int(kinds.get("member", 0) + kinds.get("noise", 0)),
                reassigned=int(kinds.get("reassigned", 0)),
                provisional=int(kinds.get("provisional", 0)),
            )
        )
    rows.sort(key=lambda r: (r.cluster < 0, -r.pages, r.cluster))
    return rows


# ---------------------------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageHit:
    """A neighbouring page: rank (1 = nearest), cosine similarity, and where the page comes from."""

    query_page: int
    rank: int
    score: float
    page_id: int
    document_id: int
    path: str
    page_no: int
    cluster: int | None
    cluster_name: str | None


@dataclass(frozen=True)
class DocumentHit:
    """A neighbouring document: best page similarity over all query pages, and its best page."""

    rank: int
    score: float
    document_id: int
    path: str
    best_page_no: int
    pages_matched: int
    cluster: int | None
    cluster_name: str | None


@dataclass
class SearchResult:
    """Neighbours of a query (a file embedded on the fly, or a stored page).

    Attributes:
        query: what was searched; query_pages: number of query pages;
        pages: per-page hits, best first within each query page;
        documents: documents ranked by their best page similarity.
    """

    query: str
    query_pages: int
    pages: list[PageHit]
    documents: list[DocumentHit]


def _search_vectors(collection: Collection, settings: PipelineSettings, queries: np.ndarray, k: int, query: str, index=None) -> SearchResult:
    if index is None:
        # Readers never write the index file: a writer may hold the lock (ingest in progress).
        index, _ = sync_index(collection, settings.index, persist=False)
    if index is None or index.ntotal == 0:
        raise CollectionError(f"{collection.root} has no pages to search")
    # Fetch more pages than k so that document-level results can reach k distinct documents.
    scores, ids = search_index(index, queries, max(k, 4 * k))
    records = {p.page_id: p for p in collection.pages(np.unique(ids[ids >= 0]))}
    page_hits: list[PageHit] = []
    docs: dict[int, dict] = {}
    for q in range(len(queries)):
        rank = 0
        for score, pid in zip(scores[q], ids[q]):
            if pid < 0:
                continue
            rec = records[int(pid)]
            if rank < k:
                rank += 1
                page_hits.append(PageHit(q + 1, rank, float(score), rec.page_id, rec.document_id, rec.path, rec.page_no, rec.cluster, rec.cluster_name))
            d = docs.setdefault(rec.document_id, {"score": -np.inf, "pages": set(), "rec": rec})
            d["pages"].add(rec.page_id)
            if score > d["score"]:
                d["score"], d["rec"] = float(score), rec
    # Document cluster = majority of its pages.
    table = collection.page_table()
    table = table[table["document_id"].isin(list(docs)) & table["cluster"].notna()]
    doc_cluster = document_clusters(table["document_id"].to_numpy(), table["cluster"].to_numpy(dtype=np.int64)) if len(table) else {}
    names = dict(zip(table["cluster"].astype(int), table["cluster_name"])) if len(table) else {}
    ranked = sorted(docs.items(), key=lambda kv: (-kv[1]["score"], kv[0]))[:k]
    doc_hits = [
        DocumentHit(i + 1, d["score"], did, d["rec"].path, d["rec"].page_no, len(d["pages"]), doc_cluster.get(did), names.get(doc_cluster.get(did)))
        for i, (did, d) in enumerate(ranked)
    ]
    return SearchResult(query=query, query_pages=len(queries), pages=page_hits, documents=doc_hits)


def search_file(
    collection: Collection, path: str | Path, settings: PipelineSettings, k: int = 5, *, extractor: FeatureExtractor | None = None,
    index=None,
) -> SearchResult:
    """Neighbours of every page of a file, embedded on the fly and not stored.

    Args:
        path: a PDF, TIFF, PNG or JPEG; settings: the collection's (:func:`effective_settings`);
        k: neighbours per query page and documents returned; extractor: reuse a built one.

    Raises:
        PageError: the file cannot be read; CollectionError: empty collection or other weights.
    """
    found = list(discover_files([path]))
    if len(found) != 1:
        raise PageError(f"{path}: expected one file, found {len(found)}")
    src = found[0]
    if isinstance(src, PageError):
        raise src
    if src.format == "pdf":
        require_poppler()
    extractor = extractor or make_extractor(settings)
    _check_extractor(collection, extractor)
    images = [p.image for p in iter_pages(src, settings.render)]
    queries = extractor.embed(np.stack([to_network_input(im, extractor.input_size) for im in images]))
    return _search_vectors(collection, settings, queries, k, str(path), index)


def search_page(collection: Collection, page_id: int, settings: PipelineSettings, k: int = 5, *, index=None) -> SearchResult:
    """Neighbours of a stored page (its stored vector; the page itself ranks first, score 1.0).

    ``index``: an already loaded FAISS index holding exactly the stored pages (the UI caches one);
    read and synced from ``index.faiss`` when ``None``. :func:`search_file` takes it too.
    """
    _, vec = collection.vectors([page_id])
    return _search_vectors(collection, settings, vec, k, f"page {page_id}", index)


# ---------------------------------------------------------------------------------------------
# info and export
# ---------------------------------------------------------------------------------------------


def info(collection: Collection) -> dict:
    """Collection summary: counts, backbone, layer, pooling, weights source and sha256, last run."""
    manifest = collection.manifest() or {}
    feats = manifest.get("features", {})
    run = collection.last_cluster_run()
    return {
        "collection": str(collection.root.resolve()),
        **collection.counts(),
        "backbone": feats.get("backbone"),
        "layer": feats.get("layer"),
        "layer_output_shape": feats.get("layer_output_shape"),
        "pooling": feats.get("pooling"),
        "dim": feats.get("dim"),
        "weights_source": feats.get("weights", {}).get("source"),
        "weights_sha256": feats.get("weights", {}).get("sha256"),
        "weights_note": feats.get("weights", {}).get("note"),
        "pipeline": manifest.get("pipeline", {}).get("name"),
        "created_at": manifest.get("created_at"),
        "last_clustered": run["created_at"] if run else None,
    }


def export_pages(collection: Collection, out: str | Path, *, vectors: bool = False) -> int:
    """Write one row per page to ``.parquet`` or ``.csv``.

    Columns: path, page, sha256, cluster, cluster_name, document_cluster, umap_x, umap_y, page_id,
    document_id, membership (``member`` | ``reassigned`` | ``noise`` | ``provisional``); with ``vectors`` also ``vector`` (a list of D float32, Parquet) or ``f0..f{D-1}``
    columns (CSV).

    Returns:
        The number of rows written.

    Raises:
        ValueError: an unsupported file extension.
    """
    import pandas as pd

    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"{out}: export to .parquet or .csv")
    df = collection.page_table()
    clustered = df[df["cluster"].notna()]
    doc_cluster = document_clusters(clustered["document_id"].to_numpy(), clustered["cluster"].to_numpy(dtype=np.int64)) if len(clustered) else {}
    df["document_cluster"] = df["document_id"].map(doc_cluster).astype("Int64")
    cols = ["path", "page", "sha256", "cluster", "cluster_name", "document_cluster", "umap_x", "umap_y", "page_id", "document_id",
            "membership"]
    df = df[cols]
    if vectors:
        ids, vecs = collection.vectors()
        if out.suffix.lower() == ".parquet":
            df = df.assign(vector=list(vecs))
        else:
            df = pd.concat([df, pd.DataFrame(vecs, columns=[f"f{i}" for i in range(vecs.shape[1])])], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".parquet":
        df.to_parquet(out, index=False)
    else:
        df.to_csv(out, index=False)
    return len(df)
