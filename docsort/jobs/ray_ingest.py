"""The ingest and OCR jobs' stages on a Ray cluster (``--ray local|ADDRESS``, issue 17).

No second pipeline: :func:`docsort.jobs.ingest.ingest` lists and hashes the files and counts
their pages as always, and its :class:`~docsort.jobs.ingest.Writer` commits every document on the
driver, in one transaction per document, idempotently by sha256. Only the middle moves:

* **render**: chunks of ``render.pdf_chunk_pages`` pages (one image file is a chunk of one page),
  grouped into Ray Data ``flat_map`` tasks of at least ``pdf_chunk_pages`` pages, run
  :func:`docsort.core.pages.render_for_network` (the function the in-process worker pool runs) on
  a CPU of any node; one row per page.
* **embed**: ``map_batches`` over an actor pool; every actor builds the feature extractor of the
  pipeline (:func:`docsort.store.manifest.make_extractor`, so the ``features`` section's engine
  choice applies on its node) and runs batches of ``features.batch_size`` pages through
  :meth:`~docsort.core.features.FeatureExtractor.embed`, as the in-process
  :class:`~docsort.jobs.ingest.Embedder` does; one GPU per actor when the cluster has GPUs
  (:func:`docsort.core.distributed.embed_actor_plan`).
* **back to the writer**: the rows stream to the driver (``iter_batches``); a document is
  committed once all its chunks are back.
* **or as Parquet shards** (very large runs, ``[ray] shards``, :func:`use_shards`): the cluster's
  workers write the pages, ``ray.shard_pages`` per file, as Parquet shards under the collection
  (:func:`docsort.store.shards.write_shard`, in a ``map_batches`` task after the actors); only the
  shard names stream to the driver, which has the collection take each shard in with one
  transaction (:class:`docsort.store.shards.ShardIntake`: a document once all its pages are in,
  idempotent by sha256). Shards left by a killed run are taken in first by the next ingest,
  whichever way that one runs (:func:`docsort.store.shards.take_leftovers`).

Every node needs docsort installed and the scans at the same path (a shared file system, or the
same copy on each node). Ray re-runs the tasks of a lost node and restarts lost actors (lineage
reconstruction; Ray Data's defaults); a page that comes back twice is taken once, and a document
is stored whole or not at all, so a lost node or a killed driver never stores a page twice: the
next run skips the stored documents (sha256).

Ray Data reference: ``Dataset.flat_map``, ``Dataset.map_batches(fn=CallableClass,
concurrency=n, num_gpus=...)``, ``Dataset.iter_batches`` (docs.ray.io, "Batch inference").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from docsort.config.settings import OcrSettings, PipelineSettings, RenderSettings
from docsort.core.distributed import connected, embed_actor_plan
from docsort.core.pages import PageError, SourceFile, render_for_network

Log = Callable[[str], None]


def _render_rows(row: dict, render: RenderSettings, input_size: tuple[int, int], channels: int) -> list[dict]:
    """Ray Data ``flat_map``: one Ray task's chunks (``row``: lists ``task``, ``path``, ``format``,
    ``size_bytes``, ``sha256``, ``n_pages``, ``first``, ``last``, one entry per chunk) -> one row per
    rendered page (``pixels`` uint8 (H, W, C)), carrying its document's fields (a Parquet shard
    stores them).

    A chunk that fails gives its pages read so far, or one row with ``page_no`` 0 and blank
    pixels when none, every row carrying the error; ``n_rows`` is how many rows the chunk gave, so
    the driver knows when a chunk is whole."""
    from pathlib import Path

    out: list[dict] = []
    for task, path, fmt, size, sha, n_pages, first, last in zip(row["task"], row["path"], row["format"], row["size_bytes"],
                                                                row["sha256"], row["n_pages"], row["first"], row["last"]):
        src = SourceFile(path=Path(str(path)), format=str(fmt), size_bytes=int(size))
        pages, error, seconds = render_for_network(src, render, input_size, int(first), int(last))
        base = {"task": int(task), "error": "" if error is None else str(error), "n_rows": max(1, len(pages)),
                "path": str(path), "format": str(fmt), "size_bytes": int(size), "sha256": str(sha), "n_pages": int(n_pages)}
        if not pages:
            blank = np.zeros((*input_size, channels), np.uint8)
            out.append({**base, "page_no": 0, "width_px": 0, "height_px": 0, "thumbnail": b"", "pixels": blank,
                        "seconds": seconds})
        out += [{**base, "page_no": p.page_no, "width_px": p.width_px, "height_px": p.height_px, "thumbnail": p.thumbnail,
                 "pixels": p.pixels, "seconds": seconds if i == 0 else 0.0} for i, p in enumerate(pages)]
    return out


def _task_groups(tasks: list, pages_per_task: int) -> list[dict]:
    """Ingest's chunks grouped into Ray tasks of at least ``pages_per_task`` pages (consecutive
    chunks; a one-page image file alone would be a Ray task of a few milliseconds, and Ray's
    per-task cost would dominate)."""
    groups: list[dict] = []
    pages = pages_per_task
    for i, (doc, first, last) in enumerate(tasks):
        if pages >= pages_per_task:
            groups.append({k: [] for k in ("task", "path", "format", "size_bytes", "sha256", "n_pages", "first", "last")})
            pages = 0
        g = groups[-1]
        for k, v in (("task", i), ("path", str(doc.src.path)), ("format", doc.src.format),
                     ("size_bytes", int(doc.src.size_bytes)), ("sha256", doc.sha256), ("n_pages", int(doc.n_pages)),
                     ("first", first), ("last", last)):
            g[k].append(v)
        pages += last - first + 1
    return groups


class _Embed:
    """Ray Data actor of the embedding stage: builds the pipeline's feature extractor once and gives
    every batch of page rows its vectors (float32 (B, D), L2-normalised); the ``pixels`` column is
    dropped, so only vectors and thumbnails travel back. ``SETTINGS`` (the pipeline, as JSON) is set
    on a subclass by :func:`_embed_class`: a class attribute travels with the pickled class, so the
    actor has no constructor arguments in the object store that a restart could lose."""

    SETTINGS: dict = {}

    def __init__(self):
        from docsort.store.manifest import make_extractor

        self.extractor = make_extractor(PipelineSettings(**self.SETTINGS), announce=False)

    def __call__(self, batch: dict) -> dict:
        pixels = np.asarray(batch.pop("pixels"))
        ok = np.asarray(batch["page_no"]) > 0
        vectors = np.zeros((len(pixels), self.extractor.dim), np.float32)
        if ok.any():
            t = time.perf_counter()
            vectors[ok] = self.extractor.embed(pixels[ok])
            batch["model_seconds"] = np.full(len(pixels), (time.perf_counter() - t) / len(pixels))
        else:
            batch["model_seconds"] = np.zeros(len(pixels))
        batch["vector"] = vectors
        return batch


def _embed_class(settings: PipelineSettings) -> type:
    """A :class:`_Embed` that builds ``settings``'s extractor."""
    return type("Embed", (_Embed,), {"SETTINGS": settings.model_dump(mode="json")})


