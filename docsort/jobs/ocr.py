"""The *text* stage: optical character recognition of stored pages with Tesseract.

OCR is slow (about 0.5-2 s per page per core here, 30-60x the visual path), so it never runs
inside the embedding loop. :func:`backfill` OCRs the stored pages that have no text yet, after
``docsort ingest`` stored and indexed their vectors (``ingest --ocr``) or later (``docsort ocr``):

* **Resumable.** Pages are OCR'd in chunks of :data:`CHUNK_PAGES` pages of one document by a
  pool of ``spawn``-ed worker processes, at most ``2 * workers`` chunks in flight; each finished
  chunk is stored at once in one SQLite transaction (:meth:`Collection.store_page_texts`). A crash,
  ``SIGKILL`` or Ctrl-C loses at most the chunks in flight, and the next run OCRs only the pages
  still without text (:meth:`Collection.pages_needing_text`).
* **One back-fill at a time.** A run holds ``COLLECTION/.ocr.lock`` (filelock) from the moment it
  picks its pages to the end, so a second one (``docsort ocr`` while ``ingest --ocr`` runs) never
  OCRs the same pages: it *waits* up to ``lock_timeout_s`` seconds (saying so), then picks the pages
  still without text, or gives up with :class:`CollectionBusyError`. It does not hold the
  collection's write lock (``.lock``) while OCR runs, so ingest, clustering and labelling go on;
  it takes that lock only for the moment it records its settings in ``manifest.json``.
* **Never from a changed file.** Pages are read again from the document's file: a path is used
  only if its sha256 equals the stored one (the first matching path of every path the document
  was seen under). A document with no such file gets an error row per page
  (``source file not found or changed: PATHS``), reported, and OCR'd by a later
  ``retry_failed`` run once the file is back.
* **Per-page errors** (Tesseract's timeout, a Tesseract error, a page that cannot be rendered)
  become that page's stored ``error``; they never stop the run.

Each worker runs Tesseract single-threaded (``OMP_THREAD_LIMIT=1``): Tesseract's OpenMP threads
made one page ~5x *slower* on this 2-core machine (0.84 s vs 4.0 s wall for the 150 dpi page
``sample_docs/ocrmypdf/c03-29.jpg``), and one Tesseract process per core is the parallelism that
scales (tesseract-ocr/tesseract issues #263, #1081 and #2611, where the maintainers advise
``OMP_THREAD_LIMIT=1``; ``benchmarks/RESULTS.md``, "OCR (issue 6)").

Sources: Tesseract's manual (``tesseract(1)``: ``--psm``, ``-l``, ``--list-langs``), its TSV
output (levels 1 page .. 5 word, ``conf`` -1 for non-words), pytesseract's ``image_to_data``
(runs the ``tesseract`` binary with ``tessedit_create_tsv=1`` and parses the TSV)."""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from docsort.config.settings import OcrSettings, PipelineSettings
from docsort.core.ocr import _error_row, _init_worker, ocr_pages, require_tesseract
from docsort.core.pages import SourceFile, sha256_file
from docsort.core.workers import ProcessExpired, in_worker, worker_pool
from docsort.store.manifest import recorded_settings, write_manifest
from docsort.store.storage import Collection, CollectionBusyError

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


#: Pages of one document per worker task; a finished task is stored in one transaction, so a crash
#: loses at most ``2 * workers * CHUNK_PAGES`` pages of OCR (~16 pages, ~15 s on 2 cores).
CHUNK_PAGES = 4


#: The back-fill lock, in the collection folder.
LOCK = ".ocr.lock"


@dataclass
class OcrReport:
    """What one OCR back-fill did.

    Attributes:
        pages_done: pages OCR'd and stored without error (pages with no words included).
        pages_failed: pages stored with an error (file missing or changed, render error, timeout).
        words: words recognised in ``pages_done``.
        mean_confidence: mean word confidence over all those words (0-100; each page's mean
            weighted by its words), ``None`` when no words.
        seconds: wall time of the run, seconds; pages_per_s: (pages_done + pages_failed) / seconds.
        engine: e.g. ``"tesseract 5.3.0"``; lang: the Tesseract languages.
        failures: ``(path, reason)``: one per document whose file is missing or changed, one per
            page for other errors (reason starts ``page N:``).
    """

    pages_done: int = 0
    pages_failed: int = 0
    words: int = 0
    mean_confidence: float | None = None
    seconds: float = 0.0
    pages_per_s: float = 0.0
    engine: str = ""
    lang: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)


