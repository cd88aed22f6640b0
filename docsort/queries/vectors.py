"""The vectors the faces and jobs compare: visual (projected by the collection's invariance projection
when it has one), text (the fitted text model) and fused views of the stored pages. Reads only."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from docsort.config.settings import PipelineSettings
from docsort.core.invariance import InvarianceProjection, stored_projection
from docsort.core.text import FEATURE_MODES, TextModel, fit_text_model, fuse, usable_text
from docsort.store.models import load_model
from docsort.store.storage import Collection, CollectionError
from docsort.store.version import text_state

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _usable_texts(collection: Collection, settings: PipelineSettings, page_ids=None) -> dict[int, str]:
    """``{page_id: OCR text}`` of the pages whose text is usable (:func:`docsort.core.text.usable_text`)."""
    return {pid: r["text"] for pid, r in collection.page_texts(page_ids).items()
            if usable_text(r["text"], r["n_words"], r["error"], settings.text, r["confidence"])}


def fit_text_model_of(
    collection: Collection, settings: PipelineSettings, *, log: Log = _stderr,
    texts: dict[int, str] | None = None, visual: np.ndarray | None = None,
) -> TextModel | None:
    """Fit a text model on the collection's usable OCR text, in memory (storing it is
    :func:`docsort.jobs.cluster.fit_text`'s).

    Args:
        texts: ``{page id: text}`` of the usable texts (read when ``None``).
        visual: float32 (n, D), every stored (projected) visual vector (read when ``None``); its mean
            is the model's visual mean (:meth:`docsort.core.text.TextModel.set_visual_mean`).

    Returns:
        The model, or ``None`` when fewer than 3 pages have at least ``text.min_words`` OCR words.

    Raises:
        TextModelError: a pretrained method (``minilm``, ``hub:``) cannot be loaded.
    """
    texts = _usable_texts(collection, settings) if texts is None else texts
    model = fit_text_model([texts[k] for k in sorted(texts)], settings.text)
    if model is None:
        if texts:
            log(f"only {len(texts)} pages have usable OCR text: text features need at least 3; using visual features")
        return None
    if visual is None:
        _, visual = _visual_vectors(collection, settings)
    model.set_visual_mean(visual.mean(axis=0))
    return model


def load_text_model(collection: Collection) -> TextModel | None:
    """The stored text model (``text_model.joblib``), or ``None`` when there is none or it cannot be
    read (then :func:`page_vectors` fits one in memory)."""
    try:
        model = load_model(collection, "text")
    except Exception:  # noqa: BLE001 - missing, truncated, or pickled by an incompatible scikit-learn
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
            the OCR text) or ``"fused"`` (:func:`docsort.core.text.fuse` with ``text.fusion_weight``).
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
    state = text_state(collection)  # the text and the pages (the visual mean is part of the model)
    projection = active_projection(collection, settings)  # the visual mean is of the projected vectors
    key = (str(collection.root.resolve()), *state, settings.text.model_dump_json(), projection.sha256 if projection else None)
    if key not in _IN_MEMORY_MODELS:
        if len(_IN_MEMORY_MODELS) >= 4:
            _IN_MEMORY_MODELS.pop(next(iter(_IN_MEMORY_MODELS)))
        _IN_MEMORY_MODELS[key] = fit_text_model_of(collection, settings, log=lambda m: None)
    return _IN_MEMORY_MODELS[key]


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