def embed_on_ray(tasks: list, settings: PipelineSettings, extractor, writer, on_embedded: Callable[[int], None],
                 stages: dict[str, float], log: Log, page: type) -> None:
    """Render and embed ingest's chunks on Ray and hand every whole document to ``writer``.

    Args:
        tasks: ``(PendingDocument, first, last)`` chunks, as :func:`docsort.jobs.ingest.ingest` makes them.
        settings: the pipeline (its ``ray`` section says where; the actors build its extractor).
        extractor: the driver's extractor (already checked against the collection): its
            ``input_size``, ``batch_size`` and ``dim``.
        writer: the ingest's :class:`~docsort.jobs.ingest.Writer` (``commit`` / ``fail``).
        on_embedded: called with the number of pages just embedded (progress).
        stages: ``report.stage_seconds`` (``render`` and ``model`` summed over the cluster).
        page: :class:`~docsort.jobs.ingest.PendingPage` (passed in: no import cycle with the ingest job).

    Raises:
        RayMissingError: Ray is not installed; ConnectionError: no cluster at the address.
    """
    if not tasks:
        return
    if use_shards(settings.ray, sum(last - first + 1 for _, first, last in tasks)):
        _embed_to_shards(tasks, settings, extractor, writer, on_embedded, stages, log)
        return
    chunks_left: dict[int, int] = {}
    for doc, _, _ in tasks:
        chunks_left[id(doc)] = chunks_left.get(id(doc), 0) + 1
    with connected(settings.ray) as ray:
        ds = _embedded_pages(ray, tasks, settings, extractor, log)
        seen: set[tuple[int, int]] = set()  # (task, page_no): a re-run task's rows are taken once
        rows_of: dict[int, int] = {}
        errors: dict[int, str] = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            stages["render"] += float(np.sum(batch["seconds"]))
            stages["model"] += float(np.sum(batch["model_seconds"]))
            for j in range(len(batch["task"])):
                i, page_no = int(batch["task"][j]), int(batch["page_no"][j])
                if (i, page_no) in seen:
                    continue
                seen.add((i, page_no))
                doc = tasks[i][0]
                if batch["error"][j]:
                    errors[i] = str(batch["error"][j])
                if page_no > 0 and not doc.failed:
                    doc.pages.append(page(page_no, int(batch["width_px"][j]), int(batch["height_px"][j]),
                                                 bytes(batch["thumbnail"][j]), np.asarray(batch["vector"][j], np.float32)))
                    doc.read += 1
                    doc.embedded += 1
                    on_embedded(1)
                rows_of[i] = rows_of.get(i, 0) + 1
                if rows_of[i] < int(batch["n_rows"][j]):
                    continue
                _chunk_done(doc, i, errors.get(i), chunks_left, writer, on_embedded)


