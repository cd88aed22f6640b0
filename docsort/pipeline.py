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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from . import classify
from .clustering import ClusterResult, cluster_vectors, document_clusters, match_cluster_ids, predict_clusters
from .features import FeatureExtractor
from .index import search_index, sync_index
from .invariance import InvarianceProjection, fit_projection, stored_projection
from .ocr import OcrReport, backfill as ocr_backfill, require_tesseract
from .pages import (
    NotADocumentError,
    PageError,
    SourceFile,
    count_pages,
    discover_files,
    exit_with_parent,
    iter_ocr_pages,
    iter_pages,
    render_for_network,
    require_poppler,
    sha256_file,
    to_network_input,
    without_main_module,
)
from .runtime import REPRODUCIBILITY, machine
from .settings import PipelineSettings
from .storage import Collection, CollectionError, atomic_write_bytes
from .styles import page_rng, render_styles
from .text import FEATURE_MODES, TextModel, cluster_keywords, fit_text_model, fuse, keyword_name, usable_text

__all__ = [
    "IngestReport",
    "PageHit",
    "DocumentHit",
    "SearchResult",
    "score_note",
    "prepare_invariance",
    "style_views",
    "ClusterRow",
    "effective_settings",
    "make_extractor",
    "ingest",
    "cluster",
    "cluster_table",
    "assign_provisional",
    "search_file",
    "search_page",
    "search_text",
    "TextHit",
    "resolve_search_mode",
    "mode_index",
    "PageVectors",
    "page_vectors",
    "fit_text",
    "load_text_model",
    "info",
    "export_pages",
    "EXPORT_VECTORS",
    "export_vectors",
    "library_versions",
    "active_projection",
    "fit_invariance",
    "InvarianceReport",
    "visual_index_path",
    "check_engine_parity",
    "recorded_engine",
    "ENGINE_PROBE_MIN_COSINE",
]

#: Fields of the features description that must match for vectors to be comparable.
_PINNED_FEATURE_KEYS = ("backbone", "layer", "pooling", "dim", "input_size", "channels_in", "preprocessing")

#: Feature settings free to differ between ingests: weights are compared by sha256 instead,
#: batch size does not change what a vector means, and another engine or precision is let in
#: only when its vectors pass the probe check (:func:`check_engine_parity`).
_FEATURE_KEYS_NOT_IN_VECTORS = {"weights", "weights_sha256", "batch_size", "precision", "engine", "threads"}

#: Smallest cosine, over the 8 :func:`docsort.features.probe_pages`, between the vectors of the
#: engine and precision a collection was built with and those of another one, for the collection
#: to take the other one's vectors. Measured here (benchmarks/RESULTS.md, "Inference engines
#: (issue 16)"): OpenVINO bfloat16 vs TensorFlow float32 gives probe cosines >= 0.99999 and real
#: pages' cosines >= 0.99996 (sample_docs and the development corpus), kNN@5 moving by <= 0.0008.
#: Vectors turned by random directions to cosine c with the originals moved kNN@5 (worst of 10
#: seeds, sample_docs / development corpus) by 0.024 / 0.009 at c = 0.999, 0.010 / 0.007 at
#: 0.9998 and 0.005 / 0.003 at 0.9999: so 0.9999, the loosest tested that keeps kNN@5 within the
#: project's 0.005, 10x bfloat16's 1 - cos on the probe.
ENGINE_PROBE_MIN_COSINE = 0.9999
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
        if weights is not None and weights not in ("auto", "imagenet", "bundled", "random"):
            from .adaptation import check_adapted_weights

            check_adapted_weights(weights)  # another collection's adapted weights: its recorded sha256
        return requested.with_overrides(weights=weights)
    pinned = PipelineSettings(**manifest["pipeline"])
    recorded = manifest["features"]["weights"]
    pinned_weights = recorded["source"] if recorded["source"] in ("imagenet", "bundled", "random") else recorded["spec"]
    if (manifest.get("adaptation") or {}).get("state") == "done" and recorded.get("sha256") == manifest["adaptation"].get("sha256"):
        pinned_weights = str(collection.adapted_weights_path)  # adapted by docsort adapt: the file inside the collection
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
        # Engine and precision follow the request; the probe check decides whether they may.
        features = pinned.features.model_copy(update={"engine": requested.features.engine,
                                                      "precision": requested.features.precision,
                                                      "threads": requested.features.threads})
        pinned = pinned.model_copy(update={"features": features, "index": requested.index, "umap": requested.umap, "hdbscan": requested.hdbscan,
                                           "classifier": requested.classifier, "ocr": requested.ocr, "text": requested.text,
                                           "invariance": requested.invariance, "name": requested.name})
    if weights is not None:
        pinned = pinned.with_overrides(weights=weights)
    return pinned


def recorded_engine(features: dict) -> dict:
    """The engine a collection's vectors were made with, from its manifest's ``features``.

    Collections made before engines were recorded (no ``engine`` key) were made by the Keras model
    on TensorFlow, in float32 unless their ``dtype_policy`` is ``mixed_bfloat16``; for them
    ``recorded`` is False and there is no stored probe.
    """
    eng = features.get("engine")
    if eng:
        return {**eng, "recorded": True}
    precision = "bfloat16" if features.get("dtype_policy") == "mixed_bfloat16" else "float32"
    return {"name": "tensorflow", "version": None, "precision": precision, "recorded": False}


def _probe_record(vectors: np.ndarray) -> dict:
    import base64

    from .features import PROBE_SEED

    v = np.ascontiguousarray(vectors, dtype="<f4")
    return {"seed": PROBE_SEED, "shape": list(v.shape), "dtype": "float32", "base64": base64.b64encode(v.tobytes()).decode()}


def _probe_vectors_of(record: dict) -> np.ndarray | None:
    import base64

    from .features import PROBE_SEED

    try:
        if record.get("seed") != PROBE_SEED:
            return None
        return np.frombuffer(base64.b64decode(record["base64"]), "<f4").reshape(record["shape"]).astype(np.float32)
    except (KeyError, TypeError, ValueError):
        return None


def _same_engine(a: dict, b: dict) -> bool:
    keys = ("name", "precision") if not (a.get("version") and b.get("version")) else ("name", "precision", "version")
    return all(a.get(k) == b.get(k) for k in keys)