def ocr_pipeline(collection: Collection, requested: PipelineSettings, *, explicit: bool = False) -> PipelineSettings:
    """The pipeline whose ``ocr`` section a back-fill of ``collection`` runs with.

    The rule of :func:`docsort.store.manifest.effective_settings` for the OCR section: the explicitly
    chosen pipeline's (``explicit``), else the one recorded in the collection's manifest
    (:func:`docsort.store.manifest.recorded_settings`), else ``requested``.
    """
    if explicit:
        return requested
    return recorded_settings(collection) or requested


def with_ocr(settings: PipelineSettings, **changes: object) -> PipelineSettings:
    """A copy of ``settings`` with some ``ocr`` settings replaced (``lang="eng+fra"``, ``workers=2``),
    validated; ``None`` values are ignored.

    Raises:
        pydantic.ValidationError: a value the schema refuses (e.g. ``lang="eng fra"``).
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return settings
    return settings.model_copy(update={"ocr": OcrSettings(**(settings.ocr.model_dump() | changes))})


def _lock(collection: Collection, timeout_s: float, log: Log) -> FileLock:
    lock = FileLock(str(collection.root / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"another OCR run is working on {collection.root} (lock {collection.root / LOCK}); "
            f"waiting up to {timeout_s:.0f} s, then OCR'ing what it left")
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout as exc:
            raise CollectionBusyError(
                f"collection {collection.root} is busy: another OCR run holds {collection.root / LOCK}; "
                "try again when it has finished (its pages are not OCR'd twice)"
            ) from exc
    return lock


def _record_settings(collection: Collection, ocr: OcrSettings, engine: str, lock_timeout_s: float, log: Log) -> None:
    """Record the OCR settings in ``manifest.json`` under ``"ocr"`` (read-modify-write under the
    collection's write lock, held only for this)."""
    import importlib.metadata as md

    with collection.write_lock(lock_timeout_s, on_wait=log):
        manifest = collection.manifest()
        if manifest is None:
            return
        manifest["ocr"] = {
            "engine": engine,
            "lang": ocr.lang,
            "dpi": ocr.dpi,
            "psm": ocr.psm,
            "max_long_side_px": ocr.max_long_side_px,
            "timeout_s": ocr.timeout_s,
            "pytesseract": md.version("pytesseract"),
            "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_manifest(collection, manifest)


@dataclass
class _Task:
    document_id: int
    pages: list[tuple[int, int]]  # (page_id, page_no)


def _tasks(todo: Iterable[tuple[int, int, int]]) -> list[_Task]:
    tasks: list[_Task] = []
    for page_id, doc_id, page_no in todo:
        if not tasks or tasks[-1].document_id != doc_id or len(tasks[-1].pages) >= CHUNK_PAGES:
            tasks.append(_Task(doc_id, []))
        tasks[-1].pages.append((page_id, page_no))
    return tasks


def _find_source(collection: Collection, document_id: int) -> tuple[SourceFile | None, str, list[str]]:
    """The document's file: the first of its recorded paths whose bytes have the stored sha256.

    Returns:
        ``(source or None, the document's first path, every recorded path)``.
    """
    rec = collection.document_record(document_id)
    for p in rec["paths"]:
        path = Path(p)
        try:
            if path.is_file() and path.stat().st_size == rec["size_bytes"] and sha256_file(path) == rec["sha256"]:
                return SourceFile(path=path, format=rec["format"], size_bytes=rec["size_bytes"]), rec["path"], rec["paths"]
        except OSError:
            continue
    return None, rec["path"], rec["paths"]


def backfill(
    collection: Collection,
    settings: PipelineSettings,
    *,
    page_ids: Iterable[int] | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    log: Log = _stderr,
    on_progress: Callable[[int, int], None] | None = None,
    lock_timeout_s: float = 600.0,
) -> OcrReport:
    """OCR every stored page that has no text in ``settings.ocr.lang`` yet, and store the text.

    See the module docstring for how it resumes, locks and finds files. Pages are OCR'd by
    ``settings.ocr.workers`` worker processes (0 = one per CPU core; 1, or a single task, runs in
    this process), each finished chunk stored in its own transaction; the FTS5 index follows by
    trigger. With ``settings.ray.address`` the pages are OCR'd as Ray tasks instead
    (:func:`docsort.jobs.ray_ingest.ocr_on_ray`), stored here the same way. The settings (lang, dpi, psm, max_long_side_px, timeout, engine version) are recorded
    in ``manifest.json`` under ``"ocr"``, under the collection's write lock, taken for that moment
    only: do not call this while holding :meth:`Collection.write_lock` (it would wait for itself
    for ``lock_timeout_s`` and raise :class:`CollectionBusyError`).

    Args:
        collection: an open collection.
        settings: the pipeline; only ``settings.ocr`` is used.
        page_ids: restrict to these pages (default: every page).
        retry_failed: also redo pages whose last OCR failed.
        progress: show a tqdm progress bar ("OCR pages") on stderr.
        log: where failures and waiting notes go.
        on_progress: called with ``(pages_done, pages_total)`` after each stored chunk.
        lock_timeout_s: how long to wait for another OCR run (``.ocr.lock``) or, for the manifest
            update, for another writer (``.lock``), seconds.

    Returns:
        An :class:`OcrReport`.

    Raises:
        TesseractMissingError: Tesseract or a language of ``settings.ocr.lang`` is not installed
            (checked before anything else).
        CollectionBusyError: another OCR run, or another writer, held its lock for ``lock_timeout_s``.
        KeyboardInterrupt: passed on; chunks stored before it are kept.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    ocr = settings.ocr
    engine = require_tesseract(ocr.lang)
    report = OcrReport(engine=engine, lang=ocr.lang)
    wanted = None if page_ids is None else [int(i) for i in page_ids]
    lock = _lock(collection, lock_timeout_s, log)
    try:
        todo = collection.pages_needing_text(ocr.lang, retry_failed=retry_failed, page_ids=wanted)
        if todo:
            _record_settings(collection, ocr, engine, lock_timeout_s, log)
            todo = collection.pages_needing_text(ocr.lang, retry_failed=retry_failed, page_ids=wanted)
        tasks = _tasks(todo)
        total = len(todo)
        bar = tqdm(total=total, desc="OCR pages", unit="page", disable=not progress or total == 0, file=sys.stderr)
        weighted = 0.0
        done = 0
        reported: set[int] = set()  # documents whose missing file was reported
        if settings.ray.address:  # issue 17: the pages as Ray tasks; stored here as they finish
            from docsort.jobs.ray_ingest import ocr_on_ray

            stream = ocr_on_ray(tasks, _source_cache(collection), ocr, engine, settings.ray, log)
        else:
            stream = _ocr_stream(collection, tasks, ocr, engine, log)
        try:
            for task, path, rows, missing in stream:
                collection.store_page_texts(rows)
                if missing and task.document_id not in reported:
                    reported.add(task.document_id)
                    report.failures.append(_log_failure(log, path, str(rows[0]["error"])))
                for r in rows:
                    if r.get("error"):
                        report.pages_failed += 1
                        if not missing:
                            report.failures.append(_log_failure(log, path, _page_reason(r, path)))
                    else:
                        report.pages_done += 1
                        report.words += int(r["n_words"])
                        if r["confidence"] is not None:
                            weighted += float(r["confidence"]) * int(r["n_words"])
                done += len(rows)
                bar.update(len(rows))
                if on_progress:
                    on_progress(done, total)
        finally:
            stream.close()  # stops the worker pool now, also on Ctrl-C
            bar.close()
    finally:
        lock.release()
    report.mean_confidence = weighted / report.words if report.words else None
    report.seconds = time.perf_counter() - t0
    report.pages_per_s = (report.pages_done + report.pages_failed) / report.seconds if report.seconds > 0 else 0.0
    return report


def _page_reason(row: dict, path: str) -> str:
    error = str(row["error"])
    if path and error.startswith(f"{path}: "):
        error = error[len(path) + 2 :]
    return f"page {row['page_no']}: {error}"


def _log_failure(log: Log, path: str, reason: str) -> tuple[str, str]:
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)
    log(f"OCR error: {shown}: {reason}" if shown else f"OCR error: {reason}")
    return (path, reason)


def _source_cache(collection: Collection) -> Callable[[_Task], tuple[SourceFile | None, str, list[str]]]:
    """:func:`_find_source` of a task's document, remembered for the next task (the tasks of a
    document are consecutive: one entry is enough)."""
    cache: dict[int, tuple[SourceFile | None, str, list[str]]] = {}

    def source(task: _Task) -> tuple[SourceFile | None, str, list[str]]:
        if task.document_id not in cache:
            cache.clear()
            cache[task.document_id] = _find_source(collection, task.document_id)
        return cache[task.document_id]

    return source


def _ocr_stream(collection: Collection, tasks: list[_Task], ocr: OcrSettings, engine: str, log: Log):
    """Yield ``(task, path, rows, missing)`` for every task, in the order they finish.

    ``path`` is the file the pages were read from; ``missing`` is true when no recorded path of
    the document holds its bytes (then ``path`` is its first recorded path and ``rows`` its error
    rows, made here without a worker). With more than one worker, tasks run in a pebble pool of
    ``spawn``-ed processes (:func:`docsort.core.workers.worker_pool`), at most ``2 * workers`` in
    flight. A worker that dies fails only its own task, and pebble replaces it: that task runs
    again, and if it kills a worker a second time it is stored as failed ("OCR worker crashed")
    while the others complete. If the pool cannot finish a single task (workers cannot start here),
    the rest runs in this process.
    """
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, wait

    source = _source_cache(collection)

    def failed(task: _Task, path: str, error: str) -> list[dict]:
        return [_error_row(pid, no, ocr.lang, engine, error, 0.0) for pid, no in task.pages]

    def run_here(task: _Task):
        src, first_path, paths = source(task)
        if src is None:
            return task, first_path, failed(task, first_path, f"source file not found or changed: {', '.join(paths)}"), True
        try:
            rows = ocr_pages(src, task.pages, ocr, engine)
        except Exception as exc:  # ocr_pages catches what it expects; anything else fails the task only
            rows = failed(task, str(src.path), f"{src.path}: OCR failed: {exc}")
        return task, str(src.path), rows, False

    workers = ocr.workers or os.cpu_count() or 1
    if in_worker():
        workers = 1  # never start a pool from inside a worker process
    if min(workers, len(tasks)) <= 1:
        for task in tasks:
            yield run_here(task)
        return
    workers = min(workers, len(tasks))

    queue: deque[int] = deque(range(len(tasks)))
    crashed: set[int] = set()  # tasks whose worker died once: a second death fails them
    inflight: dict = {}  # future -> (task index, path)
    pool = worker_pool(workers, _init_worker, (os.getpid(),))
    ever_worked = False
    try:
        while queue or inflight:
            while queue and len(inflight) < 2 * workers:
                i = queue.popleft()
                src, _, _ = source(tasks[i])
                if src is None:
                    yield run_here(tasks[i])
                    continue
                inflight[pool.schedule(ocr_pages, args=(src, tasks[i].pages, ocr, engine))] = (i, str(src.path))
            if not inflight:
                continue
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for fut in finished:
                i, path = inflight.pop(fut)
                try:
                    rows = fut.result()
                except ProcessExpired:
                    if not ever_worked:
                        log("warning: OCR worker processes failed; running OCR in this process instead")
                        pool.stop()
                        for j in sorted({i, *queue, *(k for k, _ in inflight.values())}):
                            yield run_here(tasks[j])
                        inflight.clear()
                        return
                    if i in crashed:  # it killed a worker twice: it is the task that kills workers
                        yield tasks[i], path, failed(tasks[i], path, f"{path}: OCR worker crashed"), False
                    else:
                        crashed.add(i)
                        queue.appendleft(i)
                    continue
                except Exception as exc:
                    rows = failed(tasks[i], path, f"{path}: OCR failed: {exc}")
                ever_worked = True
                yield tasks[i], path, rows, False
    finally:
        pool.stop()
        pool.join()
