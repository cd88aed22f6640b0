"""docsort's Streamlit app: drag scans in, see the clusters, find similar documents.

Start it with ``docsort ui`` (or ``streamlit run app.py`` from the repository root); it opens on
127.0.0.1 against the collection in ``$DOCSORT_COLLECTION`` (default ``./docsort-collection``).

This file is a thin shell: ingest and clustering are :mod:`docsort.jobs`', search and tables :mod:`docsort.queries`', and the
read-side helpers (galleries ordered by distance to the cluster centre, paging, uploads, CSV
export, sorting into folders) are :mod:`docsort.queries.browse`'s. Heavy objects (the collection handle,
the TensorFlow feature extractor, the FAISS index, the page table) are cached with
``st.cache_resource`` and keyed on :func:`docsort.queries.browse.data_version` (all of them in
:mod:`docsort.faces.cache`), so opening the app on an existing collection reads the stored 2-D UMAP
map and never re-runs UMAP or re-embeds anything; the extractor is only built when a scan has to be
embedded.

Views (``st.navigation`` pages in the sidebar, listed in :data:`PAGES`): Add scans, Clusters, Map,
Similar documents, Search text, Document types, Near-duplicates (issue 18: each family side by side),
Collection & export. Each is a ``view_*`` function
here, run by a three-line page script in docsort/faces/views/ (file pages, not callables, because
``AppTest.switch_page`` selects pages by script path). Buttons that open another view call
:func:`go` (``st.switch_page``). Labelling (a cluster, or pages next to any gallery) and the document-type
classifier are :mod:`docsort.jobs.classify`'s.

Hand edits (issue 18): a cluster's view can merge another cluster into it, preview and keep a split,
move picked pages elsewhere (noise and new pages too) and undo; the Map's lasso / box selection, and
thumbnails ticked in a cluster's gallery, can be given a cluster, a document type, or exported. The widgets are :mod:`docsort.faces.edit_views`';
every write is a job's (:mod:`docsort.jobs.edits`, recorded as made by ``ui``), renames included.

Text (issue 6): **Collection & export** (and **Search text** while no page has text) has the button
that reads the pages' text with Tesseract (:func:`docsort.jobs.ocr.backfill`); **Search text** is a
full-text search over that text (:func:`docsort.queries.search.search_text`); **Similar documents**
compares pages by look, by text or both (:func:`docsort.queries.search.search_page` ``mode``) and shows
the query page's OCR text. The in-memory FAISS indexes of the text and fused modes are cached per
mode and per state of the pages, their OCR text and the text model (which ``cluster`` refits).
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from docsort.queries import browse
from docsort.core.names import sanitise_name
from docsort.faces import edit_views, plots
from docsort.faces.flash import flash, show_flash
from docsort.faces.cache import (assignments_csv, auto_search_mode, clusters_summary, current_index, extractor_for, get_mode_index, members,
                                 ocr_settings_for, open_collection, page_labels, page_neighbours, page_table,
                                 pages_needing_text, settings_for, text_counts, text_state, types_table)
from docsort.faces.cache import map_figure
from docsort.jobs import edits
from docsort.jobs import sort as sorting, uploads

from docsort.jobs import classify
from docsort.core.clustering import MIN_PAGES, ClusteringError
from docsort.core.ocr import TesseractMissingError
from docsort.jobs.ocr import backfill
from docsort.core.pages import PageError, PopplerMissingError
from docsort.jobs.cluster import cluster
from docsort.queries.tables import info
from docsort.queries.search import search_file, search_text
from docsort.config.settings import PipelineError
from docsort.store.storage import Collection, CollectionBusyError, CollectionError, default_collection_path

#: The app's pages, in sidebar order: ``(title, page script in docsort/faces/views/, URL path)``.
#: ``st.navigation`` draws them; each script calls one ``view_*`` function of this module with
#: :func:`current_run`. A new view is a ``view_*`` function, a three-line script beside the others and a row here.
PAGES = [
    ("Add scans", "add_scans.py", "add"),
    ("Clusters", "clusters.py", "clusters"),
    ("Map", "map.py", "map"),
    ("Similar documents", "similar.py", "similar"),
    ("Search text", "search_text.py", "search"),
    ("Document types", "document_types.py", "types"),
    ("Near-duplicates", "duplicates.py", "duplicates"),
    ("Collection & export", "collection.py", "collection"),
]
VIEWS = [title for title, _, _ in PAGES]
#: Where the page scripts are (absolute, so the app runs from any working directory and either entry script).
VIEWS_DIR = Path(__file__).resolve().parent / "views"
#: The "Compare by" choices of Similar documents -> :func:`docsort.queries.search.search_page` modes.
SEARCH_MODES = {"By look": "visual", "By text": "text", "Both": "fused"}
TEXT_HITS = 20
UPLOAD_TYPES = ["pdf", "tif", "tiff", "png", "jpg", "jpeg"]
#: Per-file upload cap, MB; the same as ``server.maxUploadSize`` in .streamlit/config.toml.
MAX_UPLOAD_MB = 200
THUMBS_PER_ROW = 6
MEMBERS_PER_PAGE = 24
CLUSTERS_PER_PAGE = 8
REPRESENTATIVES = 6
#: Above this many points the map is drawn with WebGL (Plotly ``scattergl``) instead of SVG.
WEBGL_ABOVE = 1000
UNCLUSTERED = "unclustered"

# ---------------------------------------------------------------------------------------------
# navigation callbacks
# ---------------------------------------------------------------------------------------------


def page(title: str, default: bool = False) -> st.Page:
    """The ``st.Page`` of the view called ``title`` (a title of :data:`PAGES`).

    Raises:
        KeyError: no page has that title.
    """
    _, script, url_path = next(row for row in PAGES if row[0] == title)
    return st.Page(VIEWS_DIR / script, title=title, url_path=url_path, default=default)


def go(view: str, **state) -> None:
    """Switch to the page ``view`` (a title of :data:`PAGES`) with ``state`` put in session state
    first. Usable in a widget callback: Streamlit 1.67 queues a callback's ``st.switch_page`` until
    every callback has run (``SessionState._call_callbacks`` in streamlit/runtime/state/session_state.py)."""
    st.session_state.update(state)
    st.switch_page(page(view))


def show_similar(page_id: int) -> None:
    go("Similar documents", query_page=int(page_id), query_source="A page in the collection")


def open_cluster(cluster_id) -> None:
    """Open a cluster's gallery; the buttons that call it are on the Clusters page, so no page switch."""
    st.session_state["open_cluster"] = cluster_id


def close_cluster() -> None:
    st.session_state["open_cluster"] = None


# ---------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------


def plural(n: int, word: str) -> str:
    """``"1 page"``, ``"2 pages"``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def thumbnail_grid(col: Collection, rows, key: str, caption=None, per_row: int = THUMBS_PER_ROW,
                   selectable: bool = False) -> list[int]:
    """Thumbnails with a caption and a "Similar" button each; ``rows`` has page_id, file, page.

    With ``selectable``, each thumbnail also gets a "Select" checkbox (key ``{key}-pick-{page_id}``).
    What is ticked is kept in the session (:func:`gallery_selection`), not only in the boxes:
    Streamlit forgets a box that a run does not draw, so without it a page ticked on one page of a
    paginated gallery, or one that another session has since moved out of it, would silently
    drop out of the selection.

    Returns:
        The page ids selected in gallery ``key``, in the order they were ticked, including pages
        not among ``rows`` (empty without ``selectable``).
    """
    rows = list(rows.itertuples(index=False)) if hasattr(rows, "itertuples") else list(rows)
    selected = gallery_selection(key) if selectable else {}
    labelled = page_labels(str(col.root), browse.data_version(col))
    for start in range(0, len(rows), per_row):
        cells = st.columns(per_row)
        for cell, row in zip(cells, rows[start : start + per_row]):
            with cell:
                text = caption(row) if caption else f"{row.file} · p.{row.page}"
                if int(row.page_id) in labelled:
                    text += f" · [{labelled[int(row.page_id)]}]"
                jpeg = col.thumbnail(int(row.page_id))
                if jpeg:
                    st.image(jpeg, caption=text, width="stretch")
                else:
                    st.caption(f"(no thumbnail) {text}")
                st.button("Similar", key=f"{key}-sim-{row.page_id}", on_click=show_similar, args=(int(row.page_id),),
                          help="Show the pages and documents most like this page")
                if selectable:
                    pid = int(row.page_id)
                    st.checkbox("Select", key=f"{key}-pick-{pid}", value=pid in selected, on_change=_tick, args=(key, pid),
                                help="Select pages here, then act on them below the gallery")
    return list(selected)


def gallery_selection(key: str) -> dict[int, None]:
    """The pages ticked in gallery ``key`` this session, as the keys of a dict (in the order they
    were ticked; ``st.session_state["{key}-selected"]``), kept across the gallery's pages and reruns."""
    return st.session_state.setdefault(f"{key}-selected", {})


