"""Labelling and the "Document types" view of the Streamlit app (app.py), with AppTest.

Like tests/test_app.py, each test runs the app in-process on its own copy of the session's sample
collection, so cached resources never leak between tests.
"""

from __future__ import annotations

import csv

import pytest

from docsort.queries import browse

from docsort.jobs import classify
from docsort.queries.tables import cluster_table
from docsort.store.storage import Collection

from .conftest import sample_labels
from .test_app import APP, _captions, _view, app  # noqa: F401  (app: the shared AppTest fixture)

def _submit(at, label):
    next(b for b in at.get("form_submit_button") if b.label == label).click().run()
    assert not at.exception, at.exception
    return at


def test_label_a_cluster_and_pages_of_its_gallery(app, collection_copy):
    at = app
    col = Collection(collection_copy)
    biggest = [r for r in cluster_table(col) if r.cluster >= 0][0]
    members = browse.cluster_pages(col, biggest.cluster)
    at.button(key=f"open-{biggest.cluster}").click().run()
    # Label two pages of the gallery by hand first: the cluster label keeps them.
    two = [int(p) for p in members["page_id"][:2]]
    at.multiselect(key=f"label-pages-members-{biggest.cluster}").set_value(two)
    at.text_input(key=f"label-type-members-{biggest.cluster}").set_value("deed")
    _submit(at, "Label")
    assert [s.value for s in at.success] == ["Labelled 2 pages as 'deed'."]
    at.text_input(key=f"label-cluster-{biggest.cluster}").set_value("Sheet music")
    _submit(at, "Label cluster")
    rest = biggest.pages - 2
    assert [s.value for s in at.success] == [f"Labelled {rest} pages of {biggest.name} as 'Sheet music'; 2 pages kept their own label."]
    got = classify.labels(col).set_index("page_id")
    assert len(got) == biggest.pages and set(got["who"]) == {"ui"}
    assert got.loc[two, "type"].tolist() == ["deed", "deed"] and set(got.loc[two, "source"]) == {"page"}
    others = [int(p) for p in members["page_id"][2:]]
    assert set(got.loc[others, "type"]) == {"Sheet music"} and set(got.loc[others, "source"]) == {"cluster"}
    # Captions show each page's label.
    shown = _captions(at)
    assert len(shown) == biggest.pages
    assert all(c.endswith(" · [deed]") for c in shown[:2]) and all(c.endswith(" · [Sheet music]") for c in shown[2:])
    # A bad type is an error message, not a crash.
    at.text_input(key=f"label-cluster-{biggest.cluster}").set_value("unsure")
    _submit(at, "Label cluster")
    assert at.error and "reserved" in at.error[0].value
    col.close()


def test_label_neighbours_from_the_similar_view(app, collection_copy):
    at = _view(app, "Similar documents")
    pid = int(at.session_state["query_page"])
    col = Collection(collection_copy)
    hits = [h.page_id for h in _hits(col, pid)]
    at.multiselect(key="label-pages-hits-1").set_value(hits[:3])
    at.text_input(key="label-type-hits-1").set_value("letter")
    _submit(at, "Label")
    assert [s.value for s in at.success] == ["Labelled 3 pages as 'letter'."]
    assert classify.labels(col)["page_id"].tolist() == sorted(hits[:3])
    assert sum(c.endswith(" · [letter]") for c in _captions(at)[1:]) == 3
    col.close()


def _hits(col, pid):
    from docsort.store.manifest import effective_settings
    from docsort.queries.search import search_page
    from docsort.config.settings import load_pipeline

    return search_page(col, pid, effective_settings(col, load_pipeline("default")), 8).pages


