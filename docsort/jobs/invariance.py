"""The invariance job (issue 13): re-read a sample of stored pages, render them in several scan
styles, embed them and fit the projection that removes scan-style directions
(:mod:`docsort.core.invariance`), stored in the collection."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from docsort.config.settings import PipelineSettings
from docsort.core.features import FeatureExtractor
from docsort.core.invariance import InvarianceProjection, fit_projection, stored_projection
from docsort.core.pages import (
    PageError,
    iter_pages,
    to_network_input,
)
from docsort.core.styles import page_rng, render_styles
from docsort.store.index_file import sync_index
from docsort.store.manifest import _PINNED_FEATURE_KEYS, _RENDER_KEYS_NOT_IN_VECTORS, _check_extractor, make_extractor, read_manifest, write_manifest
from docsort.store.storage import Collection

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    manifest = read_manifest(collection)
    feats = (manifest.features if manifest else None) or {}
    inv = settings.invariance.model_dump(mode="json", exclude={"enabled", "refit_growth", "min_pages"})
    return {"invariance": inv, "weights_sha256": feats.get("weights", {}).get("sha256"),
            "features": {k: feats.get(k) for k in _PINNED_FEATURE_KEYS}, "render": settings.render.model_dump(
                mode="json", exclude=set(_RENDER_KEYS_NOT_IN_VECTORS))}


def _needs_fit(collection: Collection, settings: PipelineSettings, n_pages: int) -> str | None:
    """Why the projection must be (re)fitted now, or ``None`` when the stored one is current."""
    manifest = read_manifest(collection)
    entry = manifest.invariance if manifest else None
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
    first recorded path whose bytes still have the stored sha256 (:func:`docsort.jobs.ocr._find_source`),
    rendered with ``render`` (:func:`docsort.core.pages.iter_pages`, only the wanted page range).

    Args:
        page_ids: the stored pages wanted (any order).
        render: :class:`~docsort.config.settings.RenderSettings`.
        log: where per-file notices go, prefixed with ``what``; a document whose file moved or
            changed is said only when ``tell_moved``; a file that fails to render always is.

    Yields:
        ``(page_id, image)`` by document (ascending id), pages in order: a PIL image for each page
        read, ``None`` for each that could not be (file moved or changed, unreadable, or missing
        pages of a document that failed part-way; those come after the document's good pages).
    """
    from docsort.jobs.ocr import _find_source  # the same re-read rule as the OCR back-fill

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
    stored sha256, :func:`docsort.jobs.ocr._find_source`), rendered with ``settings.render``, restyled
    with :func:`docsort.core.styles.render_styles` (generator :func:`docsort.core.styles.page_rng`
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
    (:func:`docsort.core.styles.render_styles`, seeded per page id), resized to the network input and
    embedded with the collection's extractor; ``as_is`` takes the stored vector (the same
    pixels and extractor made it). :func:`docsort.core.invariance.fit_projection` then fits the
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
            write_manifest(collection, m)

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