def _tick(key: str, page_id: int) -> None:
    """A "Select" box of gallery ``key`` changed: keep the session's selection in step with it."""
    selected = gallery_selection(key)
    if st.session_state.get(f"{key}-pick-{page_id}"):
        selected[page_id] = None
    else:
        selected.pop(page_id, None)


def clear_gallery_selection(key: str) -> None:
    """Untick every page of gallery ``key`` (a callback: before the next run draws the boxes)."""
    st.session_state[f"{key}-selected"] = {}
    for k in [k for k in st.session_state if str(k).startswith(f"{key}-pick-")]:
        del st.session_state[k]


def _label_message(kind: str, text: str) -> None:
    flash("label_message", kind, text)


def show_label_message() -> None:
    show_flash("label_message")


def label_form(col: Collection, rows, key: str) -> None:
    """A form next to a gallery: pick some of its pages (``rows`` has page_id, file, page) and give
    them a document type (:func:`docsort.jobs.classify.label_pages`, recorded as labelled by ``ui``)."""
    rows = list(rows.itertuples(index=False)) if hasattr(rows, "itertuples") else list(rows)
    if not rows:
        return
    names = {int(r.page_id): f"{r.file} · p.{r.page}" for r in rows}
    known = list(classify.label_counts(col))
    with st.form(f"label-form-{key}", border=True):
        left, mid, right = st.columns([3, 2, 1], vertical_alignment="bottom")
        chosen, n_left = edit_views.page_picker(left, "Label pages", names, key=f"label-pages-{key}")
        doc_type = mid.text_input("as document type", key=f"label-type-{key}", max_chars=classify.MAX_TYPE_LEN,
                                  placeholder=", ".join(known[:3]) or "e.g. invoice",
                                  help="Existing types: " + (", ".join(known) or "none yet"))
        if right.form_submit_button("Label"):
            try:
                n = classify.label_pages(col, chosen, doc_type, who="ui")
            except (ValueError, CollectionError) as exc:
                _label_message("error", str(exc))
            else:
                name = classify.normalise_type(doc_type, classify.label_counts(col))
                _label_message("success", f"Labelled {plural(n, 'page')} as {name!r}{edit_views.left_note(n_left)}.")
            st.rerun()


def _cluster_seconds(col: Collection, n_pages: int) -> float | None:
    """Seconds a clustering of ``n_pages`` should take, scaled from the last run (at least 5 s);
    ``None`` before the first run."""
    last = col.last_cluster_run()
    return max(5.0, float(last["seconds"]) * n_pages / max(last["n_pages"], 1)) if last else None


def _run_in_background(job: Callable[[], Any], name: str, bar, estimate: float, text: Callable[[float], str]):
    """Run ``job()`` in a worker thread while ``bar`` advances with the elapsed time against
    ``estimate`` (seconds; the bar stops at 95 % until the job ends), labelled ``text(elapsed)``.

    Returns:
        ``(result, error)``: the job's return value, or the exception it raised (then result
        ``None``), to be shown or re-raised in the script thread.
    """
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["result"] = job()
        except BaseException as exc:  # shown / re-raised in the script thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=name, daemon=True)
    t0 = time.perf_counter()
    worker.start()
    while worker.is_alive():
        elapsed = time.perf_counter() - t0
        bar.progress(min(0.95, 0.95 * elapsed / estimate), text=text(elapsed))
        worker.join(0.5)
    return outcome.get("result"), outcome.get("error")


def run_clustering(col: Collection, n_pages: int) -> None:
    """Run :func:`docsort.jobs.cluster.cluster` with a progress bar; the outcome goes to session state."""
    if n_pages < MIN_PAGES:
        st.session_state["cluster_message"] = (
            "warning", f"{plural(n_pages, 'page')} cannot be clustered yet: add at least {MIN_PAGES} pages.")
        return
    estimate = _cluster_seconds(col, n_pages)
    estimate = 30.0 + n_pages / 400 if estimate is None else estimate
    bar = st.progress(0.0, text=f"Clustering {n_pages} pages (UMAP + HDBSCAN)...")
    settings = settings_for(col)
    doing = {"step": ""}  # written by the worker thread, read by the bar's text
    r, error = _run_in_background(
        lambda: cluster(col, settings, log=lambda _m: None, lock_timeout_s=30, on_step=lambda t: doing.update(step=t)),
        "docsort-cluster", bar, estimate,
        lambda elapsed: f"Clustering {n_pages} pages (UMAP + HDBSCAN{': ' + doing['step'] if doing['step'] else ''})... {elapsed:.0f} s")
    bar.progress(1.0, text="Clustering finished")
    if isinstance(error, ClusteringError):
        st.session_state["cluster_message"] = ("warning", str(error))
    elif isinstance(error, CollectionBusyError):
        st.session_state["cluster_message"] = ("error", str(error))
    elif error is not None:
        raise error
    else:
        report = r.params.get("edits")  # hand edits kept (docsort.jobs.edits), and any it could not honour
        kept = ""
        if report:
            rep = edits.EditsReport(**report)
            kept = " " + rep.summary()[0].upper() + rep.summary()[1:] + "." + "".join(
                f"\n\n- not honoured: {line}" for line in rep.conflicts) + "".join(f"\n\n- {line}" for line in rep.notes)
        st.session_state["cluster_message"] = (
            "warning" if report and report["conflicts"] else "success",
            f"Clustered {plural(len(r.labels), 'page')} into {plural(r.n_clusters, 'cluster')} "
            f"({plural(r.n_noise, 'noise page')}) in {r.seconds:.1f} s.{kept}",
        )


def show_cluster_message() -> None:
    show_flash("cluster_message")


def recluster_button(col: Collection, n_pages: int, key: str, label: str = "Re-cluster") -> None:
    if st.button(label, key=key, disabled=n_pages < MIN_PAGES,
                 help=f"Run UMAP + HDBSCAN over all {n_pages} pages (needs at least {MIN_PAGES})"):
        run_clustering(col, n_pages)
        st.rerun()


# ---------------------------------------------------------------------------------------------
# text (OCR)
# ---------------------------------------------------------------------------------------------


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:=^\"'&])")


def md_escape(text: str) -> str:
    """``text`` shown literally by ``st.markdown`` (OCR text holds ``*``, ``#``, ``$``, ``[...]``):
    every ASCII punctuation mark that Markdown or Streamlit's extensions read is backslash-escaped,
    and whitespace runs (newlines included) become one space."""
    return _MD_SPECIAL.sub(r"\\\1", re.sub(r"\s+", " ", text or ""))


def snippet_markdown(snippet: str) -> str:
    """A full-text hit's snippet (matches in ``[...]``, :func:`docsort.queries.search.search_text`) as
    Markdown: the matches in bold, everything else literal."""
    parts = re.split(r"\[([^\[\]]+)\]", snippet)
    return "".join(f"**{md_escape(p.strip())}**" if i % 2 else md_escape(p) for i, p in enumerate(parts)).strip()


def run_ocr(col: Collection, settings, n_pages: int, retry_failed: bool) -> None:
    """Run :func:`docsort.jobs.ocr.backfill` with a progress bar; the outcome goes to session state
    (``ocr_result``, shown by :func:`show_ocr_result`)."""
    bar = st.progress(0.0, text=f"Reading the text of {plural(n_pages, 'page')} with Tesseract (OCR)...")
    note = st.empty()

    def on_progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Reading the text of the pages (OCR): {done} of {total}")

    def on_log(msg: str) -> None:  # waiting for another OCR run, or the warning of a fallback; failures come in the report
        if not msg.startswith("OCR error:"):
            note.caption(msg)

    run = col.last_cluster_run()
    try:
        report = backfill(col, settings, retry_failed=retry_failed, progress=False, log=on_log,
                          on_progress=on_progress, lock_timeout_s=30)
    except (TesseractMissingError, PopplerMissingError, CollectionError) as exc:
        st.session_state["ocr_result"] = {"error": str(exc)}
        return
    bar.progress(1.0, text="Reading the text finished")
    st.session_state["ocr_result"] = {
        "done": report.pages_done, "failed": report.pages_failed, "words": report.words,
        "confidence": report.mean_confidence, "seconds": report.seconds, "pages_per_s": report.pages_per_s,
        "engine": report.engine, "lang": report.lang, "failures": report.failures[:200],
        "run_id": run["id"] if run else None,
    }


