"""Search: pages and documents like a file or a stored page (by look, by text or both), and full-text
search over the OCR text. Reads only (the visual index file is kept in step by the store)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from docsort.config.settings import PipelineSettings
from docsort.core.clustering import document_clusters
from docsort.core.features import FeatureExtractor
from docsort.core.index import search_index
from docsort.store.index_file import sync_index
from docsort.core.pages import (
    PageError,
    discover_files,
    iter_ocr_pages,
    iter_pages,
    require_poppler,
    to_network_input,
)
from docsort.core.text import FEATURE_MODES, fuse, usable_text
from docsort.queries.vectors import _text_model_in_memory, _visual_vectors, active_projection, load_text_model, page_vectors
from docsort.store.manifest import _check_extractor, make_extractor
from docsort.store.storage import Collection, CollectionError

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
            and ``fused`` OCR the query's pages first (:func:`docsort.core.ocr.ocr_image`, about 1-2 s
            a page); ``auto`` falls back to ``visual`` (said in ``log``) when Tesseract is missing.
        index: an index for that mode (:func:`mode_index`), built when ``None``.

    Raises:
        PageError: the file cannot be read; CollectionError: empty collection or other weights,
        or ``text`` mode and the query has no usable text; TesseractMissingError: ``text`` or
        ``fused`` mode without Tesseract.
    """
    from docsort.core import ocr as ocr_stage

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
