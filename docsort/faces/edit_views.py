"""The app's hand-edit widgets (issue 18): merge, split, move and undo in the cluster view, and the
actions on a map selection (give a cluster, give a document type, export).

Apart from :mod:`docsort.faces.app` so that its views (whichever page layout they use) only call
these. Every write goes through a job: :mod:`docsort.jobs.edits` (who is recorded as ``ui``),
:func:`docsort.jobs.classify.label_pages`, :func:`docsort.jobs.sort.sort_into_folders`. A finished
action leaves its message in ``st.session_state["edit_message"]`` and reruns the script;
:func:`show_edit_message` shows it once.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from docsort.core.names import sanitise_name
from docsort.faces.flash import flash, show_flash
from docsort.jobs import classify, edits, export
from docsort.jobs import sort as sorting
from docsort.store.storage import Collection, CollectionError

__all__ = ["NEW_CLUSTER", "WHO", "cluster_edit_tools", "move_form", "selection_actions", "show_edit_message", "undo_button"]

#: Recorded as the author of edits made in the app (as labels are).
WHO = "ui"
#: The target choice that moves pages to a fresh cluster.
NEW_CLUSTER = "new"
#: Seconds an edit waits for another writer (a re-cluster, an ingest) before saying the collection is busy.
LOCK_TIMEOUT_S = 60.0
#: Thumbnails shown per part of a split preview.
PREVIEW_THUMBS = 6


def _message(kind: str, text: str) -> None:
    flash("edit_message", kind, text)


def show_edit_message() -> None:
    """Show (once) what the last edit action did."""
    show_flash("edit_message")


def _do(action, done: str | None = None, note: str = "", on_done=None) -> None:
    """Run an edit action; its result (or error) becomes the next run's message (``note`` added
    before its full stop); ``on_done()`` is called when it succeeded; then rerun."""
    try:
        res = action()
    except (CollectionError, ValueError, OSError) as exc:
        _message("error", str(exc))
    else:
        text = done.removesuffix(".") if done else res.message[0].upper() + res.message[1:]
        _message("success", text + note + ".")
        if on_done is not None:
            on_done()
    st.rerun()


def _targets(clusters, exclude: int | None = None) -> dict:
    """``{choice: label}`` of the clusters pages can be moved to, plus :data:`NEW_CLUSTER`."""
    out = {int(r.cluster): f"{r.name} ({r.pages} pages)" for r in clusters if r.cluster >= 0 and r.cluster != exclude}
    return {NEW_CLUSTER: "A new cluster", **out}


def undo_button(col: Collection, key: str) -> None:
    """"Undo last edit" with what it would undo; disabled when there is nothing to undo."""
    log = [e for e in edits.list_edits(col) if not e["undone"]]
    last = log[-1] if log else None
    help_text = f"Undo edit {last['id']}: {last['text']} (by {last['who']}, {last['at']})" if last else "No edit to undo"
    if st.button("Undo last edit", key=f"undo-{key}", disabled=last is None, help=help_text):
        _do(lambda: edits.undo(col, lock_timeout_s=LOCK_TIMEOUT_S, log=lambda m: None),
            done=f"Undid edit {last['id']}: {last['text']}." if last else None)


def cluster_edit_tools(col: Collection, cid: int, name: str, pages, clusters, on_split=None) -> None:
    """The cluster view's edit tools for cluster ``cid``: merge another cluster into it, split it
    (preview, then keep or discard), move some of the pages shown to another or a new cluster, undo.

    Args:
        col: the open collection.
        cid: the cluster shown (>= 0); name: its shown name.
        pages: rows of the pages shown (``page_id``, ``file``, ``page``), the ones that can be moved.
        clusters: the cluster summary (:func:`docsort.queries.tables.cluster_table` rows).
        on_split: called once a split is kept (the cluster ``cid`` is gone then), e.g. to close its view.
    """
    others = {int(r.cluster): f"{r.name} ({r.pages} pages)" for r in clusters if r.cluster >= 0 and r.cluster != cid}
    size = next((r.pages for r in clusters if r.cluster == cid), 0)
    with st.expander(f"Fix {name}: merge, split, move pages", expanded=f"split-preview-{cid}" in st.session_state):
        merge_col, split_col = st.columns(2)
        with merge_col.form(f"merge-form-{cid}", border=True):
            other = st.selectbox("Merge into this cluster", list(others), format_func=lambda c: others.get(c, str(c)),
                                 key=f"merge-other-{cid}", index=None, placeholder="Pick a cluster")
            new_name = st.text_input("Name of the merged cluster (optional)", key=f"merge-name-{cid}", max_chars=120)
            if st.form_submit_button("Merge", disabled=not others):
                if other is None:
                    _message("error", "Pick the cluster to merge into this one.")
                    st.rerun()
                _do(lambda: edits.merge(col, cid, int(other), name=new_name or None, who=WHO, lock_timeout_s=LOCK_TIMEOUT_S,
                                        log=lambda m: None))
        with split_col.form(f"split-form-{cid}", border=True):
            parts = st.number_input("Split into parts", min_value=2, max_value=max(2, min(8, size)), value=2, step=1,
                                    key=f"split-into-{cid}")
            if st.form_submit_button("Preview split", disabled=size < 2,
                                     help="k-means on the pages' vectors; nothing changes until you keep it"):
                try:
                    st.session_state[f"split-preview-{cid}"] = edits.split(col, cid, into=int(parts))
                except CollectionError as exc:
                    _message("error", str(exc))
                st.rerun()
        preview = st.session_state.get(f"split-preview-{cid}")
        if preview is not None:
            _split_preview(col, cid, preview, on_split)
        move_form(col, pages, clusters, key=str(cid), exclude=cid)
        undo_button(col, key=f"cluster-{cid}")


def page_picker(container, label: str, names: dict[int, str], key: str) -> tuple[list[int], int]:
    """A multiselect of the pages shown next to it (``names``: page id -> caption) that keeps a
    picked page picked when it has left the view before the form is submitted (another session,
    or the CLI, re-clustered or moved it): Streamlit drops a selected value that is no longer
    among the options, so the picked pages stay options (with the caption they had).

    Returns:
        ``(chosen page ids, how many of them are no longer shown here)``.
    """
    seen = st.session_state.setdefault(f"{key}:captions", {})
    seen.update(names)
    kept = [int(i) for i in st.session_state.get(key) or [] if int(i) not in names and int(i) in seen]
    options = list(names) + kept
    chosen = container.multiselect(label, options, format_func=lambda i: names.get(i) or f"{seen.get(i, i)} (left this view)",
                                   key=key, placeholder="Pick pages shown here")
    return [int(i) for i in chosen], sum(1 for i in chosen if int(i) not in names)


def left_note(n_left: int) -> str:
    """`` (K of them has/have left this view since ...)``, or "" for 0: said after an action on
    picked pages, so that the user knows pages no longer shown were acted on too."""
    if not n_left:
        return ""
    return f" ({n_left} of them {'has' if n_left == 1 else 'have'} left this view since {'it was' if n_left == 1 else 'they were'} picked)"


def move_form(col: Collection, pages, clusters, key: str, exclude: int | None = None) -> None:
    """A form next to a gallery: pick some of its pages (thumbnails shown, ``pages`` rows with
    ``page_id``, ``file``, ``page``) and move them to another cluster or a new one
    (:func:`docsort.jobs.edits.move`; kept across re-clustering).

    Args:
        exclude: the cluster shown (not offered as a target).
    """
    names = {int(r.page_id): f"{r.file} · p.{r.page}" for r in (pages.itertuples(index=False) if hasattr(pages, "itertuples") else pages)}
    if not names:
        return
    targets = _targets(clusters, exclude=exclude)
    with st.form(f"move-form-{key}", border=True):
        left, mid, right = st.columns([3, 2, 2], vertical_alignment="bottom")
        chosen, n_left = page_picker(left, "Move pages", names, key=f"move-pages-{key}")
        target = mid.selectbox("to", list(targets), format_func=lambda c: targets[c], key=f"move-to-{key}")
        new_name = right.text_input("named (optional)", key=f"move-name-{key}", max_chars=120)
        if st.form_submit_button("Move"):
            _move(col, chosen, target, new_name, note=left_note(n_left))


def _split_preview(col: Collection, cid: int, preview, on_split=None) -> None:
    st.markdown(f"**Split preview** ({preview.method}): {len(preview.parts)} parts")
    for i, part in enumerate(preview.parts, 1):
        st.caption(f"Part {i}: {len(part)} page{'s' if len(part) != 1 else ''}")
        cells = st.columns(PREVIEW_THUMBS)
        for cell, pid in zip(cells, part[:PREVIEW_THUMBS].tolist()):
            jpeg = col.thumbnail(int(pid))
            if jpeg:
                cell.image(jpeg, width="stretch")
    keep, discard = st.columns(2)
    if keep.button("Keep split", key=f"split-keep-{cid}", type="primary"):
        st.session_state.pop(f"split-preview-{cid}", None)
        if on_split is not None:
            on_split()
        _do(lambda: edits.keep_split(col, preview, who=WHO, lock_timeout_s=LOCK_TIMEOUT_S, log=lambda m: None))
    if discard.button("Discard", key=f"split-discard-{cid}"):
        st.session_state.pop(f"split-preview-{cid}", None)
        st.rerun()


def _move(col: Collection, page_ids, target, name: str | None, note: str = "", on_done=None) -> None:
    if not page_ids:
        _message("error", "Pick the pages to move.")
        st.rerun()
    new = target == NEW_CLUSTER
    _do(lambda: edits.move(col, page_ids, to=None if new else int(target), new=new, name=name or None, who=WHO,
                           lock_timeout_s=LOCK_TIMEOUT_S, log=lambda m: None), note=note, on_done=on_done)


def selection_actions(col: Collection, selected, clusters, key: str = "map", on_done=None) -> None:
    """What can be done with the pages selected on the map: give them a cluster (a move, kept
    across re-clustering), a document type (the labels the classifier trains on), or export them
    (a CSV of their rows, or a copy of their documents into a folder).

    Args:
        col: the open collection.
        selected: rows of ``Collection.page_table()`` for the selected pages (``page_id``,
            ``document_id``; in selection order).
        clusters: the cluster summary (:func:`docsort.queries.tables.cluster_table` rows).
        key: widget key prefix.
        on_done: called after a move or a label succeeded (before the rerun), e.g. to clear the
            selection those pages came from.
    """
    ids = [int(i) for i in selected["page_id"]]
    n = len(ids)
    give, label, out = st.tabs(["Give a cluster", "Give a document type", "Export"])
    with give, st.form(f"{key}-move-form", border=False):
        targets = _targets(clusters)
        left, right = st.columns(2)
        target = left.selectbox("Move the selected pages to", list(targets), format_func=lambda c: targets[c], key=f"{key}-move-to")
        name = right.text_input("named (optional)", key=f"{key}-move-name", max_chars=120)
        if st.form_submit_button(f"Move {n} page{'s' if n != 1 else ''}"):
            _move(col, ids, target, name, on_done=on_done)
    with label, st.form(f"{key}-label-form", border=False):
        known = list(classify.label_counts(col))
        doc_type = st.text_input("Document type", key=f"{key}-label-type", max_chars=classify.MAX_TYPE_LEN,
                                 placeholder=", ".join(known[:3]) or "e.g. invoice", help="Existing types: " + (", ".join(known) or "none yet"))
        if st.form_submit_button(f"Label {n} page{'s' if n != 1 else ''}"):
            try:
                done = classify.label_pages(col, ids, doc_type, who=WHO)
            except (ValueError, CollectionError) as exc:
                _message("error", str(exc))
            else:
                _message("success", f"Labelled {done} page{'s' if done != 1 else ''} as "
                                    f"{classify.normalise_type(doc_type, classify.label_counts(col))!r}.")
                if on_done is not None:
                    on_done()
            st.rerun()
    with out:
        # Deferred (a callable): the CSV is made when the button is clicked, not on every rerun.
        st.download_button("Download the selected pages (CSV)", lambda: export.assignments_csv(col, page_ids=ids),
                           file_name="selected-pages.csv", mime="text/csv", key=f"{key}-csv")
        with st.form(f"{key}-copy-form", border=False):
            left, right = st.columns(2)
            folder = left.text_input("Copy their documents into the folder", key=f"{key}-copy-dir", placeholder="/path/to/folder")
            sub = right.text_input("in a subfolder named", value="selection", key=f"{key}-copy-sub", max_chars=120)
            if st.form_submit_button("Copy documents"):
                docs = sorted({int(d) for d in selected["document_id"]})
                sub_name = sanitise_name(sub or "selection", fallback="selection")
                try:
                    if not folder.strip():
                        raise ValueError("give the folder to copy the documents into")
                    rep = sorting.sort_into_folders(col, Path(folder.strip()), folder_of={d: sub_name for d in docs})
                except (ValueError, OSError) as exc:
                    _message("error", str(exc))
                else:
                    _message("success", f"Copied {rep.copied} document{'s' if rep.copied != 1 else ''} into "
                                        f"{rep.out_dir / sub_name} ({rep.already_there} already there"
                                        + (f", {len(rep.missing)} missing" if rep.missing else "") + ").")
                st.rerun()