def show_ocr_result(col: Collection, n_pages: int, key: str) -> None:
    """The last OCR run of this session, and, until the next clustering, the advice to re-cluster
    (with the button) so that clusters and their names use the text."""
    result = st.session_state.get("ocr_result")
    if not result:
        return
    if "error" in result:
        st.error(result["error"])
        return
    conf = "" if result["confidence"] is None else f", mean word confidence {result['confidence']:.0f}"
    text = (f"Read the text of {plural(result['done'], 'page')} in {result['seconds']:.1f} s "
            f"({result['pages_per_s']:.2f} pages/s, {result['engine']}, {result['lang']}): "
            f"{result['words']:,} words{conf}; {result['failed']} failed.")
    (st.warning if result["failed"] else st.success)(text)
    if result["failures"]:
        with st.expander(f"Why OCR failed ({len(result['failures'])})"):
            st.table([{"file": p, "reason": r} for p, r in result["failures"]])
    run = col.last_cluster_run()
    if result["done"] and (run["id"] if run else None) == result["run_id"]:
        st.info("The clusters do not use this text yet: re-cluster so that pages are grouped by look and text "
                "together and clusters are named by their words.")
        recluster_button(col, n_pages, key=f"{key}-recluster", label="Re-cluster with the text")


def ocr_section(col: Collection, n_pages: int, key: str, show_result: bool = True) -> None:
    """How many pages have OCR text, and the button that reads the text of the others
    (:func:`docsort.jobs.ocr.backfill`: Tesseract in worker processes, resumable); then, with
    ``show_result``, the outcome of the last run (:func:`show_ocr_result`)."""
    settings = ocr_settings_for(col)
    lang = settings.ocr.lang
    root, version = str(col.root), browse.data_version(col)
    counts = text_counts(root, version)
    todo = pages_needing_text(root, version, lang, False)
    st.markdown(f"**{counts['pages_with_text']} of {plural(n_pages, 'page')}** have OCR text "
                f"({counts['ocr_words']:,} words); {counts['ocr_failed']} failed.")
    retry = False
    if counts["ocr_failed"]:
        retry = st.checkbox(f"Also try again the {plural(counts['ocr_failed'], 'page')} whose OCR failed", key=f"{key}-retry",
                            help="e.g. after a missing file is back in place, or after a Tesseract time-out")
    n = pages_needing_text(root, version, lang, True) if retry else todo
    if n == 0:
        st.caption("Every page has been read" + (" (tick the box above to try the failed ones again)." if counts["ocr_failed"] else "."))
    elif st.button(f"Read the text of {plural(n, 'page')} (OCR)", key=key, type="primary",
                   help=f"Tesseract ({lang}) in one worker process per CPU core, about 1–2 s a page per core. "
                   "Stopping loses nothing: pages read so far are kept and the next run goes on with the rest."):
        run_ocr(col, settings, n, retry)
        st.rerun()
    if show_result:
        show_ocr_result(col, n_pages, key)


def ocr_text_expander(col: Collection, page_id: int) -> None:
    """The page's OCR text, collapsed, if it has been read."""
    rec = col.page_texts([page_id]).get(page_id)
    if rec is None:
        return
    if rec["error"]:
        st.caption(f"OCR failed on this page: {rec['error']}")
    elif not rec["text"].strip():
        st.caption("OCR found no text on this page.")
    else:
        conf = "" if rec["confidence"] is None else f", confidence {rec['confidence']:.0f}"
        with st.expander(f"Text (OCR{conf}, {plural(rec['n_words'], 'word')})"):
            with st.container(height=420 if rec["n_words"] > 300 else "content", border=False):
                st.text(rec["text"])
            st.caption(f"{rec['engine']}, {rec['lang']}, read {rec['at']}")


def no_text_reason(col: Collection, page_id: int) -> str:
    """Why a page cannot be compared by text (:func:`docsort.core.text.usable_text` said no)."""
    rec = col.page_texts([page_id]).get(page_id)
    text = settings_for(col).text
    if rec is None:
        return "its text has not been read (OCR) yet"
    if rec["error"]:
        return f"its OCR failed ({rec['error']})"
    if rec["n_words"] < text.min_words:
        return f"OCR found {plural(rec['n_words'], 'word')} on it (at least {text.min_words} are needed)"
    conf = rec["confidence"] or 0.0
    return f"its OCR text is unreliable (mean word confidence {conf:.0f}, below {text.min_confidence:.0f})"


def _remember_mode() -> None:
    st.session_state["search_mode_chosen"] = st.session_state["search_mode"]


def search_mode_choice(col: Collection, container=st) -> str:
    """The "Compare by" radio (by look, by text, both); returns the search mode.

    The default is :func:`docsort.queries.search.resolve_search_mode` of ``auto`` (both once some page has
    OCR text), until the user picks one; the pick is kept across views."""
    default = {v: k for k, v in SEARCH_MODES.items()}[auto_search_mode(str(col.root), browse.data_version(col))]
    st.session_state["search_mode"] = st.session_state.get("search_mode_chosen", default)
    container.radio("Compare by", list(SEARCH_MODES), key="search_mode", horizontal=True, on_change=_remember_mode,
                    help="By look: the pages' image features (InceptionV3). By text: the words read by OCR (pages "
                    "without text are left out). Both: look and text together (pages without text by look).")
    return SEARCH_MODES[st.session_state["search_mode"]]


# ---------------------------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------------------------


def view_add(col: Collection, counts: dict, last_run) -> None:
    st.header("Add scans")
    st.write(
        "Drag PDF, TIFF, PNG or JPEG scans here. They are copied into the collection "
        f"(`{col.root / uploads.UPLOADS_DIR}`), embedded and indexed; nothing leaves this computer. "
        f"Up to {MAX_UPLOAD_MB} MB per file."
    )
    gen = st.session_state.setdefault("uploader_gen", 0)
    files = st.file_uploader("Scans", type=UPLOAD_TYPES, accept_multiple_files=True, key=f"uploader-{gen}",
                             max_upload_size=MAX_UPLOAD_MB)
    recluster = st.checkbox(
        "Cluster the collection after adding", value=last_run is None, key=f"recluster-{gen}",
        help="Clustering runs UMAP + HDBSCAN over every page; on a large collection that takes minutes, "
        "so after the first time it is your call (pages added later are placed provisionally and show under 'Added since the last clustering').",
    )
    n = len(files or [])
    label = f"Add {n} file{'s' if n != 1 else ''} to the collection" if n else "Add files to the collection"
    if st.button(label, type="primary", disabled=not files, key="add-files"):
        add_files(col, files, recluster)
        st.rerun()
    show_ingest_result()
    show_cluster_message()
    result = st.session_state.get("ingest_result") or {}
    if result.get("pages_added"):
        left, right = st.columns([4, 1], vertical_alignment="center")
        left.caption("The text of the new pages has not been read yet: read it (OCR) to find them by their words "
                     "and compare them by text.")
        right.button("Read their text (OCR)", key="add-go-ocr", on_click=go, args=("Collection & export",))


def add_files(col: Collection, files, recluster: bool) -> None:
    bar = st.progress(0.0, text="Reading files...")
    t0 = time.perf_counter()
    messages: list[str] = []

    def on_progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Embedding pages: {done} of {total}")

    try:
        outcomes, report = uploads.ingest_uploads(
            col, [(f.name, f.getvalue()) for f in files], settings_for(col),
            extractor_factory=lambda: extractor_for(col),
            max_bytes=MAX_UPLOAD_MB * 1024 * 1024, on_progress=on_progress, lock_timeout_s=30, log=messages.append,
        )
    except (CollectionError, PopplerMissingError, PipelineError) as exc:
        st.session_state["ingest_result"] = {"error": str(exc)}
        return
    bar.progress(1.0, text="Done")
    st.session_state["ingest_result"] = {
        "outcomes": [(o.name, o.status, o.message, o.page_ids) for o in outcomes],
        "seconds": time.perf_counter() - t0,
        "pages_added": report.pages_added if report else 0,
        "weights_note": report.weights_note if report else "",
    }
    st.session_state["uploader_gen"] = st.session_state.get("uploader_gen", 0) + 1  # clears the uploader
    if recluster and report and report.documents_added:
        run_clustering(col, col.counts()["pages"])


