"""The ingest job: files -> rendered pages -> vectors -> the collection (and the index, and the
document-type predictions of the new pages).

A reader (the render stream, worker processes), an embedder (batches of pages through the feature
extractor) and a writer (a document is committed once all its pages are embedded)."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from docsort.config.settings import PipelineSettings
from docsort.core.features import FeatureExtractor
from docsort.core.ocr import require_tesseract
from docsort.core.pages import (
    NotADocumentError,
    PageError,
    SourceFile,
    count_pages,
    discover_files,
    exit_with_parent,
    render_for_network,
    require_poppler,
    sha256_file,
)
from docsort.core.workers import ProcessExpired, in_worker, worker_pool
from docsort.jobs.finetuning import type_after_ingest
from docsort.jobs.cluster import assign_provisional
from docsort.jobs.ocr import OcrReport
from docsort.jobs.ocr import backfill as ocr_backfill
from docsort.queries.vectors import active_projection
from docsort.store.index_file import sync_index
from docsort.store.manifest import _check_extractor, _new_manifest, make_extractor, read_manifest, write_manifest
from docsort.store.shards import take_leftovers
from docsort.store.storage import Collection

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
class PendingPage:
    """A page of a document being ingested: rendered, then given its vector by the embedder.

    Attributes:
        page_no: 1-based page number; width_px, height_px: the rendered page's size, pixels.
        thumbnail: JPEG bytes; vector: float32 (D,) L2-normalised, ``None`` until embedded.
    """

    page_no: int
    width_px: int
    height_px: int
    thumbnail: bytes
    vector: np.ndarray | None = None


@dataclass
class PendingDocument:
    """A new document on its way from the reader through the embedder to the writer.

    Attributes:
        src: the file; sha256: of its bytes; n_pages: pages it has.
        pages: its pages read so far, in order; read / embedded: how many were read / embedded.
        stored: committed by the writer; failed: dropped (nothing of it is stored).
    """

    src: SourceFile
    sha256: str
    n_pages: int
    pages: list[PendingPage] = field(default_factory=list)
    read: int = 0
    embedded: int = 0
    stored: bool = False
    failed: bool = False

    @property
    def complete(self) -> bool:
        """Every page read and embedded."""
        return self.embedded == self.n_pages


class Embedder:
    """Ingest's embedder: batches rendered pages of any documents through the feature extractor.

    Pages go in with :meth:`add`; every ``extractor.batch_size`` pages (and at :meth:`flush`) one
    forward pass gives them their vectors, float32 (batch, D). Its wall time is ``timing["model"]``.
    """

    def __init__(self, extractor: FeatureExtractor, timing: dict[str, float], on_embedded: Callable[[int], None]):
        self.extractor, self.timing, self.on_embedded = extractor, timing, on_embedded
        self._pixels: list[np.ndarray] = []
        self._owners: list[tuple[PendingDocument, PendingPage]] = []

    def add(self, doc: PendingDocument, page: PendingPage, pixels: np.ndarray) -> list[PendingDocument]:
        """Queue one page (``pixels``: uint8 (H, W, C) network input); returns the documents a full
        batch completed (every page embedded)."""
        self._pixels.append(pixels)
        self._owners.append((doc, page))
        return self.flush() if len(self._pixels) >= self.extractor.batch_size else []

    def flush(self) -> list[PendingDocument]:
        """Embed the queued pages now; returns the documents this completed, in order."""
        if not self._pixels:
            return []
        t = time.perf_counter()
        vecs = self.extractor.embed(np.stack(self._pixels))
        self.timing["model"] += time.perf_counter() - t
        for (doc, page), vec in zip(self._owners, vecs):
            page.vector = vec
            doc.embedded += 1
        n = len(self._pixels)
        finished = list({id(d): d for d, _ in self._owners if d.complete}.values())
        self._pixels.clear()
        self._owners.clear()
        self.on_embedded(n)
        return finished

    def drop(self, doc: PendingDocument) -> None:
        """Take ``doc``'s queued pages out of the batch (its file failed)."""
        keep = [i for i, (d, _) in enumerate(self._owners) if d is not doc]
        self._pixels[:] = [self._pixels[i] for i in keep]
        self._owners[:] = [self._owners[i] for i in keep]