def _embedded_pages(ray, tasks: list, settings: PipelineSettings, extractor, log: Log):
    """The Ray Data pipeline of the chunks: render tasks, then the embedding actor pool (its rows:
    the page fields, ``vector`` float32 (D,), no pixels)."""
    channels = 1 if settings.render.color == "gray" else 3
    actors, cpus, gpus, render_cpus = embed_actor_plan(settings.ray, ray.cluster_resources())
    items = _task_groups(tasks, settings.render.pdf_chunk_pages)
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 10_000)))
    ds = ds.flat_map(_render_rows, fn_kwargs={"render": settings.render, "input_size": tuple(extractor.input_size),
                                              "channels": channels}, num_cpus=render_cpus)
    ds = ds.map_batches(_embed_class(settings), batch_size=extractor.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus)
    log(f"Ray: {len(items)} render tasks, {actors} embedding actor(s) ({'1 GPU' if gpus else f'{cpus:g} CPU'} each)")
    return ds


def use_shards(ray_settings, pages: int) -> bool:
    """Whether an ingest of ``pages`` new pages on Ray writes Parquet shards (``[ray] shards``:
    ``always``, ``never``, or ``auto`` = more than ``shards_above`` pages)."""
    if ray_settings.shards == "auto":
        return pages > ray_settings.shards_above
    return ray_settings.shards == "always"


def _write_shard_batch(batch: dict, directory: str) -> dict:
    """Ray Data ``map_batches`` task after the embedding actors: write the batch's pages (every row
    of a failed chunk too, with its error) as one Parquet shard under ``directory``; return one row
    (``shard`` name, ``pages`` embedded, ``seconds`` and ``model_seconds`` summed) for the driver."""
    from docsort.store.shards import write_shard

    name = write_shard(directory, batch)
    return {"shard": np.array([name]), "pages": np.array([int(np.sum(np.asarray(batch["page_no"]) > 0))]),
            "seconds": np.array([float(np.sum(batch["seconds"]))]), "model_seconds": np.array([float(np.sum(batch["model_seconds"]))])}


def _embed_to_shards(tasks: list, settings: PipelineSettings, extractor, writer, on_embedded, stages: dict[str, float], log: Log) -> None:
    """:func:`embed_on_ray` with Parquet shards: the workers write the shards, the collection takes
    each in with one transaction as its name comes back, and the documents not stored at the end
    (an error in a chunk, pages missing) are recorded as failed. (Shards an interrupted earlier run
    left were taken in before the files were listed, :func:`docsort.store.shards.take_leftovers`,
    so their documents are not among ``tasks``.)"""
    from docsort.store.shards import ShardIntake

    intake = ShardIntake(writer.collection)
    by_sha = {doc.sha256: doc for doc, _, _ in tasks}

    def stored(sha: str, n: int) -> None:
        doc = by_sha.get(sha)
        if doc is not None and not doc.stored:
            writer.stored(doc, added=True)

    with connected(settings.ray) as ray:
        ds = _embedded_pages(ray, tasks, settings, extractor, log)
        ds = ds.map_batches(_write_shard_batch, fn_kwargs={"directory": str(intake.directory)},
                            batch_size=settings.ray.shard_pages, batch_format="numpy", num_cpus=min(0.25, settings.ray.render_cpus))
        log(f"Ray: pages written as Parquet shards of {settings.ray.shard_pages} pages under {intake.directory}")
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            stages["render"] += float(np.sum(batch["seconds"]))
            stages["model"] += float(np.sum(batch["model_seconds"]))
            for name, pages in zip(batch["shard"], batch["pages"]):
                on_embedded(int(pages))
                t = time.perf_counter()
                intake.take(str(name), stored)
                stages["database"] += time.perf_counter() - t
    failed = intake.finish()
    intake.discard_partial()  # this run's tasks are done: a temporary file left is a dead writer's
    for doc, _, _ in tasks:
        if not doc.stored and not doc.failed:
            if writer.collection.find_document(doc.sha256) is not None:
                writer.stored(doc, added=False)
                continue
            path, reason = failed.get(doc.sha256, (str(doc.src.path), f"expected {doc.n_pages} pages, read 0"))
            writer.fail(doc, PageError(reason if reason.startswith(f"{doc.src.path}: ") else f"{doc.src.path}: {reason}", doc.src.path))