def test_document_types_view_trains_shows_accuracy_unsure_and_suggestions(collection_copy, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    col = Collection(collection_copy)
    truth = sample_labels()
    table = col.page_table()
    by_type: dict[str, list[int]] = {}
    for r in table.itertuples(index=False):
        by_type.setdefault(truth[(r.path, int(r.page))], []).append(int(r.page_id))
    # Before two types are labelled: no training, and the suggestions are one typical page per cluster.
    monkeypatch.setenv("DOCSORT_COLLECTION", str(collection_copy))
    at = AppTest.from_file(APP, default_timeout=180).run()
    at = _view(at, "Document types")
    assert at.button(key="train-classify").disabled
    assert "Label pages of at least two document types to train a classifier." in [i.value for i in at.info]
    cold = classify.suggestions(col, n=12)
    assert len(cold) == len({int(c) for c in table["cluster"].dropna() if c >= 0})
    assert _captions(at) == [f"{f} · p.{p}" for f, p in zip(cold["file"], cold["page"])]

    for t, ids in by_type.items():
        classify.label_pages(col, ids[:3], t, who="ui")
    at.run()
    assert not at.button(key="train-classify").disabled
    at.button(key="train-classify").click().run()
    assert not at.exception, at.exception
    clf = classify.load_classifier(col)
    assert clf is not None and classify.is_current(clf, col, classify.classifier_settings(col))
    assert any(s.value.startswith(f"Trained classifier {clf.version}") and "Cross-validated accuracy" in s.value for s in at.success)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Labelled pages"] == str(3 * len(by_type)) and metrics["Types"] == str(len(by_type))
    assert metrics["CV accuracy"] == f"{clf.cv.accuracy:.2f}"
    rows = classify.type_summary(col, clf)
    shown = at.table[0].value
    assert list(shown.index) == [r.doc_type for r in rows] and list(shown["unsure"]) == [r.unsure for r in rows]
    unsure = int((classify.type_table(col)["decision"] == "unsure").sum())
    assert metrics["Unsure pages"] == str(unsure)
    assert (f"Unsure ({unsure} page{'s' if unsure != 1 else ''})" in [s.value for s in at.subheader]) == (unsure > 0)
    # Suggestions: least confident first, shown after the unsure gallery.
    sugg = classify.suggestions(col, n=12)
    assert list(sugg["type_probability"]) == sorted(sugg["type_probability"])
    captions = _captions(at)
    expected = [f"{f} · p.{p} · {t} {pr:.2f}" for f, p, t, pr in zip(sugg["file"], sugg["page"], sugg["predicted"], sugg["type_probability"])]
    assert captions[len(captions) - len(expected):] == expected

    # Labelling a suggestion makes the classifier stale until trained again.
    first = int(sugg["page_id"][0])
    at.multiselect(key="label-pages-suggest").set_value([first])
    at.text_input(key="label-type-suggest").set_value(truth[(col.pages([first])[0].path, col.pages([first])[0].page_no)])
    _submit(at, "Label")
    assert any("The labels changed since the classifier was trained" in w.value for w in at.warning)

    # Sort by type: classifies (retrains), then copies.
    out = tmp_path / "by-type"
    at.text_input(key="type-sort-out").set_value(str(out)).run()
    at.button(key="type-sort-go").click().run()
    assert not at.exception, at.exception
    assert at.success[-1].value.startswith("Copied 30 documents into ")
    decisions = list(csv.DictReader((out / classify.DECISIONS_CSV).open()))
    assert len(decisions) == 30 and classify.is_current(classify.load_classifier(col), col, classify.classifier_settings(col))
    assert {p.parent.name for p in out.rglob("*") if p.is_file() and p.parent != out} == {r["folder"] for r in decisions}

    # Remove labels from the labels list.
    before = len(classify.labels(col))
    at.multiselect(key="unlabel-pages").set_value([first])
    _submit(at, "Remove labels")
    assert len(classify.labels(col)) == before - 1
    col.close()


def test_a_picked_page_that_leaves_the_cluster_before_the_submit_is_still_labelled(app, collection_copy):
    """Another session (or the CLI) moves a page out of the cluster between this session's render
    and its submit. Streamlit drops a picked value that is no longer an option, so the app keeps
    picked pages among the options, labels every page the user picked, and says how many had left
    the gallery."""
    from docsort.jobs import edits

    at = app
    col = Collection(collection_copy)
    biggest = [r for r in cluster_table(col) if r.cluster >= 0][0]
    other = [r for r in cluster_table(col) if r.cluster >= 0 and r.cluster != biggest.cluster][0]
    members = [int(p) for p in browse.cluster_pages(col, biggest.cluster)["page_id"]]
    at.button(key=f"open-{biggest.cluster}").click().run()
    picked = members[:2]
    at.multiselect(key=f"label-pages-members-{biggest.cluster}").set_value(picked)
    at.text_input(key=f"label-type-members-{biggest.cluster}").set_value("deed")
    edits.move(col, [picked[0]], to=other.cluster, who="cli", log=lambda m: None)
    assert picked[0] not in set(browse.cluster_pages(col, biggest.cluster)["page_id"].tolist())
    _submit(at, "Label")
    got = classify.labels(col).set_index("page_id")
    assert sorted(got.index.tolist()) == sorted(picked) and set(got["type"]) == {"deed"}
    assert [s.value for s in at.success] == ["Labelled 2 pages as 'deed' (1 of them has left this view since it was picked)."]
    # The same for the move form of the gallery: both picked pages are moved.
    at.multiselect(key=f"move-pages-{biggest.cluster}").set_value([picked[1], members[2]])
    edits.move(col, [members[2]], new=True, who="cli", log=lambda m: None)  # to a third cluster
    at.selectbox(key=f"move-to-{biggest.cluster}").set_value(other.cluster)
    _submit(at, "Move")
    assert {picked[1], members[2]} <= set(browse.cluster_pages(col, other.cluster)["page_id"].tolist())
    assert [s.value for s in at.success][0].endswith("(1 of them has left this view since it was picked).")
    col.close()
