"""The app's caches, in one place: every ``st.cache_resource`` / ``st.cache_data`` function of the
Streamlit app (:mod:`docsort.faces.app`) and the small helpers that build their keys.

Heavy objects (the collection handle, the TensorFlow feature extractor, the FAISS index, the page
table) are ``st.cache_resource`` entries shared by every session; tables and CSV bytes are
``st.cache_data`` entries. Each is keyed on the collection directory (``root``, a string) and
:func:`docsort.queries.browse.data_version` (``version``, a tuple of ints that changes whenever any
process commits to the collection), so a write from any session or from the CLI is seen on the next
rerun, and opening the app on an existing collection never re-embeds or re-runs UMAP.
Caching semantics: Streamlit docs, "Caching overview" (``st.cache_resource`` returns the same object
to every caller: treat it as read-only; ``st.cache_data`` returns a copy).
"""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from docsort.config.settings import load_pipeline
from docsort.jobs import classify, export
from docsort.jobs.ocr import ocr_pipeline
from docsort.queries import browse
from docsort.queries.search import mode_index, resolve_search_mode, search_page
from docsort.queries.tables import cluster_table
from docsort.store.manifest import effective_settings, make_extractor
from docsort.store.storage import Collection


@st.cache_resource(show_spinner=False)
def open_collection(root: str) -> Collection:
    """One handle per collection directory, shared by all sessions and the re-cluster thread: each
    thread gets its own SQLite connection (WAL mode) and their writes take turns
    (:meth:`docsort.store.storage.Collection.transaction`)."""
    return Collection(root, create=True)


@st.cache_resource(show_spinner="Loading the feature extractor (TensorFlow, InceptionV3 up to mixed1)...", max_entries=1)
def get_extractor(key: str, _settings):
    """The TensorFlow feature extractor for these settings (``key`` is their JSON)."""
    return make_extractor(_settings, announce=False)


@st.cache_resource(show_spinner=False, max_entries=2)
def get_index(path: str, stamp: tuple):
    """The collection's FAISS index file (:func:`docsort.queries.vectors.visual_index_path`), read once
    per change of the file (``stamp``)."""
    from docsort.core.index import load_index

    return load_index(Path(path))


@st.cache_resource(show_spinner=False, max_entries=3)
def page_table(root: str, version: tuple):
    """``Collection.page_table()`` per data version; shared, so treat it as read-only."""
    return open_collection(root).page_table()


@st.cache_resource(show_spinner=False, max_entries=3)
def clusters_summary(root: str, version: tuple):
    return cluster_table(open_collection(root))


@st.cache_resource(show_spinner=False, max_entries=64)
def members(root: str, version: tuple, cluster_id):
    col = open_collection(root)
    return browse.cluster_pages(col, cluster_id, table=page_table(root, version))


@st.cache_data(show_spinner=False, max_entries=4)
def assignments_csv(root: str, version: tuple) -> bytes:
    return export.assignments_csv(open_collection(root))


@st.cache_resource(show_spinner=False, max_entries=3)
def types_table(root: str, version: tuple):
    """:func:`docsort.jobs.classify.type_table` per data version (labels and predictions of every page)."""
    return classify.type_table(open_collection(root), table=page_table(root, version))


@st.cache_data(show_spinner=False, max_entries=3)
def page_labels(root: str, version: tuple) -> dict[int, str]:
    """``{page id: document type}`` of the labelled pages."""
    df = types_table(root, version)
    df = df[df["label"].notna()]
    return dict(zip(df["page_id"].astype(int), df["label"]))


@st.cache_data(show_spinner=False, max_entries=3)
def text_counts(root: str, version: tuple) -> dict[str, int]:
    """:meth:`Collection.text_counts` per data version (it reads every page's OCR row)."""
    return open_collection(root).text_counts()


@st.cache_data(show_spinner=False, max_entries=3)
def auto_search_mode(root: str, version: tuple) -> str:
    """The default search mode: :func:`docsort.queries.search.resolve_search_mode` of ``auto``."""
    col = open_collection(root)
    return resolve_search_mode(col, settings_for(col), "auto")


@st.cache_data(show_spinner=False, max_entries=6)
def pages_needing_text(root: str, version: tuple, lang: str, retry_failed: bool) -> int:
    """How many pages an OCR back-fill would read (:meth:`Collection.pages_needing_text`)."""
    return len(open_collection(root).pages_needing_text(lang, retry_failed=retry_failed))


@st.cache_resource(show_spinner="Building the search index of the OCR text...", max_entries=4)
def get_mode_index(root: str, mode: str, text_state: tuple):
    """The in-memory FAISS index of ``text`` or ``fused`` vectors (:func:`docsort.queries.search.mode_index`),
    built once per mode and :func:`text_state` (not per data version: labelling a page must not
    rebuild it)."""
    col = open_collection(root)
    return mode_index(col, settings_for(col), mode)


@st.cache_data(show_spinner=False, max_entries=64)
def page_neighbours(root: str, version: tuple, page_id: int, k: int, mode: str = "visual", state: tuple = ()):
    """:func:`docsort.queries.search.search_page` of a stored page by ``mode`` (``visual``, ``text``,
    ``fused``); ``state`` is :func:`text_state` for the text and fused modes.

    Raises:
        CollectionError: ``text`` mode and the page (or every page) has no usable OCR text.
    """
    col = open_collection(root)
    index = current_index(col) if mode == "visual" else get_mode_index(root, mode, state)
    return search_page(col, page_id, settings_for(col), k, index=index, mode=mode)


def settings_for(col: Collection):
    """The collection's effective pipeline settings (the default pipeline where it records none)."""
    return effective_settings(col, load_pipeline("default"))


def ocr_settings_for(col: Collection):
    """The pipeline whose ``ocr`` section a back-fill runs with (:func:`docsort.jobs.ocr.ocr_pipeline`)."""
    return ocr_pipeline(col, load_pipeline("default"))


def text_state(col: Collection, version: tuple, table) -> tuple:
    """A token of what text and fused vectors depend on: the stored pages (never changed, only
    added), their OCR text (counts, and when OCR last ran), the stored text model's token and the
    last clustering run (``docsort cluster`` refits the text model)."""
    manifest = col.manifest() or {}
    run = col.last_cluster_run()
    return (len(table), int(table["page_id"].max()) if len(table) else 0,
            tuple(sorted(text_counts(str(col.root), version).items())),
            (manifest.get("ocr") or {}).get("updated_at"), (manifest.get("text") or {}).get("token"), run["id"] if run else None)


def extractor_for(col: Collection):
    settings = settings_for(col)
    key = json.dumps([settings.features.model_dump(mode="json"), settings.render.color], sort_keys=True)
    return get_extractor(key, settings)


def current_index(col: Collection):
    """The cached FAISS index if it holds exactly the stored pages, else ``None`` (search syncs)."""
    from docsort.queries.vectors import visual_index_path

    path = visual_index_path(col, settings_for(col))  # the scan-style-invariant index once fitted (issue 13)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    index = get_index(str(path), (stat.st_mtime_ns, stat.st_size))
    if index is None or index.ntotal != col.counts()["pages"]:
        return None
    return index