def show_ingest_result() -> None:
    result = st.session_state.get("ingest_result")
    if not result:
        return
    if "error" in result:
        st.error(result["error"])
        return
    outcomes = result["outcomes"]
    added = sum(1 for o in outcomes if o[1] == "added")
    already = sum(1 for o in outcomes if o[1] == "already")
    bad = sum(1 for o in outcomes if o[1] in ("failed", "rejected"))
    st.subheader("Last upload")
    st.write(
        f"Added {added} document{'s' if added != 1 else ''} ({result['pages_added']} page{'s' if result['pages_added'] != 1 else ''}) "
        f"in {result['seconds']:.1f} s; "
        f"{already} already in the collection; {bad} failed."
    )
    for i, (name, status, message, page_ids) in enumerate(outcomes):
        box = {"added": st.success, "already": st.info}.get(status, st.error)
        left, right = st.columns([4, 1])
        with left:
            box(message)
        with right:
            if page_ids:
                st.button("Find similar", key=f"upload-sim-{i}", on_click=show_similar, args=(page_ids[0],),
                          help=f"Neighbours of the first page of {name}")


def view_clusters(col: Collection, root: str, version: tuple, table, counts: dict) -> None:
    if counts["pages"] == 0:
        st.header("Clusters")
        st.info("The collection is empty: add some scans first.")
        st.button("Add scans", on_click=go, args=("Add scans",), key="clusters-go-add")
        return
    opened = st.session_state.get("open_cluster")
    if opened is not None:
        view_cluster_detail(col, root, version, table, opened)
        return
    st.header("Clusters")
    show_cluster_message()
    edit_views.show_edit_message()
    unclustered = int(browse.added_since_clustering(table).sum())
    rows = clusters_summary(root, version)
    real = [r for r in rows if r.cluster >= 0]
    noise = next((r for r in rows if r.cluster < 0), None)
    run = col.last_cluster_run()
    if run is None:
        st.info(f"The collection ({plural(counts['pages'], 'page')}) has not been clustered yet.")
        recluster_button(col, counts["pages"], key="clusters-first-cluster", label="Cluster now")
        return
    st.write(
        f"**{plural(len(real), 'cluster')}**, {plural(noise.pages if noise else 0, 'noise page')}, "
        f"{plural(unclustered, 'page')} added since the last clustering "
        f"(last clustered {run['created_at']}). Each cluster shows the pages nearest its centre first."
    )
    c1, c2, c3 = st.columns(3)
    c1.button(f"Noise / outliers ({plural(noise.pages if noise else 0, 'page')})", key="open-noise", on_click=open_cluster,
              args=(browse.NOISE,), disabled=noise is None)
    c2.button(f"Added since the last clustering ({plural(unclustered, 'page')})", key="open-unclustered", on_click=open_cluster,
              args=(UNCLUSTERED,), disabled=unclustered == 0)
    with c3:
        recluster_button(col, counts["pages"], key="clusters-recluster")
        edit_views.undo_button(col, key="clusters")
    n_pages = max(1, -(-len(real) // CLUSTERS_PER_PAGE))
    page = st.pagination(n_pages, key="clusters-page") if n_pages > 1 else 1
    for r in real[(page - 1) * CLUSTERS_PER_PAGE : page * CLUSTERS_PER_PAGE]:
        with st.container(border=True):
            head, button = st.columns([5, 1])
            head.subheader(r.name)
            head.caption(f"cluster {r.cluster} · {plural(r.pages, 'page')} · {plural(r.documents, 'document')} · e.g. {', '.join(r.examples)}")
            button.button("Open", key=f"open-{r.cluster}", on_click=open_cluster, args=(r.cluster,), type="primary",
                          help=f"Page through all {r.pages} pages of {r.name}")
            reps = members(root, version, r.cluster).head(REPRESENTATIVES)
            cells = st.columns(REPRESENTATIVES)
            for cell, row in zip(cells, reps.itertuples(index=False)):
                jpeg = col.thumbnail(int(row.page_id))
                if jpeg:
                    cell.image(jpeg, caption=f"{row.file} · p.{row.page}", width="stretch")


def view_cluster_detail(col: Collection, root: str, version: tuple, table, opened) -> None:
    st.button("← All clusters", on_click=close_cluster, key="close-cluster")
    cid = None if opened == UNCLUSTERED else int(opened)
    if cid is None:
        st.header("Added since the last clustering")
        st.caption("Pages added after the last clustering run. Those the stored UMAP + HDBSCAN models could "
                   "place are shown in their nearest cluster as provisional members; re-cluster to settle them.")
    elif cid < 0:
        st.header("Noise / outliers")
        st.caption("Pages HDBSCAN did not put in any cluster: one-offs, or too few of their kind yet.")
    try:
        rows = members(root, version, cid)
    except CollectionError:
        st.warning(f"Cluster {cid} no longer exists (the collection was re-clustered).")
        close_cluster()
        return
    if cid is not None and cid >= 0:
        name = browse.cluster_label(cid, rows["cluster_name"].iloc[0])
        st.header(name)
        with st.form(f"rename-form-{cid}", border=False):
            left, right = st.columns([4, 1], vertical_alignment="bottom")
            new_name = left.text_input("Cluster name", value=name, key=f"rename-{cid}-{version}", max_chars=120)
            if right.form_submit_button("Rename"):
                try:
                    edits.rename(col, cid, new_name, who=edit_views.WHO, lock_timeout_s=edit_views.LOCK_TIMEOUT_S, log=lambda m: None)
                    st.session_state["rename_message"] = f"Cluster {cid} is now called {new_name.strip()!r}."
                    st.rerun()
                except CollectionError as exc:
                    st.error(str(exc))
        msg = st.session_state.pop("rename_message", None)
        if msg:
            st.success(msg)
        with st.form(f"label-cluster-form-{cid}", border=False):
            left, right = st.columns([4, 1], vertical_alignment="bottom")
            doc_type = left.text_input("Document type of every page in this cluster", key=f"label-cluster-{cid}",
                                       max_chars=classify.MAX_TYPE_LEN, placeholder="e.g. court filing",
                                       help="Labels every current page of the cluster; pages you labelled one by one keep their label.")
            if right.form_submit_button("Label cluster"):
                try:
                    res = classify.label_cluster(col, cid, doc_type, who="ui")
                except (ValueError, CollectionError) as exc:
                    _label_message("error", str(exc))
                else:
                    _label_message("success", f"Labelled {plural(res.labelled, 'page')} of {name} as {res.doc_type!r}"
                                   + (f"; {plural(res.kept, 'page')} kept their own label." if res.kept else "."))
                st.rerun()
    show_label_message()
    edit_views.show_edit_message()
    total = len(rows)
    if total == 0:
        st.info("No pages here.")
        return
    n_pages = max(1, -(-total // MEMBERS_PER_PAGE))
    page = st.pagination(n_pages, key=f"members-page-{opened}") if n_pages > 1 else 1
    chunk, _ = browse.page_slice(rows, page, MEMBERS_PER_PAGE)
    first = (page - 1) * MEMBERS_PER_PAGE
    order = "nearest the cluster centre first" if cid is not None and cid >= 0 else "in file order"
    st.caption(f"Pages {first + 1}–{first + len(chunk)} of {total}, {order}.")

    def caption(row) -> str:
        sim = "" if row.similarity != row.similarity else f" · {row.similarity:.2f}"  # NaN check
        return f"{row.file} · p.{row.page}{sim}"

    gallery = f"members-{opened}"
    picked = thumbnail_grid(col, chunk, key=gallery, caption=caption, selectable=True)
    clusters = clusters_summary(root, version)
    if picked:  # thumbnails ticked in the gallery: the same actions as a selection on the map
        selection_of_gallery(col, table, rows, chunk, picked, gallery, clusters, key=f"gallery-{opened}")
    label_form(col, chunk, key=f"members-{opened}")
    if cid is not None and cid >= 0:
        edit_views.cluster_edit_tools(col, cid, name, chunk, clusters, on_split=close_cluster)
    else:  # noise, or pages added since the last clustering: they can be moved into a cluster
        edit_views.move_form(col, chunk, clusters, key=f"members-{opened}")


def selection_of_gallery(col: Collection, table, members_rows, shown, picked: list[int], gallery: str, clusters,
                         key: str) -> None:
    """The pages ticked in a cluster's gallery and what can be done with them
    (:func:`docsort.faces.edit_views.selection_actions`), acting on every ticked page: those on the
    gallery page shown, those on its other pages, and those that have left the cluster since they
    were ticked (the caption says how many of each). A move or a label clears the selection, so
    that the next one does not act on these pages again; an export keeps it.

    Args:
        table: ``Collection.page_table()`` rows (``page_id``, ``document_id``, ``path``, ``page``, ...).
        members_rows: the cluster's pages now; shown: those on the gallery page drawn.
        picked: :func:`thumbnail_grid`'s selection; gallery: its key; key: widget key prefix.
    """
    known = table.set_index("page_id")
    present = [p for p in picked if p in known.index]  # pages deleted from the collection drop out
    members_now = {int(i) for i in members_rows["page_id"]}
    on_page = {int(i) for i in shown["page_id"]}
    elsewhere = sum(1 for p in present if p in members_now and p not in on_page)
    left = sum(1 for p in present if p not in members_now)
    gone = len(picked) - len(present)
    st.subheader(f"{plural(len(present), 'page')} selected")
    notes = []
    if elsewhere:
        notes.append(f"{elsewhere} on other pages of this gallery")
    if left:
        notes.append(f"{left} no longer in this cluster ({'it has' if left == 1 else 'they have'} been moved or re-clustered since "
                     f"{'it was' if left == 1 else 'they were'} ticked)")
    if gone:
        notes.append(f"{plural(gone, 'ticked page')} no longer in the collection, left out")
    left_col, right_col = st.columns([4, 1], vertical_alignment="center")
    if notes:
        left_col.caption("Of them: " + "; ".join(notes) + ".")
    right_col.button("Clear the selection", key=f"{key}-clear", on_click=clear_gallery_selection, args=(gallery,))
    if present:
        chosen = known.loc[present].reset_index()
        edit_views.selection_actions(col, chosen, clusters, key=key, on_done=lambda: clear_gallery_selection(gallery))


def view_map(col: Collection, table, root: str | None = None, version: tuple | None = None) -> None:
    """The cluster map (the stored 2-D UMAP coordinates), with lasso / box / point selection and
    actions on the selected pages (:func:`docsort.faces.edit_views.selection_actions`)."""
    st.header("Map")
    df = table[table["cluster"].notna()]
    if df.empty:
        st.info("Nothing to map yet: the map is the stored 2-D UMAP embedding of the last clustering run.")
        return
    root = str(col.root.resolve()) if root is None else root
    version = browse.data_version(col) if version is None else version
    fig = map_figure(root, version, WEBGL_ABOVE)  # cached: a selection reruns the script, not the figure
    render = "webgl" if len(df) > WEBGL_ABOVE else "svg"
    unclustered = int(browse.added_since_clustering(table).sum())
    st.caption(
        f"{len(df)} pages ({render.upper()}), coloured by cluster, noise in grey"
        + (f"; {plural(unclustered, 'newer page')} not on the map until you re-cluster" if unclustered else "")
        + ". Click a point or draw a lasso/box to select pages, then give them a cluster or a document type, or export them."
    )
    edit_views.show_edit_message()
    event = st.plotly_chart(fig, key="map", on_select="rerun", selection_mode=("points", "box", "lasso"))
    points = browse.selection_page_ids(event.selection.points if event else [])
    chosen = df.set_index("page_id").reindex(points).dropna(subset=["path"]).reset_index()  # on the map only
    if chosen.empty:
        return
    ids = chosen["page_id"].astype(int).tolist()
    chosen["file"] = [Path(p).name for p in chosen["path"]]
    chosen["group"] = [browse.cluster_label(c, n) for c, n in zip(chosen["cluster"], chosen["cluster_name"])]
    st.subheader(f"{len(ids)} page{'s' if len(ids) != 1 else ''} selected")
    edit_views.selection_actions(col, chosen, clusters_summary(root, version), key="map")
    thumbnail_grid(col, chosen.head(MEMBERS_PER_PAGE), key="map-sel",
                   caption=lambda r: f"{r.file} · p.{r.page} · {r.group}")
    if len(ids) > MEMBERS_PER_PAGE:
        st.dataframe(chosen[["page_id", "file", "page", "group"]], hide_index=True)


def view_similar(col: Collection, root: str, version: tuple, table, n_text: int) -> None:
    """Neighbours of a stored page or of an uploaded scan, by look, by text or both."""
    st.header("Similar documents")
    show_label_message()
    if table.empty:
        st.info("The collection is empty: add some scans first.")
        return
    left, right = st.columns([3, 2])
    source = left.radio("Search with", ["A page in the collection", "A scan from this computer (not stored)"],
                        key="query_source", horizontal=True)
    k = right.slider("Neighbours", min_value=1, max_value=50, value=8, key="k")
    mode = search_mode_choice(col, left)
    if mode != "visual" and n_text == 0:
        if mode == "text":
            st.info("No page has OCR text yet, so there is nothing to compare by text. Read the text of the pages in "
                    "**Collection & export** (or run `docsort ocr`), or compare by look.")
            st.button("Read the text of the pages (OCR)", key="similar-go-ocr", on_click=go, args=("Collection & export",))
            return
        st.caption("No page has OCR text yet, so **Both** compares by look only.")
        mode = "visual"
    if source == "A page in the collection":
        ids = table["page_id"].tolist()
        if st.session_state.get("query_page") not in ids:
            st.session_state["query_page"] = ids[0]
        if len(ids) <= 5000:
            labels = {int(r.page_id): f"{Path(r.path).name} · p.{r.page} (page {r.page_id})" for r in table.itertuples(index=False)}
            st.selectbox("Page", ids, key="query_page", format_func=lambda i: labels.get(i, str(i)))
        else:
            st.number_input("Page id", min_value=int(min(ids)), max_value=int(max(ids)), step=1, key="query_page")
        pid = int(st.session_state["query_page"])
        rec = col.pages([pid])[0]
        left, right = st.columns([1, 5])
        jpeg = col.thumbnail(pid)
        if jpeg:
            left.image(jpeg, width="stretch")
        right.markdown(f"**Query:** {Path(rec.path).name}, page {rec.page_no} — {browse.cluster_label(rec.cluster, rec.cluster_name)}")
        with right:
            ocr_text_expander(col, pid)
        try:
            result = page_neighbours(root, version, pid, k, mode, () if mode == "visual" else text_state(col, version, table))
        except CollectionError as exc:
            if mode != "text":
                raise
            st.info(f"{Path(rec.path).name}, page {rec.page_no} cannot be compared by text: {no_text_reason(col, pid)}. "
                    "Compare it by look or by both instead.")
            return
        show_results(col, result, query_page=pid, mode=mode)
        return
    up = st.file_uploader("A scan to search with (embedded, not stored)", type=UPLOAD_TYPES, key="query_upload",
                          max_upload_size=MAX_UPLOAD_MB)
    if up is None:
        st.caption("The scan is embedded with the collection's model (and its text read by OCR when comparing by text) "
                   "and compared with every stored page; it is not added.")
        return
    cache_key = (up.file_id, k, version, mode)
    cached = st.session_state.get("query_upload_result")
    if cached and cached[0] == cache_key:
        result = cached[1]
    else:
        name = sanitise_name(up.name)
        doing = f"Embedding {name}" + ("" if mode == "visual" else " and reading its text (OCR)")
        with tempfile.TemporaryDirectory(prefix="docsort-query-") as tmp, st.spinner(f"{doing}..."):
            path = Path(tmp) / name
            path.write_bytes(up.getvalue())
            try:
                index = current_index(col) if mode == "visual" else get_mode_index(root, mode, text_state(col, version, table))
                result = search_file(col, path, settings_for(col), k, extractor=extractor_for(col), index=index,
                                     mode=mode, log=lambda _m: None)
            except (PageError, CollectionError, PopplerMissingError, TesseractMissingError) as exc:
                st.error(f"{name}: {str(exc).replace(str(path), name)}")
                return
        st.session_state["query_upload_result"] = (cache_key, result)
    st.markdown(f"**Query:** {sanitise_name(up.name)} ({result.query_pages} page{'s' if result.query_pages != 1 else ''}, not stored)")
    show_results(col, result, mode=mode)


MODE_NOTES = {
    "visual": "Compared by look: the pages' image features (cosine similarity).",
    "text": "Compared by text: the words read by OCR (cosine similarity of the text vectors); pages without usable text are left out.",
    "fused": "Compared by look and text together (cosine similarity of the fused vectors); pages without usable text by look.",
}


def show_results(col: Collection, result, query_page: int | None = None, mode: str = "visual") -> None:
    """Neighbour pages (thumbnails, with Similar buttons, and a label form for a stored query page)
    and neighbour documents of a :class:`docsort.queries.search.SearchResult` found by ``mode``."""
    import pandas as pd

    st.subheader("Most similar pages")
    st.caption(MODE_NOTES[mode] + (f" {result.score_note[0].upper()}{result.score_note[1:]}." if result.score_note else ""))
    for q in range(1, min(result.query_pages, 10) + 1):
        hits = [h for h in result.pages if h.query_page == q]
        if result.query_pages > 1:
            st.markdown(f"**Query page {q}**")
        rows = [
            {"page_id": h.page_id, "file": Path(h.path).name, "page": h.page_no, "score": h.score,
             "cluster": browse.cluster_label(h.cluster, h.cluster_name)}
            for h in hits
        ]

        def caption(r) -> str:
            me = " (this page)" if r.page_id == query_page else ""
            return f"{r.score:.3f} · {r.file} · p.{r.page} · {r.cluster}{me}"

        thumbnail_grid(col, pd.DataFrame(rows), key=f"hits-{q}", caption=caption)
        if query_page is not None:
            label_form(col, pd.DataFrame(rows), key=f"hits-{q}")
    st.subheader("Most similar documents")
    st.table(pd.DataFrame(
        [{"rank": d.rank, "similarity": f"{d.score:.3f}", "file": Path(d.path).name, "best page": d.best_page_no,
          "pages matched": d.pages_matched, "cluster": browse.cluster_label(d.cluster, d.cluster_name)} for d in result.documents]
    ).set_index("rank"))


def view_text_search(col: Collection, counts: dict, n_text: int) -> None:
    """Full-text search over the pages' OCR text (:func:`docsort.queries.search.search_text`, SQLite FTS5,
    BM25): one row per page with its thumbnail, file, page, cluster and the matching words."""
    st.header("Search text")
    show_cluster_message()
    if counts["pages"] == 0:
        st.info("The collection is empty: add some scans first.")
        return
    if n_text == 0:
        st.info("No page has OCR text yet, so there is nothing to search. Read the text of the pages with Tesseract "
                "(the button below; about 1–2 s a page per CPU core), or run `docsort ocr` in a terminal.")
        ocr_section(col, counts["pages"], key="search-ocr")
        return
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    query = left.text_input(
        "Words in the text (OCR)", key="text_query", max_chars=500,
        placeholder='e.g.  Watson   "sheet music"   invoice OR receipt   tax*   letter NOT draft',
        help="Every word must occur, in any form (porter stemming: 'letters' finds 'letter'), in any case. "
        '"a phrase" in double quotes; OR; NOT; prefix* (SQLite FTS5 query syntax).',
    )
    k = right.number_input("Results", min_value=1, max_value=200, value=TEXT_HITS, step=10, key="text_k")
    show_ocr_result(col, counts["pages"], key="search-ocr")
    without = counts["pages"] - n_text
    if without:
        with st.expander(f"{plural(without, 'page')} {'has' if without == 1 else 'have'} no OCR text and cannot be found by their words"):
            ocr_section(col, counts["pages"], key="search-more-ocr", show_result=False)
    if not query.strip():
        st.caption(f"Searches the text of {plural(n_text, 'page')} read by OCR; the best matches first.")
        return
    try:
        hits = search_text(col, query, int(k))
    except ValueError as exc:
        st.error(f"{exc}. Check the double quotes and the operators (OR, NOT, AND in capitals); "
                 'a word with punctuation goes in double quotes ("e-mail").')
        return
    if not hits:
        st.info(f"No page's text matches {query!r} ({plural(n_text, 'page')} {'has' if n_text == 1 else 'have'} OCR text).")
        return
    st.subheader(f"{plural(len(hits), 'page')} whose text matches")
    st.caption("Best match first (BM25); the matching words in bold.")
    for h in hits:
        name = Path(h.path).name
        with st.container(border=True):
            thumb, body, button = st.columns([1, 5, 1], vertical_alignment="center")
            caption = f"{name} · p.{h.page_no} · {browse.cluster_label(h.cluster, h.cluster_name)}"
            jpeg = col.thumbnail(h.page_id)
            if jpeg:
                thumb.image(jpeg, caption=caption, width="stretch")
            body.markdown(f"**{h.rank}. {md_escape(name)}**, page {h.page_no} · {md_escape(browse.cluster_label(h.cluster, h.cluster_name))} "
                          f"· score {h.score:.2f}")
            body.markdown(snippet_markdown(h.snippet))
            button.button("Similar", key=f"text-hit-sim-{h.page_id}", on_click=show_similar, args=(h.page_id,),
                          help="Show the pages and documents most like this page")


def view_types(col: Collection, root: str, version: tuple, counts: dict) -> None:
    """Labels, the classifier with its cross-validated accuracy, predictions, unsure pages, and the
    pages to label next (:mod:`docsort.jobs.classify`)."""
    import pandas as pd

    st.header("Document types")
    show_label_message()
    show_flash("classify_message")
    if counts["pages"] == 0:
        st.info("The collection is empty: add some scans first.")
        return
    settings = settings_for(col).classifier
    table = types_table(root, version)
    label_n = classify.label_counts(col)
    clf = classify.load_classifier(col)
    current = classify.is_current(clf, col, settings)
    st.write(
        "Name a few pages or whole clusters (**Label** next to any gallery, or **Label cluster** in a cluster), "
        "then train: a logistic regression on the stored feature vectors sorts every other page into those types, "
        "with a probability, and sends pages that fit none to **unsure**."
    )
    cols = st.columns(4)
    cols[0].metric("Labelled pages", sum(label_n.values()))
    cols[1].metric("Types", len(label_n))
    cols[2].metric("CV accuracy", "-" if clf is None or clf.cv.accuracy is None else f"{clf.cv.accuracy:.2f}")
    cols[3].metric("Unsure pages", int((table["decision"] == "unsure").sum()))
    if clf is not None:
        st.caption(f"Classifier {clf.version}, trained {clf.trained_at} on {plural(clf.n_labels, 'labelled page')}. "
                   f"Cross-validated accuracy: {clf.cv.describe()}. Probabilities: {clf.calibration}.")
        if not current:
            st.warning("The labels changed since the classifier was trained: train again to use them.")
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    threshold = left.slider("Unsure below probability", 0.0, 1.0, float(settings.threshold), 0.05, key="type-threshold",
                            help="A page whose best type has a lower probability goes to 'unsure'.")
    if right.button("Train and classify", type="primary", key="train-classify", disabled=len(label_n) < 2,
                    help="Needs labelled pages of at least two types"):
        try:
            with st.spinner("Training and classifying..."):
                rep = classify.classify_collection(col, settings, threshold=threshold, lock_timeout_s=30)
        except (CollectionError, ValueError) as exc:
            st.session_state["classify_message"] = ("error", str(exc))
        else:
            st.session_state["classify_message"] = (
                "success",
                f"{'Trained' if rep.retrained else 'Used'} classifier {rep.classifier.version}; classified "
                f"{plural(rep.classified, 'page')}, {rep.unsure} unsure. Cross-validated accuracy: {rep.classifier.cv.describe()}.",
            )
        st.rerun()
    if len(label_n) < 2:
        st.info("Label pages of at least two document types to train a classifier.")
    rows = classify.type_summary(col, clf, table=table)
    if rows:
        st.subheader("Types")
        st.table(pd.DataFrame([
            {"type": r.doc_type, "pages": r.pages, "labelled": r.labelled, "predicted": r.predicted, "unsure": r.unsure,
             "CV accuracy": "-" if r.cv_accuracy is None else f"{r.cv_accuracy:.2f}"} for r in rows
        ]).set_index("type"))

    def caption(r) -> str:
        if r.predicted is None:
            return f"{r.file} · p.{r.page}"
        return f"{r.file} · p.{r.page} · {r.predicted} {r.type_probability:.2f}"

    unsure = table[table["decision"] == "unsure"].sort_values("type_probability")
    if len(unsure):
        st.subheader(f"Unsure ({plural(len(unsure), 'page')})")
        st.caption("Pages that fit no type well enough: their best guess and its probability.")
        thumbnail_grid(col, unsure.head(MEMBERS_PER_PAGE), key="unsure", caption=caption)
    suggested = classify.suggestions(col, n=THUMBS_PER_ROW * 2, table=table)
    st.subheader("Label these next")
    if suggested.empty:
        st.caption("Nothing to suggest: every page is labelled, or every cluster has a labelled page.")
    else:
        st.caption("The pages whose label would help most: the least confident predictions first (uncertainty sampling, "
                   "Lewis & Gale 1994), or before any classifier, the most typical page of each unlabelled cluster.")
        thumbnail_grid(col, suggested, key="suggest", caption=caption)
        label_form(col, suggested, key="suggest")
    predicted = table[table["decision"] == "predicted"]
    if len(predicted):
        with st.expander(f"Predictions ({plural(len(predicted), 'page')})"):
            st.dataframe(predicted[["page_id", "file", "page", "predicted", "type_probability", "model_version"]]
                         .rename(columns={"type_probability": "probability"}), hide_index=True)
    labelled = table[table["label"].notna()]
    if len(labelled):
        with st.expander(f"Labels ({plural(len(labelled), 'page')})"):
            st.dataframe(labelled[["page_id", "file", "page", "label", "label_source", "labelled_by", "labelled_at"]], hide_index=True)
            st.download_button("Download labels (CSV)", data=classify.labels_csv(col), file_name="docsort-labels.csv",
                               mime="text/csv", key="download-labels")
            names = {int(r.page_id): f"{r.file} · p.{r.page} · {r.label}" for r in labelled.itertuples(index=False)}
            with st.form("unlabel-form", border=False):
                gone = st.multiselect("Remove labels", list(names), format_func=lambda i: names.get(i, str(i)), key="unlabel-pages")
                if st.form_submit_button("Remove labels"):
                    n = classify.unlabel(col, gone)
                    _label_message("success", f"Removed {plural(n, 'label')}.")
                    st.rerun()
    st.subheader("Sort into folders by type")
    st.markdown("Copy (never move) each document into `OUT/<type>/` (pages that fit no type: `OUT/unsure/`), "
                f"with `{classify.DECISIONS_CSV}` listing each decision and its probability.")
    out = st.text_input("Output folder (on this computer)", value=str(col.root.resolve().parent / "docsort-by-type"), key="type-sort-out")
    if st.button("Copy documents into type folders", key="type-sort-go", disabled=len(label_n) < 2,
                 help="Classifies first (retraining if the labels changed), at the threshold above"):
        try:
            classify.classify_collection(col, settings, threshold=threshold, lock_timeout_s=30)
            report = classify.sort_by_type(col, out)
        except (ValueError, OSError, CollectionError) as exc:
            st.error(str(exc))
        else:
            st.success(f"Copied {report.copied} documents into {len(report.folders)} folders in {report.out_dir} "
                       f"({report.already_there} were already there).")
            st.table([{"folder": k, "documents": v} for k, v in sorted(report.folders.items())])


FAMILIES_PER_PAGE = 8


def view_duplicates(col: Collection, counts: dict) -> None:
    """Issue 18: near-duplicate families (the same page scanned again), each shown side by side.

    The button runs :func:`docsort.jobs.duplicates.find_duplicates` (pages added since the last
    run are the only ones rendered again); the families shown are the stored ones."""
    from docsort.jobs.duplicates import duplicates_stale, find_duplicates

    st.header("Near-duplicates")
    st.caption("The same page scanned more than once: at another resolution, slightly rotated, re-compressed or stamped. "
               "Pages are compared by their keypoints (one transform must explain most of both pages) and, where OCR "
               "read them, by their words; then by their ink, so that two pages of one template with other details "
               "(two months of one calendar) stay apart. Exact copies of a file are already stored once.")
    stale = duplicates_stale(col) if counts["pages"] else None
    if stale:
        st.info(stale.replace("run docsort duplicates", "press the button"))
    if st.button("Find near-duplicates", key="dups-go", disabled=counts["pages"] < 2):
        bar = st.progress(0.0, text="Reading pages...")
        try:
            report = find_duplicates(col, log=lambda m: None,
                                     on_progress=lambda d, t: bar.progress(d / max(t, 1), text=f"Page maps: {d} of {t}"))
        except (CollectionError, CollectionBusyError) as exc:
            st.error(str(exc))
            return
        bar.empty()
        st.success(f"{plural(report.families, 'family')} of near-duplicates, {plural(report.pages_in_families, 'page')} "
                   f"among {plural(report.pages, 'page')}."
                   + (f" {plural(report.kept_apart, 'look-alike pair')} kept apart: each page has content the other lacks."
                      if report.kept_apart else ""))
        if report.unmapped:
            st.warning(f"{plural(len(report.unmapped), 'page')} not compared: " + "; ".join(r for _, r in report.unmapped[:5]))
    fams = col.duplicate_families()
    if not len(fams):
        st.write("No near-duplicate families." if col.last_duplicate_run() else "Not searched yet.")
        return
    groups = [g for _, g in fams.groupby("family", sort=True)]
    n_pages = max(1, -(-len(groups) // FAMILIES_PER_PAGE))
    page = st.number_input("Page of families", 1, n_pages, 1, key="dups-page") if n_pages > 1 else 1
    for g in groups[(page - 1) * FAMILIES_PER_PAGE : page * FAMILIES_PER_PAGE]:
        st.subheader(f"Family {int(g['family'].iloc[0])}: {plural(len(g), 'page')}")
        cells = st.columns(max(len(g), 2))
        for cell, row in zip(cells, g.itertuples(index=False)):
            with cell:
                text = f"{Path(row.path).name} · p.{row.page} · similarity {row.similarity:.2f}"
                jpeg = col.thumbnail(int(row.page_id))
                if jpeg:
                    st.image(jpeg, caption=text, width="stretch")
                else:
                    st.caption(f"(no thumbnail) {text}")


def view_status(col: Collection, root: str, version: tuple, counts: dict, about: dict) -> None:
    st.header("Collection")
    st.caption(f"`{about['collection']}`")
    show_cluster_message()
    unclustered = counts["pages"] - counts["clustered_pages"]
    cols = st.columns(6)
    for cell, (label, value) in zip(cols, [("Documents", counts["documents"]), ("Pages", counts["pages"]),
                                           ("Clusters", counts["clusters"]), ("Noise pages", counts["noise_pages"]),
                                           ("Not yet clustered", unclustered), ("Failed files", counts["failures"])]):
        cell.metric(label, value)
    st.subheader("Model")
    if about.get("backbone"):
        st.write(
            f"Backbone **{about['backbone']}**, layer **{about['layer']}** {about.get('layer_output_shape')}, "
            f"pooling **{about['pooling']}** → {about['dim']}-d vectors. Weights: **{about['weights_source']}** "
            f"(sha256 `{(about.get('weights_sha256') or '')[:16]}`)."
        )
        if about.get("weights_source") == "bundled":
            st.warning(f"Offline bundled weights in use, not the official ImageNet ones: {about.get('weights_note')}")
        elif about.get("weights_note"):
            st.caption(about["weights_note"])
    else:
        st.write("No scans yet: the backbone and weights are fixed by the first ingest.")
    st.subheader("Clustering")
    run = col.last_cluster_run()
    if run:
        st.write(
            f"Last clustered **{run['created_at']}**: {run['n_pages']} pages → {run['n_clusters']} clusters, "
            f"{run['n_noise']} noise, in {run['seconds']:.1f} s."
        )
        with st.expander("UMAP and HDBSCAN parameters"):
            st.json(run["settings"])
    else:
        st.write("Not clustered yet.")
    recluster_button(col, counts["pages"], key="status-recluster")
    adapt_section(col, counts, about)
    st.subheader("Text (OCR)")
    if counts["pages"]:
        st.caption("Tesseract reads the words on each page: then pages can be found by their words (**Search text**), "
                   "compared by text, clustered by look and text together, and clusters get names from their words.")
        ocr_section(col, counts["pages"], key="status-ocr")
    else:
        st.write("No pages yet.")
    failures = col.failures()
    if failures:
        with st.expander(f"{len(failures)} files could not be ingested"):
            st.table([{"file": p, "reason": r, "when": w} for p, r, w in failures[:200]])
    st.subheader("Export")
    if counts["pages"]:
        st.download_button("Download cluster assignments (CSV)", data=assignments_csv(root, version),
                           file_name="docsort-clusters.csv", mime="text/csv", key="download-csv")
    st.markdown("**Sort into folders**: copy (never move) each document into `OUT/<cluster name>/`.")
    default_out = str(col.root.resolve().parent / "docsort-sorted")
    out = st.text_input("Output folder (on this computer)", value=default_out, key="sort-out")
    one = st.checkbox("One document per near-duplicate family", key="sort-one-per-family",
                      help="Leave out documents whose every page is a near-duplicate of a page already copied "
                           "(families from the Near-duplicates page)")
    if st.button("Copy documents into folders", key="sort-go", disabled=counts["documents"] == 0):
        bar = st.progress(0.0, text="Copying...")
        try:
            report = sorting.sort_into_folders(
                col, out, table=page_table(root, version),
                on_progress=lambda d, t: bar.progress(d / max(t, 1), text=f"Copying documents: {d} of {t}"),
                one_per_family=one,
            )
        except (ValueError, OSError) as exc:
            st.error(str(exc))
        else:
            st.success(
                f"Copied {report.copied} documents into {len(report.folders)} folders in {report.out_dir} "
                f"({report.already_there} were already there)."
                + (f" {plural(len(report.duplicates_skipped), 'document')} left out as near-duplicates of copied ones."
                   if report.duplicates_skipped else "")
            )
            st.table([{"folder": k, "documents": v} for k, v in sorted(report.folders.items())])
            if report.missing:
                st.warning(f"{len(report.missing)} documents were not copied: "
                           + "; ".join(f"{p}: {r}" for p, r in report.missing[:10]))


def _measures_row(name: str, m) -> dict:
    if m is None:
        return {"": name, "clusters": "-", "noise pages": "-", "neighbours in the same cluster": "-"}
    return {"": name, "clusters": str(m.clusters), "noise pages": f"{100 * m.noise_share:.0f} %",
            "neighbours in the same cluster": "-" if m.neighbour_agreement is None else f"{100 * m.neighbour_agreement:.0f} %"}


def adapt_section(col: Collection, counts: dict, about: dict) -> None:
    """Issue 14: "Adapt to this collection": ``docsort adapt`` + re-clustering in the background
    (:func:`docsort.jobs.adaptation_review.adapt_and_recluster`), with an estimate, a progress bar
    and the before/after of the clustering."""
    from docsort.jobs.adaptation_review import SECONDS_PER_PAGE_EPOCH, adapt_and_recluster, collection_busy, estimate_seconds

    st.subheader("Adapt to this collection")
    st.caption("Fine-tunes the network on these pages (no labels needed: two scan styles of the same page are taught to "
               "look alike), then re-embeds every page and re-clusters. The old vectors stay in use until it has finished.")
    if about.get("adapted_weights") not in (None, "no"):
        st.write(f"Adapted weights in use: {about['adapted_weights']}")
    msg = show_flash("adapt_message")
    if msg and len(msg) > 2:
        st.table(msg[2])
    n = counts["pages"]
    c1, c2 = st.columns(2)
    epochs = int(c1.number_input("Epochs", min_value=1, max_value=100, value=5, step=1, key="adapt-epochs"))
    minutes = float(c2.number_input("Time budget for training, minutes (0 = none)", min_value=0.0, value=0.0, step=1.0,
                                    key="adapt-minutes")) or None
    settings = settings_for(col)
    cl_s = _cluster_seconds(col, n)
    estimate = estimate_seconds(n, epochs, input_size=tuple(settings.features.input_size), minutes=minutes, cluster_seconds=cl_s)
    st.caption(f"Estimate: about {estimate / 60:.1f} min ({plural(n, 'page')} × {epochs} epochs × "
               f"{SECONDS_PER_PAGE_EPOCH:.2f} s per page-epoch at 299×299, then re-embedding and re-clustering).")
    if not st.button("Adapt to this collection", key="adapt-go", disabled=n < MIN_PAGES,
                     help=f"Needs at least {MIN_PAGES} pages"):
        return
    if collection_busy(col):
        st.session_state["adapt_message"] = (
            "error", "Another docsort job (ingest, OCR, clustering or adapt) is writing to this collection: "
                     "try again when it has finished.")
        st.rerun()
    bar = st.progress(0.0, text="Adapting the network...")
    r, error = _run_in_background(
        lambda: adapt_and_recluster(col, settings, epochs=epochs, minutes=minutes), "docsort-adapt", bar, estimate,
        lambda elapsed: f"Adapting the network, re-embedding and re-clustering... {elapsed:.0f} s of about {estimate:.0f} s")
    bar.progress(1.0, text="Adapting finished")
    if isinstance(error, (CollectionBusyError, ClusteringError, CollectionError, ValueError)):
        st.session_state["adapt_message"] = ("error", str(error))
    elif error is not None:
        raise error
    else:
        st.session_state["adapt_message"] = (
            "success", f"Adapted the network in {r.adapt.train_seconds:.0f} s ({r.adapt.epochs_run} epochs on "
                       f"{plural(r.adapt.pages_trained, 'page')}), re-embedded and re-clustered in {r.seconds:.0f} s in all.",
            [_measures_row("before", r.before), _measures_row("after", r.after)])
    st.rerun()


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What one script run of the app has read, for the page it shows: the collection handle, its
    directory, :func:`docsort.queries.browse.data_version`, the page table, the counts of
    :func:`docsort.queries.tables.info` (``documents``, ``pages``, ``clustered_pages``, ``clusters``,
    ``noise_pages``, ``failures``), all of ``info`` (``about``) and how many pages have OCR text."""

    col: Collection
    root: str
    version: tuple
    table: Any
    counts: dict
    about: dict
    n_text: int


_RUN: ContextVar[Run] = ContextVar("docsort_app_run")


def current_run() -> Run:
    """The :class:`Run` of this script run; for the page scripts in docsort/faces/views/.

    Raises:
        LookupError: called outside :func:`main` (a page script run on its own).
    """
    return _RUN.get()


def main() -> None:
    """One script run: read the collection, draw the sidebar and run the page chosen in
    ``st.navigation`` (:data:`PAGES`; the first visit opens Clusters, or Add scans while the
    collection is empty)."""
    st.set_page_config(page_title="docsort", page_icon=":card_index_dividers:", layout="wide")
    root_path = default_collection_path().expanduser().resolve()
    root = str(root_path)
    try:
        col = open_collection(root)
        about = info(col)
    except CollectionError as exc:
        st.error(f"Cannot open the collection {root}: {exc}")
        st.stop()
    counts = {k: about[k] for k in ("documents", "pages", "clustered_pages", "clusters", "noise_pages", "failures")}
    version = browse.data_version(col)
    n_text = text_counts(root, version)["pages_with_text"]
    table = page_table(root, version)

    st.session_state.setdefault("open_cluster", None)
    start = "Clusters" if counts["pages"] else "Add scans"
    navigation = st.navigation([page(title, default=title == start) for title in VIEWS])
    with st.sidebar:
        st.title("docsort")
        st.caption("Sort scanned documents by how they look.")
        st.divider()
        st.caption(f"Collection `{root}`")
        st.caption(f"{plural(counts['documents'], 'document')} · {plural(counts['pages'], 'page')} · {plural(counts['clusters'], 'cluster')}")
        if counts["pages"]:
            st.caption(f"OCR text: {n_text} of {plural(counts['pages'], 'page')}")
        if about.get("weights_source") == "bundled":
            st.caption(":orange[Offline bundled weights in use]")

    _RUN.set(Run(col, root, version, table, counts, about, n_text))
    navigation.run()


if __name__ == "__main__":
    # Streamlit runs this file as ``__main__`` (``docsort ui``; app.py at the top via runpy). The page
    # scripts import docsort.faces.app, so run that module's main: one copy of the views and their
    # widget callbacks per process, not one in this script's namespace and one in the module.
    from docsort.faces.app import main as _main

    _main()