def check_engine_parity(collection: Collection, extractor: FeatureExtractor, *, store: bool = False) -> dict | None:
    """Let ``extractor`` add or query vectors of ``collection`` only if its engine matches.

    Same engine, precision and version as recorded: nothing to check (``None``). Otherwise the 8
    :func:`docsort.features.probe_pages` are embedded by ``extractor`` and compared with the
    reference: the probe vectors stored at the collection's creation, or, for a collection made
    before engines were recorded (TensorFlow float32), the Keras model run eagerly in float32.
    A passed check is remembered in the manifest's ``engine_checks`` (with ``store``), so the next
    run with that engine does not repeat it.

    Returns:
        The check (engine, version, precision, CPU flags, reference, probe cosine min/mean,
        threshold, passed), or ``None`` when none was needed.

    Raises:
        CollectionError: the probe's smallest cosine is below :data:`ENGINE_PROBE_MIN_COSINE`,
            or there is no reference to check against.
    """
    import datetime as dt

    manifest = collection.manifest()
    if manifest is None:
        return None
    old, new = recorded_engine(manifest["features"]), extractor.description.get("engine", {})
    if _same_engine(old, new):
        return None
    ident = {k: new.get(k) for k in ("name", "version", "precision", "cpu_flags")}
    for check in manifest.get("engine_checks", []):
        if check.get("passed") and all(check.get(k) == v for k, v in ident.items()):
            return check
    ref = _probe_vectors_of(old.get("probe") or {})
    source = "stored probe"
    if ref is None:
        if old["recorded"] or old["precision"] != "float32" or extractor.description.get("dtype_policy") != "float32":
            raise CollectionError(
                f"{collection.root} was built with {old['name']} {old['precision']} and holds no probe to compare "
                f"{new.get('name')} {new.get('precision')} vectors with; refusing to mix them. "
                f"Use [features] engine = {old['name']!r}, precision = {old['precision']!r}, or a new --collection."
            )
        ref, source = extractor.reference_probe_vectors(), "keras float32 (collection made before engines were recorded)"
    got = extractor.probe_vectors()
    if ref.shape != got.shape:
        raise CollectionError(f"{collection.root}: stored probe has shape {ref.shape}, this extractor gives {got.shape}")
    cos = (ref * got).sum(axis=1)
    check = {
        **ident,
        "reference": source,
        "reference_engine": f"{old['name']} {old.get('version') or ''} {old['precision']}".replace("  ", " "),
        "probe_min_cosine": round(float(cos.min()), 7),
        "probe_mean_cosine": round(float(cos.mean()), 7),
        "threshold": ENGINE_PROBE_MIN_COSINE,
        "passed": bool(cos.min() >= ENGINE_PROBE_MIN_COSINE),
        "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if not check["passed"]:
        raise CollectionError(
            f"{collection.root} was built with {check['reference_engine']}; {new.get('name')} {new.get('precision')} "
            f"vectors of the probe pages differ from its own (smallest cosine {cos.min():.6f} < {ENGINE_PROBE_MIN_COSINE}); "
            f"refusing to mix them. Use [features] engine = {old['name']!r}, precision = {old['precision']!r}, "
            f"or a new --collection."
        )
    if store:
        manifest = collection.manifest() or manifest
        manifest["engine_checks"] = [*manifest.get("engine_checks", []), check]
        collection.write_manifest(manifest)
    return check


def _check_extractor(collection: Collection, extractor: FeatureExtractor, *, store: bool = False) -> None:
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
    check_engine_parity(collection, extractor, store=store)


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


def _features_record(extractor: FeatureExtractor) -> dict:
    """The manifest's ``features``: the extractor's description, its engine with the probe vectors."""
    desc = dict(extractor.description)
    if "engine" in desc and desc.get("backbone") == "keras.applications.InceptionV3":
        desc["engine"] = {**desc["engine"], "probe": _probe_record(extractor.probe_vectors())}
    return desc


def _new_manifest(settings: PipelineSettings, extractor: FeatureExtractor) -> dict:
    import datetime as dt

    return {
        "collection_format": 1,
        "docsort_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pipeline": settings.model_dump(mode="json"),
        "features": _features_record(extractor),
        "render": settings.render.model_dump(mode="json"),
        "seeds": {"weights_init": settings.features.seed, "umap_random_state": settings.umap.random_state},
        "libraries": library_versions(),
        "machine": machine(),
        "reproducibility": REPRODUCIBILITY,
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
        _check_extractor(collection, extractor, store=True)
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
            for doc, pages, error, seconds, last_chunk in _render_stream(tasks, settings.render, extractor.input_size, workers, log,
                                                                         ahead_pages=2 * extractor.batch_size):
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
            report.index = f"{info_.kind}, {info_.ntotal} vectors ({info_.action})"
            projection = active_projection(collection, settings)
            if projection is not None:
                # The projected index, which searches read; index.faiss (raw vectors) is kept too,
                # for the collection with the projection turned off.
                _, pinfo = sync_index(collection, settings.index, projection=projection)
                report.index += f"; scan-style invariant {projection.dims}-d: {pinfo.kind}, {pinfo.ntotal} vectors ({pinfo.action})"
            stages["index"] += time.perf_counter() - t
        classify.after_ingest(collection, settings, log=log)  # document types for new pages; no-op without a classifier
        report.provisional_pages = assign_provisional(collection, log=log)  # issue 5: clusters for new pages, no re-fit
        if run_ocr:
            ocr_pages = np.setdiff1d(collection.page_ids(), known_pages).tolist() + [
                pid for pid, doc, _ in collection.pages_needing_text(settings.ocr.lang) if doc in stored_docs]
    if run_ocr:  # after the write lock: OCR is slow and must not block other writers
        report.ocr = ocr_backfill(collection, settings, page_ids=ocr_pages, progress=progress, log=log, lock_timeout_s=lock_timeout_s)
    report.seconds = time.perf_counter() - t0
    return report


#: Hide the caller's ``__main__`` while spawn-ed workers start (see :func:`docsort.pages.without_main_module`).
_without_main_module = without_main_module


def _render_stream(tasks, render, input_size, workers: int, log: Log = _stderr, ahead_pages: int = 0):
    """Yield ``(doc, pages, error, seconds, last_chunk)`` for each task, in task order.

    With ``workers > 1`` the chunks are rendered by a pool of ``spawn``-ed worker processes
    (no TensorFlow in them), with at least ``2 * workers`` chunks and, beyond that, up to
    ``ahead_pages`` pages in flight (the ingest asks for two batches), so the workers keep
    rendering the next batch while this process runs the forward pass on the current one, and
    memory stays flat whatever the corpus size. A worker
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
    inflight_pages = 0

    def n_pages(i):
        return tasks[i][2] - tasks[i][1] + 1

    def submit(i):
        nonlocal inflight_pages
        doc, first, last = tasks[i]
        inflight_pages += n_pages(i)
        if in_process:
            pending.append((i, None))
            return
        with _without_main_module():  # worker processes start inside submit()
            pending.append((i, pool.submit(render_for_network, doc.src, render, input_size, first, last)))

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
            try:
                result = render_for_network(doc.src, render, input_size, first, last) if fut is None else fut.result()
                pool_done += fut is not None
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                inflight = [j for j, _ in pending]
                pending.clear()
                inflight_pages = 0
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
            fill()
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
# text features and fusion (issue 6)
# ---------------------------------------------------------------------------------------------


def _usable_texts(collection: Collection, settings: PipelineSettings, page_ids=None) -> dict[int, str]:
    """``{page_id: OCR text}`` of the pages whose text is usable (:func:`docsort.text.usable_text`)."""
    return {pid: r["text"] for pid, r in collection.page_texts(page_ids).items()
            if usable_text(r["text"], r["n_words"], r["error"], settings.text, r["confidence"])}


def fit_text(
    collection: Collection, settings: PipelineSettings, *, persist: bool = True, log: Log = _stderr,
    texts: dict[int, str] | None = None, visual: np.ndarray | None = None,
) -> TextModel | None:
    """Fit the collection's text model on all usable OCR text and (with ``persist``) store it.

    ``persist`` needs the collection's write lock (:func:`cluster` holds it): the model is written
    atomically to ``text_model.joblib`` and described under ``"text"`` in the manifest (method,
    settings, pages it was fitted on, vocabulary size, explained variance, token, versions).

    ``texts`` (the usable texts, :func:`_usable_texts`) and ``visual`` (float32 (n, D), every
    stored vector) may be given by a caller that has already read them (:func:`cluster`).

    Returns:
        The model, or ``None`` when the collection has too little text (fewer than 3 pages with
        at least ``text.min_words`` OCR words); then fusion uses the visual vectors alone.

    Raises:
        TextModelError: a pretrained method (``minilm``, ``hub:``) cannot be loaded.
    """
    import io

    import joblib

    texts = _usable_texts(collection, settings) if texts is None else texts
    model = fit_text_model([texts[k] for k in sorted(texts)], settings.text)
    if model is None:
        if texts:
            log(f"only {len(texts)} pages have usable OCR text: text features need at least 3; using visual features")
        return None
    if visual is None:
        _, visual = _visual_vectors(collection, settings)
    model.set_visual_mean(visual.mean(axis=0))
    if persist:
        buf = io.BytesIO()
        joblib.dump(model, buf)
        atomic_write_bytes(collection.root / Collection.TEXT_MODEL, buf.getvalue())
        manifest = collection.manifest() or {}
        manifest["text"] = {**model.info, "settings": settings.text.model_dump(mode="json"), "dim": model.dim,
                            "pages_fitted": model.n_fitted, "token": model.token}
        collection.write_manifest(manifest)
    return model


def load_text_model(collection: Collection) -> TextModel | None:
    """The stored text model (``text_model.joblib``), or ``None`` when there is none or it cannot be
    read (then :func:`page_vectors` fits one in memory)."""
    import joblib

    path = collection.root / Collection.TEXT_MODEL
    if not path.is_file():
        return None
    try:
        model = joblib.load(path)
    except Exception:  # truncated, or pickled by an incompatible scikit-learn
        return None
    return model if isinstance(model, TextModel) else None


@dataclass
class PageVectors:
    """Page vectors of one kind (visual, text or fused) for search and clustering.

    Attributes:
        ids: int64 (n,) page ids, ascending unless ``page_ids`` were given.
        vectors: float32 (n, D), L2-normalised rows (an all-zero row for a page without usable
            text in ``text`` mode).
        has_text: bool (n,) whether the page has usable OCR text.
        mode: what the vectors are: ``visual``, ``text`` or ``fused`` (``fused`` falls back to
            ``visual`` when there is no text model).
        text_model: the text model used, or ``None``.
        fusion_weight: the text weight w of ``fused`` vectors (0 for visual, 1 for text).
    """

    ids: np.ndarray
    vectors: np.ndarray
    has_text: np.ndarray
    mode: str
    text_model: TextModel | None = None
    fusion_weight: float = 0.0


def page_vectors(
    collection: Collection, settings: PipelineSettings, mode: str = "fused", page_ids=None, *, text_model: TextModel | None = None
) -> PageVectors:
    """Visual, text or fused vectors of stored pages.

    Args:
        mode: ``"visual"`` (the stored backbone vectors), ``"text"`` (the text model's vectors of
            the OCR text) or ``"fused"`` (:func:`docsort.text.fuse` with ``text.fusion_weight``).
        page_ids: which pages (default all, ascending id).
        text_model: the model to use; default the stored one, else one fitted in memory.

    Returns:
        :class:`PageVectors`; ``fused`` without any usable text, or with weight 0, gives the
        visual vectors (``mode == "visual"``).

    Raises:
        ValueError: an unknown mode. CollectionError: ``text`` mode and no page has usable text.
    """
    if mode not in FEATURE_MODES:
        raise ValueError(f"unknown feature mode {mode!r}; use one of {', '.join(FEATURE_MODES)}")
    ids, visual = _visual_vectors(collection, settings, page_ids)
    texts = _usable_texts(collection, settings, None if page_ids is None else ids)
    if mode != "visual" and not (mode == "fused" and settings.text.fusion_weight == 0.0):
        text_model = text_model or load_text_model(collection) or _text_model_in_memory(collection, settings)
        if text_model is None and mode == "text":
            raise CollectionError(f"{collection.root}: no page has usable OCR text (run `docsort ocr`)")
    return _vectors_of(ids, visual, texts, settings, mode, text_model)


def _vectors_of(ids: np.ndarray, visual: np.ndarray, texts: dict[int, str], settings: PipelineSettings, mode: str,
                model: TextModel | None) -> PageVectors:
    """:func:`page_vectors` once the vectors, usable texts and model are at hand; ``fused`` with
    no model or weight 0 gives the visual vectors."""
    has_text = np.array([int(i) in texts for i in ids], dtype=bool)
    weight = settings.text.fusion_weight
    if mode == "visual" or model is None or (mode == "fused" and weight == 0.0):
        return PageVectors(ids, visual, has_text, "visual")
    text_vecs = np.zeros((len(ids), model.dim), np.float32)
    if has_text.any():
        text_vecs[has_text] = model.transform([texts[int(i)] for i in ids[has_text]])
    if mode == "text":
        return PageVectors(ids, text_vecs, has_text, "text", model, 1.0)
    mean = model.visual_mean
    if mean is not None and np.shape(mean)[0] != visual.shape[1]:
        mean = None  # a model fitted with(out) the invariance projection: vectors of other dims
    return PageVectors(ids, fuse(visual, text_vecs, weight, mean), has_text, "fused", model, weight)


_IN_MEMORY_MODELS: dict[tuple, TextModel | None] = {}


def _text_model_in_memory(collection: Collection, settings: PipelineSettings) -> TextModel | None:
    """A text model fitted in memory for a collection that has OCR text but no stored model yet
    (never clustered since OCR), kept for this process while the collection's text and the text
    settings stay the same, so repeated searches (the app) do not refit it each time."""
    state = collection.query("SELECT COUNT(*), TOTAL(LENGTH(text)), TOTAL(n_words), MAX(at), TOTAL(confidence) FROM page_text")[0]
    n_pages = collection.query("SELECT COUNT(*), MAX(id) FROM pages")[0]  # the visual mean is part of the model
    projection = active_projection(collection, settings)  # the visual mean is of the projected vectors
    key = (str(collection.root.resolve()), *state, *n_pages, settings.text.model_dump_json(), projection.sha256 if projection else None)
    if key not in _IN_MEMORY_MODELS:
        if len(_IN_MEMORY_MODELS) >= 4:
            _IN_MEMORY_MODELS.pop(next(iter(_IN_MEMORY_MODELS)))
        _IN_MEMORY_MODELS[key] = fit_text(collection, settings, persist=False, log=lambda m: None)
    return _IN_MEMORY_MODELS[key]


def _name_clusters_by_keywords(collection: Collection, settings: PipelineSettings, ids: np.ndarray, labels: np.ndarray,
                               texts: dict[int, str]) -> dict[int, str]:
    """Default names from the clusters' OCR text (``texts``: the usable ones, c-TF-IDF); user-given
    names are kept."""
    if not texts:
        return {}
    words = cluster_keywords([texts.get(int(i), "") for i in ids], labels, top_n=settings.text.keywords)
    names = {cid: keyword_name(w) for cid, w in words.items()}
    collection.set_default_cluster_names(names)
    return names


# ---------------------------------------------------------------------------------------------
# scan-style invariance (issue 13)
# ---------------------------------------------------------------------------------------------


def active_projection(collection: Collection, settings: PipelineSettings) -> InvarianceProjection | None:
    """The invariance projection every visual vector goes through, or ``None`` for the raw stored
    vectors: ``None`` when ``settings.invariance.enabled`` is false, or when the collection has no
    active projection (never clustered, fewer than ``min_pages`` pages, turned off at the last
    :func:`cluster`, or its file is missing or fails its sha256)."""
    if not settings.invariance.enabled:
        return None
    return stored_projection(collection)


def _visual_vectors(collection: Collection, settings: PipelineSettings, page_ids=None,
                    projection: InvarianceProjection | None | bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` of stored pages as index, search and clustering use them: the stored
    vectors, projected by :func:`active_projection` (``projection=True``), by the projection
    given, or raw (``None``). float32 (n, D or dims)."""
    ids, vecs = collection.vectors(page_ids)
    proj = active_projection(collection, settings) if projection is True else projection
    if proj is not None and len(ids):
        vecs = proj.transform(vecs)
    return ids, vecs


def visual_index_path(collection: Collection, settings: PipelineSettings) -> Path:
    """The FAISS file that searches by look read: ``index.faiss``, or the projected index of the
    active projection (:meth:`Collection.index_path`)."""
    projection = active_projection(collection, settings)
    return collection.index_path(projection.sha256 if projection else None)


@dataclass
class InvarianceReport:
    """What :func:`fit_invariance` did.

    Attributes:
        action: ``fitted`` | ``kept`` (the stored projection is current) | ``disabled`` |
            ``too_few_pages`` (the raw vectors are used).
        reason: why it (re)fitted or not, in words.
        pages_fitted: pages whose renderings the fit used; pages_skipped: sampled pages whose file
            has moved or changed (not re-readable) or that failed to render.
        seconds: wall time, seconds.
        projection: the active projection after the call, or ``None``.
    """

    action: str
    reason: str = ""
    pages_fitted: int = 0
    pages_skipped: int = 0
    seconds: float = 0.0
    projection: InvarianceProjection | None = None


def _invariance_key(settings: PipelineSettings, collection: Collection) -> dict:
    """What a projection depends on besides the pages: the invariance settings and how the
    collection's vectors are made (weights sha256 and the pinned feature settings)."""
    feats = (collection.manifest() or {}).get("features", {})
    inv = settings.invariance.model_dump(mode="json", exclude={"enabled", "refit_growth", "min_pages"})
    return {"invariance": inv, "weights_sha256": feats.get("weights", {}).get("sha256"),
            "features": {k: feats.get(k) for k in _PINNED_FEATURE_KEYS}, "render": settings.render.model_dump(
                mode="json", exclude=set(_RENDER_KEYS_NOT_IN_VECTORS))}


def _needs_fit(collection: Collection, settings: PipelineSettings, n_pages: int) -> str | None:
    """Why the projection must be (re)fitted now, or ``None`` when the stored one is current."""
    entry = (collection.manifest() or {}).get("invariance")
    if not entry:
        return "no projection fitted yet"
    path = collection.root / Collection.INVARIANCE
    import hashlib

    try:
        if hashlib.sha256(path.read_bytes()).hexdigest() != entry.get("sha256"):
            return f"{path.name} does not match its sha256 in the manifest"
    except OSError:
        return f"{path.name} is missing"
    if entry.get("fit_key") != _invariance_key(settings, collection):
        return "the invariance or feature settings changed"
    at_fit = int(entry.get("pages_at_fit", 0))
    if n_pages >= at_fit * (1.0 + settings.invariance.refit_growth):
        return f"the collection grew from {at_fit} to {n_pages} pages (refit at +{settings.invariance.refit_growth:.0%})"
    return None


def prepare_invariance(collection: Collection, settings: PipelineSettings, *, lock_timeout_s: float = 600.0, progress: bool = True,
                       log: Log = _stderr) -> InvarianceReport:
    """:func:`fit_invariance` under the collection's write lock: the CLI runs it before
    :func:`cluster` so its progress bar is not under a spinner (``cluster`` then keeps it)."""
    with collection.write_lock(lock_timeout_s, on_wait=log):
        return fit_invariance(collection, settings, progress=progress, log=log)


def reread_pages(collection: Collection, render, page_ids, *, log: Log, what: str, tell_moved: bool = True):
    """Stored pages re-read from their files, as the OCR back-fill reads them: each document from the
    first recorded path whose bytes still have the stored sha256 (:func:`docsort.ocr._find_source`),
    rendered with ``render`` (:func:`docsort.pages.iter_pages`, only the wanted page range).

    Args:
        page_ids: the stored pages wanted (any order).
        render: :class:`~docsort.settings.RenderSettings`.
        log: where per-file notices go, prefixed with ``what``; a document whose file moved or
            changed is said only when ``tell_moved``; a file that fails to render always is.

    Yields:
        ``(page_id, image)`` by document (ascending id), pages in order: a PIL image for each page
        read, ``None`` for each that could not be (file moved or changed, unreadable, or missing
        pages of a document that failed part-way; those come after the document's good pages).
    """
    from .ocr import _find_source  # the same re-read rule as the OCR back-fill

    by_doc: dict[int, dict[int, int]] = defaultdict(dict)  # document -> {page_no: page_id}
    for rec in collection.pages(np.asarray(page_ids, np.int64)):
        by_doc[rec.document_id][rec.page_no] = rec.page_id
    for doc_id in sorted(by_doc):
        wanted = by_doc[doc_id]
        src, first_path, _ = _find_source(collection, doc_id)
        if src is None:
            if tell_moved:
                log(f"{what}: {first_path}: file moved or changed; its {len(wanted)} page(s) skipped")
            for pid in wanted.values():
                yield pid, None
            continue
        got = set()
        try:
            for page in iter_pages(src, render, min(wanted), max(wanted)):
                pid = wanted.get(page.page_no)
                if pid is not None:
                    got.add(pid)
                    yield pid, page.image
        except PageError as exc:
            log(f"{what}: skipping pages of {first_path}: {exc}")
        for pid in wanted.values():
            if pid not in got:
                yield pid, None


def style_views(
    collection: Collection, settings: PipelineSettings, page_ids, *, extractor: FeatureExtractor, progress: bool = False,
    log: Log = _stderr,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Each stored page's vectors in every style of ``settings.invariance.styles``.

    Pages are re-read from their files (the first recorded path whose bytes still have the
    stored sha256, :func:`docsort.ocr._find_source`), rendered with ``settings.render``, restyled
    with :func:`docsort.styles.render_styles` (generator :func:`docsort.styles.page_rng`
    ``(invariance.seed, page_id)``), resized to the network input and embedded; ``as_is`` takes the
    stored vector. Batches stay full across documents (the extractor pads a short batch), so a
    page's vectors do not depend on the other pages.

    Args:
        page_ids: the stored pages to render.
        extractor: the collection's extractor (checked against the manifest).

    Returns:
        ``(ids, views, skipped)``: int64 (m,) the pages rendered, ascending; float32
        (m, n_styles, D); and how many of ``page_ids`` were skipped (file moved, changed or
        unreadable; said in ``log``).

    Raises:
        CollectionError: the extractor makes vectors other than the collection's.
    """
    from tqdm import tqdm

    inv = settings.invariance
    sample = np.asarray(page_ids, np.int64)
    _check_extractor(collection, extractor)
    stored_ids, stored = collection.vectors(sample)
    stored_of = {int(i): v for i, v in zip(stored_ids, stored)}
    styles = tuple(inv.styles)
    embed_styles = [i for i, s in enumerate(styles) if s != "as_is"]
    views: dict[int, np.ndarray] = {}
    skipped = 0
    failed: set[int] = set()  # pages of a document that failed part-way: left out of the fit
    batch: list[np.ndarray] = []
    owners: list[tuple[int, int]] = []

    def flush() -> None:
        if batch:
            for (pid, slot), vec in zip(owners, extractor.embed(np.stack(batch))):
                views[pid][slot] = vec
            batch.clear()
            owners.clear()

    bar = tqdm(total=len(sample), desc="fitting scan-style invariance", unit="page", disable=not progress, file=sys.stderr)
    try:
        for pid, image in reread_pages(collection, settings.render, sample, log=log, what="invariance fit", tell_moved=False):
            bar.update(1)
            if image is None:
                failed.add(pid)
                skipped += 1
                continue
            renders = render_styles(image, styles, page_rng(inv.seed, pid))
            views[pid] = np.zeros((len(styles), stored.shape[1]), np.float32)
            for slot, s in enumerate(styles):
                if s == "as_is":
                    views[pid][slot] = stored_of[pid]
            for slot in embed_styles:
                batch.append(to_network_input(renders[slot], extractor.input_size))
                owners.append((pid, slot))
                if len(batch) >= extractor.batch_size:
                    flush()
        flush()  # batches stay full across documents (embed pads a short batch to batch_size)
    finally:
        bar.close()
    fitted = sorted(set(views) - failed)
    ids = np.array(fitted, np.int64)
    out = np.stack([views[p] for p in fitted]) if fitted else np.zeros((0, len(styles), stored.shape[1]), np.float32)
    return ids, out, skipped


def fit_invariance(
    collection: Collection, settings: PipelineSettings, *, extractor: FeatureExtractor | None = None, force: bool = False,
    progress: bool = True, log: Log = _stderr,
) -> InvarianceReport:
    """Fit (when due) and store the collection's scan-style-invariant projection.

    The caller holds the write lock (:func:`cluster` calls this first). When due (no projection,
    settings or weights changed, or the collection has grown by ``invariance.refit_growth`` since
    the fit; or ``force``): a sample of at most ``invariance.sample_pages`` pages (all pages below
    it, else drawn with ``numpy.random.default_rng(invariance.seed)``) is re-read from the files
    (the first recorded path whose bytes still have the stored sha256, as OCR does; pages whose
    file moved or changed are skipped and counted), rendered at ``render.long_side_px``, restyled
    (:func:`docsort.styles.render_styles`, seeded per page id), resized to the network input and
    embedded with the collection's extractor; ``as_is`` takes the stored vector (the same
    pixels and extractor made it). :func:`docsort.invariance.fit_projection` then fits the
    projection, which is written atomically to ``invariance.bin`` and described under
    ``"invariance"`` in the manifest (sha256, dims, styles, pages fitted and skipped, eigenvalues,
    the settings it depends on, pages at fit, seconds), and the projected FAISS index is built.

    Same pages, files and settings on one machine give a byte-identical projection.

    Returns:
        An :class:`InvarianceReport`.

    Raises:
        WeightsError, BackboneError: the extractor cannot be built.
        CollectionError: the extractor makes vectors other than the collection's.
    """
    t0 = time.perf_counter()
    inv = settings.invariance
    manifest = collection.manifest() or {}
    entry = manifest.get("invariance")

    def set_active(active: bool) -> None:
        m = collection.manifest() or {}
        if m.get("invariance") and m["invariance"].get("active") != active:
            m["invariance"]["active"] = active
            collection.write_manifest(m)

    if not inv.enabled:
        set_active(False)
        return InvarianceReport("disabled", "invariance.enabled is false: raw vectors")
    ids = collection.page_ids()
    if len(ids) < inv.min_pages:
        set_active(False)
        return InvarianceReport("too_few_pages", f"{len(ids)} pages, fewer than invariance.min_pages = {inv.min_pages}: raw vectors")
    why = "forced" if force else _needs_fit(collection, settings, len(ids))
    if why is None:
        set_active(True)
        return InvarianceReport("kept", f"fitted at {entry.get('pages_at_fit')} pages", int(entry.get("n_pages_fitted", 0)),
                                int(entry.get("pages_skipped", 0)), time.perf_counter() - t0, stored_projection(collection))

    if len(ids) > inv.sample_pages:
        sample = np.sort(np.random.default_rng(inv.seed).choice(ids, inv.sample_pages, replace=False))
    else:
        sample = ids
    styles = tuple(inv.styles)
    extractor = extractor or make_extractor(settings, announce=False)
    fitted, stacked, skipped = style_views(collection, settings, sample, extractor=extractor, progress=progress, log=log)
    if len(fitted) < inv.min_pages:
        set_active(False)
        return InvarianceReport("too_few_pages", f"only {len(fitted)} sampled pages could be re-read from their files "
                                f"({skipped} moved or unreadable): raw vectors", len(fitted), skipped, time.perf_counter() - t0)
    if skipped:
        log(f"invariance fit: {skipped} sampled pages skipped (file moved, changed or unreadable)")
    proj = fit_projection(stacked, inv.dims, inv.shrinkage,
                          meta={"styles": list(styles), "seed": inv.seed, "sample_pages": inv.sample_pages,
                                "pages_skipped": skipped})
    seconds = time.perf_counter() - t0
    import datetime as dt

    collection.write_invariance(proj.to_bytes(), {
        **proj.describe(), "active": True, "fit_key": _invariance_key(settings, collection), "pages_at_fit": int(len(ids)),
        "reason": why, "seconds": round(seconds, 3), "fitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    _, _info = sync_index(collection, settings.index, projection=proj)
    collection.remove_other_indexes(collection.index_path(proj.sha256))
    log(f"fitted the scan-style-invariant projection ({why}): {proj.dims} dims from {len(fitted)} pages x {len(styles)} "
        f"renderings in {seconds:.1f} s")
    return InvarianceReport("fitted", why, len(fitted), skipped, seconds, proj)


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


def cluster(collection: Collection, settings: PipelineSettings, *, log: Log = _stderr, lock_timeout_s: float = 600.0,
            extractor: FeatureExtractor | None = None, progress: bool = True) -> ClusterResult:
    """Run UMAP + HDBSCAN over every stored page and store labels, 2-D map and fitted models.

    First the scan-style-invariant projection is fitted when due (:func:`fit_invariance`, which
    re-reads a sample of pages and needs the extractor: ``extractor`` reuses a built one;
    ``progress`` shows its bar); the clustered vectors are the projected ones (fused with the
    text where there is text), and ``result.params["invariance_sha256"]`` says which projection.
    When the projection changed, a trained document-type classifier is retrained on the new
    vectors and every page re-predicted (:func:`docsort.classify.after_ingest`).

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
        before = stored_projection(collection)
        inv = fit_invariance(collection, settings, extractor=extractor, progress=progress, log=log)
        projection = inv.projection if settings.invariance.enabled else None
        if (before.sha256 if before else None) != (projection.sha256 if projection else None):
            # The classifier's vectors changed: retrain it and re-predict (no-op without one).
            classify.after_ingest(collection, settings, log=log)
        # Text model refitted on all OCR text so far; fused vectors when there is text (issue 6).
        # Vectors and texts are read once for the model, the fused vectors and the names.
        ids, visual = _visual_vectors(collection, settings, projection=projection)
        texts = _usable_texts(collection, settings)
        text_model = fit_text(collection, settings, log=log, texts=texts, visual=visual) if settings.text.fusion_weight > 0 else None
        if text_model is None:
            (collection.root / Collection.TEXT_MODEL).unlink(missing_ok=True)
        pv = _vectors_of(ids, visual, texts, settings, "fused", text_model)
        vecs = pv.vectors
        result = cluster_vectors(vecs, settings.umap, settings.hdbscan)
        result.params.update(features=pv.mode, fusion_weight=pv.fusion_weight, pages_with_text=int(pv.has_text.sum()),
                             text_model_token=text_model.token if text_model else None,
                             text=settings.text.model_dump(mode="json"),
                             invariance_sha256=projection.sha256 if projection is not None else None,
                             invariance=inv.action)
        if pv.mode == "fused":
            log(f"clustering fused visual + text vectors ({int(pv.has_text.sum())} of {len(ids)} pages have OCR text, "
                f"text weight {pv.fusion_weight})")
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
        result.names = _name_clusters_by_keywords(collection, settings, ids, result.labels, texts)
        manifest = collection.manifest() or {}
        manifest["clustering"] = {**result.params, "libraries": library_versions(), "machine": machine()}
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
    params = run["settings"]
    projection = stored_projection(collection)
    if (projection.sha256 if projection else None) != params.get("invariance_sha256"):
        log(f"{len(pending)} new pages not given a cluster: the invariance projection changed since the stored clustering; "
            "run `docsort cluster`")
        return 0
    if params.get("features", "visual") == "fused":
        text_model = load_text_model(collection)
        if text_model is None or text_model.token != params.get("text_model_token"):
            log(f"{len(pending)} new pages not given a cluster: the text model of the stored clustering is missing; run `docsort cluster`")
            return 0
        settings = PipelineSettings(text=params["text"])  # the text settings the clustering ran with
        pv = page_vectors(collection, settings, "fused", pending, text_model=text_model)
        page_ids, vecs = pv.ids, pv.vectors
    else:
        page_ids, vecs = _visual_vectors(collection, PipelineSettings(), pending, projection=projection)
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
    score_note: str = ""


def score_note(collection: Collection, settings: PipelineSettings, mode: str = "visual") -> str:
    """What a search score is, in words, for ``mode`` (``visual``, ``text``, ``fused``) on this
    collection: the cosine similarity of the vectors actually searched (1 = same page)."""
    projection = active_projection(collection, settings) if mode != "text" else None
    if mode == "text":
        return "score: cosine similarity of the OCR text vectors (TF-IDF + LSA); 1 = the same words, about 0 = unrelated"
    if projection is not None:
        what = (f"of the scan-style-invariant page vectors ({projection.dims}-d, centred"
                + (", fused with the OCR text vectors" if mode == "fused" else "") + ")")
        return f"score: cosine similarity {what}; 1 = the same page, about 0 = unrelated"
    return ("score: cosine similarity of the raw page features" + (", fused with the OCR text vectors" if mode == "fused" else "")
            + "; 1 = the same page, but unrelated pages score 0.9 and more too (the features are all positive); "
            f"from {settings.invariance.min_pages} pages `docsort cluster` fits a scan-style-invariant projection "
            "whose scores fall to about 0 for unrelated pages")


def _search_vectors(collection: Collection, settings: PipelineSettings, queries: np.ndarray, k: int, query: str, index=None,
                    mode: str = "visual") -> SearchResult:
    if index is None:
        # Readers never write the index file: a writer may hold the lock (ingest in progress).
        index, _ = sync_index(collection, settings.index, persist=False, projection=active_projection(collection, settings))
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
    return SearchResult(query=query, query_pages=len(queries), pages=page_hits, documents=doc_hits,
                        score_note=score_note(collection, settings, mode))


def search_file(
    collection: Collection, path: str | Path, settings: PipelineSettings, k: int = 5, *, extractor: FeatureExtractor | None = None,
    index=None, mode: str = "visual", log: Log = _stderr,
) -> SearchResult:
    """Neighbours of every page of a file, embedded on the fly and not stored.

    Args:
        path: a PDF, TIFF, PNG or JPEG; settings: the collection's (:func:`effective_settings`);
        k: neighbours per query page and documents returned; extractor: reuse a built one;
        mode: ``visual``, ``text``, ``fused`` or ``auto`` (:func:`resolve_search_mode`); ``text``
            and ``fused`` OCR the query's pages first (:func:`docsort.ocr.ocr_image`, about 1-2 s
            a page); ``auto`` falls back to ``visual`` (said in ``log``) when Tesseract is missing.
        index: an index for that mode (:func:`mode_index`), built when ``None``.

    Raises:
        PageError: the file cannot be read; CollectionError: empty collection or other weights,
        or ``text`` mode and the query has no usable text; TesseractMissingError: ``text`` or
        ``fused`` mode without Tesseract.
    """
    from . import ocr as ocr_stage

    found = list(discover_files([path]))
    if len(found) != 1:
        raise PageError(f"{path}: expected one file, found {len(found)}")
    src = found[0]
    if isinstance(src, PageError):
        raise src
    if src.format == "pdf":
        require_poppler()
    requested, mode = mode, resolve_search_mode(collection, settings, mode)
    if mode != "visual":
        try:
            ocr_stage.require_tesseract(settings.ocr.lang)
        except ocr_stage.TesseractMissingError as exc:
            if requested != "auto":
                raise
            log(f"searching by look only: {exc}")
            mode = "visual"
    extractor = extractor or make_extractor(settings)
    _check_extractor(collection, extractor)
    images = [p.image for p in iter_pages(src, settings.render)]
    queries = extractor.embed(np.stack([to_network_input(im, extractor.input_size) for im in images]))
    projection = active_projection(collection, settings)
    if projection is not None:  # the vectors the index holds (issue 13)
        queries = projection.transform(queries)
    if mode == "visual":
        return _search_vectors(collection, settings, queries, k, str(path), index)
    model = load_text_model(collection) or _text_model_in_memory(collection, settings)
    if model is None:
        if mode == "text":
            raise CollectionError(f"{collection.root}: too few pages have usable OCR text to search by text (run `docsort ocr`)")
        log("searching by look only: too few pages have usable OCR text for text features")
        return _search_vectors(collection, settings, queries, k, str(path), None)  # the visual index, not the one given for fused
    results = [ocr_stage.ocr_image(p.image, settings.ocr) for p in iter_ocr_pages(src, settings.ocr)]
    has = np.array([usable_text(r["text"], r["n_words"], r["error"], settings.text, r["confidence"]) for r in results], dtype=bool)
    text_vecs = np.zeros((len(results), model.dim), np.float32)
    if has.any():
        text_vecs[has] = model.transform([r["text"] for r, h in zip(results, has) if h])
    if mode == "text":
        if not has.any():
            raise CollectionError(f"{path}: no usable text found by OCR to search with")
        queries = text_vecs[has]
    else:
        mean = model.visual_mean if model.visual_mean is not None and np.shape(model.visual_mean)[0] == queries.shape[1] else None
        queries = fuse(queries, text_vecs, settings.text.fusion_weight, mean)
    if index is None:
        index = mode_index(collection, settings, mode)
    return _search_vectors(collection, settings, queries, k, f"{path} ({mode})", index, mode)


def search_page(
    collection: Collection, page_id: int, settings: PipelineSettings, k: int = 5, *, index=None, mode: str = "visual"
) -> SearchResult:
    """Neighbours of a stored page (the page itself ranks first, score 1.0).

    ``mode``: ``visual`` (the stored backbone vector, FAISS index ``index.faiss``), ``text`` (its
    OCR text's vector, among pages with text), ``fused`` (:func:`page_vectors`), or ``auto``
    (:func:`resolve_search_mode`). ``index``: an already built index for that mode holding
    exactly the stored pages (the UI caches one; :func:`mode_index` builds it); read and synced
    from ``index.faiss`` (visual) or built (text, fused) when ``None``. :func:`search_file` takes
    both too.

    Raises:
        CollectionError: ``text`` mode and the page has no usable OCR text.
    """
    mode = resolve_search_mode(collection, settings, mode)
    if mode == "visual":
        _, vec = _visual_vectors(collection, settings, [page_id])
        return _search_vectors(collection, settings, vec, k, f"page {page_id}", index)
    if index is None:
        index = mode_index(collection, settings, mode)
    pv = page_vectors(collection, settings, mode, [page_id])
    if mode == "text" and not pv.has_text[0]:
        raise CollectionError(f"page {page_id} has no usable OCR text to search by (run `docsort ocr`)")
    return _search_vectors(collection, settings, pv.vectors, k, f"page {page_id} ({mode})", index, mode)


def resolve_search_mode(collection: Collection, settings: PipelineSettings, mode: str) -> str:
    """``auto`` -> ``fused`` when some page has OCR text and the fusion weight is above 0, else
    ``visual``; other modes are returned as given.

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "auto":
        has_text = collection.text_counts()["pages_with_words"] > 0
        return "fused" if has_text and settings.text.fusion_weight > 0 else "visual"
    if mode not in FEATURE_MODES:
        raise ValueError(f"unknown search mode {mode!r}; use auto, {', '.join(FEATURE_MODES)}")
    return mode


def mode_index(collection: Collection, settings: PipelineSettings, mode: str):
    """A FAISS index for searching by ``mode`` vectors (:func:`page_vectors`).

    ``visual``: the collection's persistent index (``index.faiss``, synced, not written).
    ``text`` and ``fused``: built in memory (exact ``IndexFlatIP`` in an ``IndexIDMap2``, FAISS
    wiki "Getting started"), over the pages with usable text for ``text``; derived data, since
    the text model changes whenever :func:`cluster` refits it.

    Returns:
        A FAISS index whose ids are page ids.
    """
    import faiss

    if mode == "visual":
        return sync_index(collection, settings.index, persist=False, projection=active_projection(collection, settings))[0]
    pv = page_vectors(collection, settings, mode)
    ids, vecs = (pv.ids[pv.has_text], pv.vectors[pv.has_text]) if mode == "text" else (pv.ids, pv.vectors)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vecs.shape[1] if vecs.ndim == 2 and vecs.shape[1] else 1))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vecs, np.float32), ids.astype(np.int64))
    return index


@dataclass(frozen=True)
class TextHit:
    """A page found by full-text search: rank, BM25 score (larger is better), the matching words
    in context (``snippet``, matches in ``[...]``), and where the page comes from."""

    rank: int
    score: float
    page_id: int
    document_id: int
    path: str
    page_no: int
    cluster: int | None
    cluster_name: str | None
    snippet: str


def search_text(collection: Collection, query: str, k: int = 20) -> list[TextHit]:
    """Full-text search over the pages' OCR text (SQLite FTS5; :meth:`Collection.search_text`).

    Args:
        query: words (all must occur; stemmed), ``"a phrase"``, ``OR``, ``NOT``, ``prefix*``.
        k: most pages returned.

    Returns:
        Hits, best BM25 score first; empty when nothing matches.

    Raises:
        ValueError: an empty query or invalid FTS5 syntax.
    """
    rows = collection.search_text(query, k)
    records = {p.page_id: p for p in collection.pages([r[0] for r in rows])}
    return [
        TextHit(i + 1, score, pid, records[pid].document_id, records[pid].path, records[pid].page_no, records[pid].cluster,
                records[pid].cluster_name, snippet)
        for i, (pid, score, snippet) in enumerate(rows) if pid in records
    ]


# ---------------------------------------------------------------------------------------------
# info and export
# ---------------------------------------------------------------------------------------------


def info(collection: Collection) -> dict:
    """Collection summary: counts, backbone, layer, pooling, weights source and sha256, the engine
    and precision the vectors were made with (and passed checks of other engines), last run
    (and whether it clustered visual or fused vectors), OCR text counts, OCR engine and text model."""
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
        "engine": (lambda e: f"{e['name']} {e.get('version') or '(version not recorded)'}")(recorded_engine(feats)) if feats else None,
        "precision": recorded_engine(feats)["precision"] if feats else None,
        "engine_cpu_flags": " ".join(recorded_engine(feats).get("cpu_flags") or []) or None if feats else None,
        "engine_checks": "; ".join(f"{c['name']} {c['precision']} passed, probe cosine >= {c['probe_min_cosine']} "
                                   f"vs {c['reference_engine']}" for c in manifest.get("engine_checks", [])) or None,
        "pipeline": manifest.get("pipeline", {}).get("name"),
        "created_at": manifest.get("created_at"),
        "last_clustered": run["created_at"] if run else None,
        "clustered_by": run["settings"].get("features", "visual") if run else None,
        **collection.text_counts(),
        "ocr": (lambda o: f"{o.get('engine')} lang={o.get('lang')} dpi={o.get('dpi')}" if o else None)(manifest.get("ocr")),
        "text_model": (lambda t: f"{t.get('method')} {t.get('dim')}-d on {t.get('pages_fitted')} pages" if t else None)(manifest.get("text")),
        "built_on": _machine_line(manifest.get("machine")),
        "clustered_on": _machine_line((manifest.get("clustering") or {}).get("machine")),
        "adapted_weights": (lambda a: (f"yes: {a.get('objective', {}).get('name')}, {a.get('epochs_run')} epoch(s), layers "
                                       f"{a.get('layers')}, seed {a.get('seed')}, sha256 {str(a.get('sha256'))[:12]}"
                                       if a.get("state") == "done" else
                                       f"re-embedding unfinished (sha256 {str(a.get('sha256'))[:12]}): run docsort adapt to finish")
                            if a else "no")(manifest.get("adaptation")),
        "classifier_in_use": (lambda f: (f"{f.get('in_use')} (cross-validated accuracy: fine-tuned {f.get('fine_tuned_accuracy')}, "
                                         f"frozen features {f.get('frozen_accuracy')}, {f.get('cv_method')})"
                                         + (f"; weights sha256 {str(f.get('sha256'))[:12]}" if f.get("in_use") == "fine-tuned" else ""))
                              if f else ("frozen features" if manifest.get("classifier") else None))(manifest.get("fine_tune")),
        "invariance": (lambda v: (f"{v.get('dims')}-d from {v.get('n_pages_fitted')} pages x {len(v.get('styles', []))} styles, "
                                  f"sha256 {str(v.get('sha256'))[:12]}" + ("" if v.get("active") else " (not in use)")) if v else None)(
            manifest.get("invariance")),
    }


def _machine_line(m: dict | None) -> str | None:
    """``"CPU model, N cores, flags a b c"`` of a manifest's ``machine`` record (None before it was recorded)."""
    if not m:
        return None
    flags = " ".join(f for f in m.get("cpu_flags", []) if f.startswith(("avx512", "amx", "avx2", "sve")))
    return f"{m.get('cpu')}, {m.get('cores')} cores" + (f", {flags}" if flags else "")


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


def export_pages(collection: Collection, out: str | Path, *, vectors: bool | str = False) -> int:
    """Write one row per page to ``.parquet`` or ``.csv``.

    Columns: path, page, sha256, cluster, cluster_name, document_cluster, umap_x, umap_y, page_id,
    document_id, membership (``member`` | ``reassigned`` | ``noise`` | ``provisional``); with
    ``vectors`` also ``vector`` (a list of D float32, Parquet) or ``f0..f{D-1}`` columns (CSV).

    ``vectors``: ``True`` or ``"clustering"`` writes the vectors the index and clustering use;
    ``"visual"``, ``"text"`` or ``"raw"`` another kind (:func:`export_vectors`). What they are
    (kind, mode, dim, invariance sha256, fusion weight) is written to the Parquet schema metadata
    under the key ``docsort`` (JSON), or for CSV to a sidecar ``OUT.json``.

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
    cols = ["path", "page", "sha256", "cluster", "cluster_name", "document_cluster", "umap_x", "umap_y", "page_id", "document_id",
            "membership"]
    df = df[cols].reset_index(drop=True)
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