def _chunk_done(doc, i: int, error: str | None, chunks_left: dict[int, int], writer, on_embedded) -> None:
    """One chunk of ``doc`` is whole: fail the document on its error, commit it when it was the last."""
    if doc.failed:
        return
    if error:
        on_embedded(doc.n_pages - doc.embedded)
        writer.fail(doc, PageError(error, doc.src.path))
        return
    chunks_left[id(doc)] -= 1
    if chunks_left[id(doc)] > 0:
        return
    if doc.read != doc.n_pages:
        on_embedded(doc.n_pages - doc.embedded)
        writer.fail(doc, PageError(f"{doc.src.path}: expected {doc.n_pages} pages, read {doc.read}", doc.src.path))
        return
    doc.pages.sort(key=lambda p: p.page_no)
    writer.commit([doc])


def ocr_on_ray(tasks: Iterable, source: Callable, ocr: OcrSettings, engine: str, ray_settings, log: Log):
    """Yield ``(task, path, rows, missing)`` for the OCR back-fill's tasks, OCR'd as Ray tasks.

    The same contract as :func:`docsort.jobs.ocr._ocr_stream`: each task (pages of one document)
    runs :func:`docsort.core.ocr.ocr_pages` (Tesseract single-threaded) as one Ray task of
    ``ray.render_cpus`` CPUs, at most ``2 x CPUs`` in flight, yielded as they finish so each is
    stored at once; a document whose file is missing yields its error rows without a task. Ray
    retries a task whose node is lost (``max_retries=3``); a task that fails otherwise yields
    error rows, as in one process.
    """
    from docsort.core.ocr import _error_row, ocr_pages

    def failed(task, error: str) -> list[dict]:
        return [_error_row(pid, no, ocr.lang, engine, error, 0.0) for pid, no in task.pages]

    with connected(ray_settings) as ray:
        remote = ray.remote(num_cpus=ray_settings.render_cpus, max_retries=3)(_ocr_task)
        window = max(2, int(2 * ray.cluster_resources().get("CPU", 1) / ray_settings.render_cpus))
        inflight: dict = {}
        todo = list(tasks)
        pos = 0
        while pos < len(todo) or inflight:
            while pos < len(todo) and len(inflight) < window:
                task = todo[pos]
                pos += 1
                src, first_path, paths = source(task)
                if src is None:
                    yield task, first_path, failed(task, f"source file not found or changed: {', '.join(paths)}"), True
                    continue
                inflight[remote.remote(src, task.pages, ocr, engine)] = (task, str(src.path))
            if not inflight:
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                task, path = inflight.pop(ref)
                try:
                    rows = ray.get(ref)
                except Exception as exc:  # a task error or a task lost more than max_retries times
                    rows = failed(task, f"{path}: OCR failed: {type(exc).__name__}")
                yield task, path, rows, False


def _ocr_task(src: SourceFile, pages: list[tuple[int, int]], ocr: OcrSettings, engine: str) -> list[dict]:
    """A Ray task: :func:`docsort.core.ocr.ocr_pages` with Tesseract single-threaded (``OMP_THREAD_LIMIT=1``)."""
    import os

    from docsort.core.ocr import ocr_pages

    os.environ["OMP_THREAD_LIMIT"] = "1"
    return ocr_pages(src, pages, ocr, engine)