class Writer:
    """Ingest's writer: commits a document, all its pages with their vectors, in one transaction
    once the embedder has embedded them all, and records failed files. Its wall time is
    ``timing["database"]``."""

    def __init__(self, collection: Collection, report: IngestReport, log: Log):
        self.collection, self.report, self.log = collection, report, log

    def commit(self, docs: Iterable[PendingDocument]) -> None:
        """Store each complete document of ``docs`` not stored yet (:meth:`Collection.add_document`)."""
        t = time.perf_counter()
        for doc in docs:
            _store(self.collection, doc, self.report, self.log)
        self.report.stage_seconds["database"] += time.perf_counter() - t

    def stored(self, doc: PendingDocument, added: bool) -> None:
        """Count ``doc`` as stored by a bulk take-in (:class:`docsort.store.shards.ShardIntake`):
        ``added`` when this run wrote it, else it was already in the collection."""
        doc.stored, doc.pages = True, []
        if added:
            self.report.documents_added += 1
            self.report.pages_added += doc.n_pages
        else:
            self.report.already_stored += 1

    def fail(self, doc: PendingDocument, exc: PageError) -> None:
        """Drop ``doc`` (nothing of it is stored) and record why."""
        doc.failed, doc.pages = True, []
        self.report.failures.append(_fail(self.collection, _path_reason(exc, doc.src.path), self.log))


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
    With ``settings.ray.address`` set, pages are rendered and embedded on Ray
    (:func:`docsort.jobs.ray_ingest.embed_on_ray`); listing, hashing and the writer stay here.

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
            indexed and the write lock is released, :func:`docsort.jobs.ocr.backfill` OCRs the new pages
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
        RayMissingError: ``settings.ray.address`` is set and Ray is not installed (checked first).
    """
    from tqdm import tqdm

    if settings.ray.address:
        from docsort.core.distributed import require_ray

        require_ray()
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
        _check_extractor(collection, extractor, store=True)
        report.weights_note = extractor.description["weights"]["note"]
        if read_manifest(collection) is None:
            write_manifest(collection, _new_manifest(settings, extractor))

        # 0. what a killed run on Ray left as Parquet shards is stored first, whichever way this
        #    run goes (issue 17): its whole documents count as added by this run.
        t = time.perf_counter()
        from_shards, unreadable = take_leftovers(collection)
        report.stage_seconds["database"] += time.perf_counter() - t
        if from_shards.stored:
            report.documents_added += len(from_shards.stored)
            report.pages_added += sum(from_shards.stored.values())
            log(f"took in {len(from_shards.stored)} documents ({sum(from_shards.stored.values())} pages) "
                "from the Parquet shards of an interrupted run")
        for name in unreadable:
            log(f"{collection.root / collection.SHARDS / name}: unreadable shard deleted; its pages are embedded again")

        # 1. discover, hash, count pages
        t_scan = time.perf_counter()
        queue: list[PendingDocument] = []
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
                if sha in from_shards.stored and sha not in seen:  # taken in above: counted as added
                    seen.add(sha)
                    if collection.add_path(existing, str(item.path)):
                        report.new_paths += 1
                    continue
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
            queue.append(PendingDocument(item, sha, n))

        report.stage_seconds["scan"] += time.perf_counter() - t_scan

        # 2. reader (render in worker processes, bounded queue) -> embedder (batches) -> writer
        #    (each document in one transaction as soon as all its pages have vectors).
        total = sum(p.n_pages for p in queue)
        bar = tqdm(total=total, desc="embedding pages", unit="page", disable=not progress or total == 0, file=sys.stderr)
        stages = report.stage_seconds
        done = 0

        def embedded(n: int) -> None:
            nonlocal done
            done += n
            bar.update(n)
            if on_progress:
                on_progress(done, total)

        embedder = Embedder(extractor, stages, embedded)
        writer = Writer(collection, report, log)
        tasks = [
            (doc, first, min(doc.n_pages, first + settings.render.pdf_chunk_pages - 1))
            for doc in queue
            for first in range(1, doc.n_pages + 1, settings.render.pdf_chunk_pages)
        ]
        workers = settings.render.workers or os.cpu_count() or 1
        t_wait = time.perf_counter()
        try:
            if settings.ray.address:  # issue 17: render and embed on Ray; the same writer, here
                from docsort.jobs.ray_ingest import embed_on_ray

                embed_on_ray(tasks, settings, extractor, writer, embedded, stages, log, PendingPage)
                tasks = []
            for doc, pages, error, seconds, last_chunk in _render_stream(tasks, settings.render, extractor.input_size, workers, log,
                                                                         ahead_pages=2 * extractor.batch_size):
                stages["render"] += seconds
                if doc.failed:
                    continue
                for rp in pages:
                    page = PendingPage(rp.page_no, rp.width_px, rp.height_px, rp.thumbnail)
                    doc.pages.append(page)
                    doc.read += 1
                    writer.commit(embedder.add(doc, page, rp.pixels))
                if error is None and last_chunk and doc.read != doc.n_pages:
                    error = PageError(f"{doc.src.path}: expected {doc.n_pages} pages, read {doc.read}")
                if error is not None:
                    embedder.drop(doc)
                    bar.update(doc.n_pages - doc.embedded)
                    writer.fail(doc, error)
                elif last_chunk and doc.complete:  # all pages embedded in earlier batches
                    writer.commit([doc])
            writer.commit(embedder.flush())
        finally:
            bar.close()
            # Always: also repairs an index file that disagrees with the database.
            stages["pipeline_wall"] += time.perf_counter() - t_wait
            t = time.perf_counter()
            _, info_ = sync_index(collection, settings.index)
            report.index = f"{info_.kind}, {info_.ntotal} vectors ({info_.action})"
            projection = active_projection(collection, settings)
            if projection is not None:
                # The projected index, which searches read; index.faiss (raw vectors) is kept too,
                # for the collection with the projection turned off.
                _, pinfo = sync_index(collection, settings.index, projection=projection)
                report.index += f"; scan-style invariant {projection.dims}-d: {pinfo.kind}, {pinfo.ntotal} vectors ({pinfo.action})"
            stages["index"] += time.perf_counter() - t
        type_after_ingest(collection, settings, log=log)  # document types for new pages; no-op without a classifier
        report.provisional_pages = assign_provisional(collection, log=log)  # issue 5: clusters for new pages, no re-fit
        if run_ocr:
            ocr_pages = np.setdiff1d(collection.page_ids(), known_pages).tolist() + [
                pid for pid, doc, _ in collection.pages_needing_text(settings.ocr.lang) if doc in stored_docs]
    if run_ocr:  # after the write lock: OCR is slow and must not block other writers
        report.ocr = ocr_backfill(collection, settings, page_ids=ocr_pages, progress=progress, log=log, lock_timeout_s=lock_timeout_s)
    report.seconds = time.perf_counter() - t0
    return report


def _render_stream(tasks, render, input_size, workers: int, log: Log = _stderr, ahead_pages: int = 0):
    """Ingest's reader: yield ``(doc, pages, error, seconds, last_chunk)`` for each task, in task order.

    With ``workers > 1`` the chunks are rendered by a pebble pool of ``spawn``-ed worker processes
    (:func:`docsort.core.workers.worker_pool`; no TensorFlow in them), with at least ``2 * workers``
    chunks and, beyond that, up to ``ahead_pages`` pages in flight (the ingest asks for two batches),
    so the workers keep rendering the next batch while this process runs the forward pass on the
    current one, and memory stays flat whatever the corpus size. A worker that dies fails only its
    chunk's document (pebble replaces the worker); if the pool cannot finish a single chunk, the rest
    is rendered in this process.
    """
    last_of = {}
    for i, (doc, _, _) in enumerate(tasks):
        last_of[id(doc)] = i
    if in_worker():
        workers = 1  # never start a pool from inside a worker process
    if workers <= 1 or len(tasks) <= 1:
        for i, (doc, first, last) in enumerate(tasks):
            yield (doc, *render_for_network(doc.src, render, input_size, first, last), last_of[id(doc)] == i)
        return

    pool = worker_pool(workers, exit_with_parent, (os.getpid(),))
    pool_done = 0  # chunks the pool finished
    in_process = False
    pending: deque = deque()
    next_task = 0
    inflight_pages = 0

    def n_pages(i):
        return tasks[i][2] - tasks[i][1] + 1

    def submit(i):
        nonlocal inflight_pages
        doc, first, last = tasks[i]
        inflight_pages += n_pages(i)
        fut = None if in_process else pool.schedule(render_for_network, args=(doc.src, render, input_size, first, last))
        pending.append((i, fut))

    def fill():
        nonlocal next_task
        while next_task < len(tasks) and (len(pending) < 2 * workers or inflight_pages < ahead_pages):
            submit(next_task)
            next_task += 1

    try:
        fill()
        while pending:
            i, fut = pending.popleft()
            inflight_pages -= n_pages(i)
            doc, first, last = tasks[i]
            if fut is None:
                result = render_for_network(doc.src, render, input_size, first, last)
            else:
                try:
                    result = fut.result()
                    pool_done += 1
                except ProcessExpired:
                    if pool_done == 0:
                        # The pool never worked (workers cannot start here): render in this process.
                        log("warning: rasterization worker processes failed; rendering in this process instead")
                        in_process = True
                        pool.stop()
                        inflight = [j for j, _ in pending]
                        pending.clear()
                        inflight_pages = 0
                        for j in inflight:
                            submit(j)
                        result = render_for_network(doc.src, render, input_size, first, last)
                    else:
                        # A worker died (out of memory, a crash in a decoder): fail this chunk's
                        # document; pebble has replaced the worker and the other chunks go on.
                        result = ([], PageError(f"{doc.src.path}: rendering worker crashed", doc.src.path), 0.0)
            fill()
            yield (doc, *result, last_of[id(doc)] == i)
    finally:
        pool.stop()
        pool.join()


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


def _store(collection: Collection, doc: PendingDocument, report: IngestReport, log: Log) -> None:
    if doc.stored:
        return
    doc.stored = True
    result = collection.add_document(
        sha256=doc.sha256,
        path=str(doc.src.path),
        format=doc.src.format,
        size_bytes=doc.src.size_bytes,
        pages=[(p.page_no, p.width_px, p.height_px, p.vector, p.thumbnail) for p in doc.pages],
    )
    if result is None:
        report.already_stored += 1
        return
    report.documents_added += 1
    report.pages_added += len(doc.pages)
    doc.pages = []  # free thumbnails and vectors
