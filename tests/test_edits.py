"""Hand edits (issue 18): merge, split, move, rename, undo; kept across `docsort cluster` and a restart.

One small collection of real scans (five sample_docs files, 22 pages) is ingested once per module
with the session's feature extractor. Its clusters are then *stored by construction* (one cluster
per document type of labels.csv, through the store), so every test knows which pages are where on
any machine; re-clustering then runs real UMAP + HDBSCAN, whose outcome differs across CPUs, and the
tests assert only what the edits guarantee ("page P is in the cluster it was moved to", "A and B
pages share one cluster"), never one machine's clustering.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from docsort.jobs import edits
from docsort.store.storage import Collection, CollectionError

from .conftest import SAMPLE_DOCS, sample_labels

FILES = ["jbigkit/ccitt-1-3-4-5-7.tif", "leptonica/bois-2-5.pdf", "leptonica/book-pages.pdf",
         "leptonica/pageseg1.png", "leptonica/pageseg2.png", "leptonica/pageseg3.png", "leptonica/pageseg4.png",
         "leptonica/comap.063.jpg", "leptonica/comap.100.jpg", "leptonica/comap.110.jpg", "leptonica/comap.118.jpg"]
TYPES = ["fax_test_page", "sheet_music", "book_page", "newspaper", "map"]


def store_by_type(root) -> dict[str, int]:
    """Store a clustering of the collection at ``root`` with one cluster per document type (id =
    the type's index in TYPES); returns ``{type: cluster id}``."""
    truth = sample_labels()
    with Collection(root) as col:
        table = col.page_table()
        labels = np.array([TYPES.index(truth[(p, int(n))]) for p, n in zip(table["path"], table["page"])], np.int64)
        xy = np.stack([labels.astype(float), np.arange(len(labels), dtype=float)], axis=1)
        col.store_clustering(table["page_id"].to_numpy(np.int64), labels, np.ones(len(labels)), xy, {}, 0.0)
    return {t: i for i, t in enumerate(TYPES)}


@pytest.fixture(scope="module")
def small_collection(tmp_path_factory, settings, extractor):
    """22 real pages of five document types, clustered by construction (:func:`store_by_type`)."""
    from docsort.jobs.ingest import ingest

    root = tmp_path_factory.mktemp("edits") / "collection"
    with Collection(root, create=True) as col:
        report = ingest(col, [SAMPLE_DOCS / f for f in FILES], settings, extractor=extractor, progress=False, log=lambda m: None)
        assert report.failures == [], report.failures
    store_by_type(root)
    return root


@pytest.fixture
def col(small_collection, tmp_path):
    """A private, writable copy of the small collection, open."""
    dst = tmp_path / "collection"
    shutil.copytree(small_collection, dst, ignore=shutil.ignore_patterns(".lock"))
    with Collection(dst) as c:
        yield c


def _state(col) -> list[tuple]:
    """Every stored assignment and name, to compare exactly."""
    return (col.query("SELECT page_id, cluster, membership, probability FROM page_clusters ORDER BY page_id"),
            col.query("SELECT id, name, user_named FROM clusters ORDER BY id"))


def _cluster_of(col) -> dict[int, int]:
    ids, clusters, _ = col.cluster_assignments()
    return dict(zip(ids.tolist(), clusters.tolist()))


def _pages(col, cluster_id) -> list[int]:
    return [p for p, c in _cluster_of(col).items() if c == cluster_id]


def test_every_edit_and_undo_restores_exactly(col):
    t = {name: i for i, name in enumerate(TYPES)}
    start = _state(col)
    sheet, news = _pages(col, t["sheet_music"]), _pages(col, t["newspaper"])

    res = edits.merge(col, t["sheet_music"], t["newspaper"], name="Printed", who="alice", log=lambda m: None)
    where = _cluster_of(col)
    assert {where[p] for p in sheet + news} == {t["sheet_music"]} and res.n_pages == len(sheet) + len(news)
    assert col.cluster_names()[t["sheet_music"]] == ("Printed", True)
    after_merge = _state(col)

    book = _pages(col, t["book_page"])
    preview = edits.split(col, t["book_page"], into=2)
    assert len(preview.parts) == 2 and sorted(np.concatenate(preview.parts).tolist()) == sorted(book)
    assert _state(col) == after_merge  # a preview writes nothing
    kept = edits.keep_split(col, preview, who="bob", log=lambda m: None)
    where = _cluster_of(col)
    for cid, part in zip(kept.clusters, preview.parts):
        assert {where[int(p)] for p in part} == {cid}
    assert len(set(kept.clusters)) == 2 and t["book_page"] not in set(where.values())
    with pytest.raises(edits.EditError, match="no cluster"):  # the split cluster is gone: the preview is stale
        edits.keep_split(col, preview, log=lambda m: None)

    fax = _pages(col, t["fax_test_page"])
    moved = edits.move(col, fax[:2], new=True, name="Odd faxes", log=lambda m: None)
    assert {_cluster_of(col)[p] for p in fax[:2]} == {moved.clusters[0]}
    assert moved.clusters[0] > max(kept.clusters)  # fresh ids are never reused
    edits.move(col, [fax[2]], to=t["map"], log=lambda m: None)
    assert _cluster_of(col)[fax[2]] == t["map"]
    edits.rename(col, t["map"], "Maps", log=lambda m: None)
    assert col.cluster_names()[t["map"]] == ("Maps", True)

    log = edits.list_edits(col)
    assert [e["kind"] for e in log] == ["merge", "split", "move", "move", "rename"]
    assert [e["who"] for e in log[:2]] == ["alice", "bob"] and all(e["at"].endswith("+00:00") for e in log)

    # Undo, last first, back to exactly where it started (cluster, membership, probability, names).
    for expected in ["rename", "move", "move", "split", "merge"]:
        assert edits.undo(col, log=lambda m: None)["kind"] == expected
        if expected == "split":
            assert _state(col) == after_merge
    assert _state(col) == start
    assert all(e["undone"] for e in edits.list_edits(col))
    with pytest.raises(edits.EditError, match="nothing to undo"):
        edits.undo(col, log=lambda m: None)


def test_bad_edits_are_refused_and_write_nothing(col):
    before = _state(col)
    with pytest.raises(edits.EditError, match="itself"):
        edits.merge(col, 1, 1, log=lambda m: None)
    with pytest.raises(edits.EditError, match="no cluster 99"):
        edits.merge(col, 1, 99, log=lambda m: None)
    with pytest.raises(edits.EditError, match="noise"):
        edits.move(col, [1], to=-1, log=lambda m: None)
    with pytest.raises(CollectionError, match="page 9999 has no cluster"):
        edits.move(col, [9999], to=1, log=lambda m: None)
    with pytest.raises(edits.EditError, match="cannot be split into 9"):
        edits.split(col, 3, into=9)  # 4 newspaper pages
    assert _state(col) == before and edits.list_edits(col) == []


def _assert_edits_hold(col, t, g) -> None:
    """What the edits of test_edits_survive_reclustering_a_restart_and_another_seed guarantee."""
    where = _cluster_of(col)
    assert {where[p] for p in g["sheet"] + g["news"]} == {t["sheet_music"]}, "merged clusters stay one"
    assert {where[p] for p in g["odd"]} == {g["odd_cluster"]}, "moved pages stay where they were put"
    assert col.cluster_names()[g["odd_cluster"]] == ("Odd faxes", True)
    parts = [{where[int(p)] for p in part} for part in g["parts"]]
    assert all(len(p) == 1 for p in parts) and parts[0] != parts[1], "split parts stay together and apart"
    assert {where[p] for p in g["fax_rest"] + g["maps"]} == {t["map"]}, "the later merge holds"


def test_edits_survive_reclustering_a_restart_and_another_seed(col, settings, extractor):
    from docsort.jobs.cluster import cluster

    t = {name: i for i, name in enumerate(TYPES)}
    quiet = dict(log=lambda m: None)
    g = {"sheet": _pages(col, t["sheet_music"]), "news": _pages(col, t["newspaper"]), "maps": _pages(col, t["map"])}
    fax = _pages(col, t["fax_test_page"])
    edits.merge(col, t["sheet_music"], t["newspaper"], **quiet)
    g["odd"], g["fax_rest"] = fax[:1], fax[2:]
    g["odd_cluster"] = edits.move(col, g["odd"], new=True, name="Odd faxes", **quiet).clusters[0]
    preview = edits.split(col, t["book_page"], into=2)
    g["parts"] = preview.parts
    edits.keep_split(col, preview, **quiet)
    # A conflict by construction: a map page moved into the fax cluster, which a later merge sends
    # back into the map cluster; that move can no longer be honoured and must be reported.
    conflicted = edits.move(col, [g["maps"][0]], to=t["fax_test_page"], **quiet)
    edits.move(col, [fax[1]], to=t["map"], **quiet)  # superseded by the merge too, but to the same cluster: no conflict
    edits.merge(col, t["map"], t["fax_test_page"], **quiet)
    g["fax_rest"] = g["fax_rest"] + [fax[1]]
    # An undone edit is not applied, and said so.
    undone = edits.move(col, g["sheet"][:1], new=True, **quiet)
    edits.undo(col, **quiet)
    _assert_edits_hold(col, t, g)

    result = cluster(col, settings, extractor=extractor, progress=False, **quiet)
    _assert_edits_hold(col, t, g)
    report = result.params["edits"]
    assert report["edits"] == 6 and report["kept"] == 5
    assert [c for c in report["conflicts"] if c.startswith(f"edit {conflicted.edit_id} ")], report["conflicts"]
    assert len(report["conflicts"]) == 1, report["conflicts"]
    assert "follow the later edit" in report["conflicts"][0]
    assert any(n.startswith(f"edit {undone.edit_id} ") and "undone" in n for n in report["notes"])
    assert col.last_cluster_run()["settings"]["edits"] == report  # stored with the run

    root = col.root
    col.close()
    with Collection(root) as again:  # a restart
        _assert_edits_hold(again, t, g)
        other = settings.model_copy(update={"umap": settings.umap.model_copy(update={"random_state": 7})})
        cluster(again, other, extractor=extractor, progress=False, **quiet)
        _assert_edits_hold(again, t, g)


def test_new_pages_join_an_edited_cluster_through_their_automatic_cluster(col):
    """Rule 2 of docsort.jobs.edits, by construction on given arrays: an automatic cluster mostly
    pinned to one cluster brings its unpinned pages into it; one that is not, does not."""
    t = {name: i for i, name in enumerate(TYPES)}
    sheet, news = _pages(col, t["sheet_music"]), _pages(col, t["newspaper"])
    edits.merge(col, t["sheet_music"], t["newspaper"], log=lambda m: None)
    ids, _, _ = col.cluster_assignments()
    n = len(ids)
    pos = {p: i for i, p in enumerate(ids.tolist())}
    # Automatic clusters: 50 = every merged page but one, plus two pages no edit pinned (book
    # pages); 51 = the rest. 52 = one merged page with more unpinned pages than pinned.
    auto = np.full(n, 51, np.int64)
    book = _pages(col, t["book_page"])
    for p in sheet + news + book[:2]:
        auto[pos[p]] = 50
    auto[pos[news[-1]]] = 52
    for p in book[2:]:
        auto[pos[p]] = 52
    labels, membership, probs, label_map, report = edits.honour_edits(
        col, ids, auto, np.array(["member"] * n), np.full(n, 0.5, np.float32), {0: 50, 1: 51, 2: 52})
    assert labels[pos[book[0]]] == labels[pos[book[1]]] == t["sheet_music"]  # joined the merged cluster
    assert label_map[0] == t["sheet_music"] and label_map[2] == 52  # later pages placed into cluster 50 follow
    assert labels[pos[news[-1]]] == t["sheet_music"] and all(labels[pos[p]] == 52 for p in book[2:])
    assert report.joined_pages == 2 and report.pinned_pages == len(sheet + news) and report.conflicts == []
    assert probs[pos[sheet[0]]] == 1.0 and probs[pos[book[0]]] == np.float32(0.5)


def test_cli_edits(col):
    from typer.testing import CliRunner

    from docsort.faces.cli import app

    runner = CliRunner()
    root = str(col.root)
    t = {name: i for i, name in enumerate(TYPES)}
    fax = _pages(col, t["fax_test_page"])

    def run(*args, code=0):
        res = runner.invoke(app, [*args, "-c", root])
        assert res.exit_code == code, res.output
        return res.output

    assert "merged cluster 3 (4 pages) into cluster 1" in run("merge", "1", "3", "--name", "Printed", "--by", "carol")
    out = run("split", str(t["book_page"]), "--into", "2", "--yes")
    assert "split into 2 parts" in out and "edit 2: split cluster 2 into" in out
    out = run("move", str(fax[0]), str(fax[1]), "--new", "--name", "Odd")
    assert "moved 2 pages to new cluster" in out
    assert "moved 1 page to cluster 4" in run("move", str(fax[2]), "--to", "4")
    assert "cluster 4 is now 'Maps'" in run("rename", "4", "Maps")
    assert "who" in run("edits") and "carol" in run("edits")  # the table (wrapped to the terminal's width)
    log = json.loads(run("edits", "--json"))
    assert [(e["kind"], e["who"] == "carol") for e in log] == [
        ("merge", True), ("split", False), ("move", False), ("move", False), ("rename", False)]
    assert log[2]["text"].startswith("move 2 pages to new cluster") and log[4]["text"] == "rename cluster 4 to 'Maps'"
    assert "undid edit 5: rename cluster 4 to 'Maps'" in run("undo")
    assert [e["undone"] for e in json.loads(run("edits", "--json"))] == [False] * 4 + [True]
    # docsort cluster says which edits it kept (all four here) and that the undone one is not applied.
    out = run("cluster")
    assert "edits: 4 of 4 kept" in out and "0 conflicts" in out and "edit 5 (rename cluster 4 to 'Maps') was undone" in out, out
    assert {_cluster_of(col)[p] for p in fax[:2]} == {int(log[2]["payload"]["to"])}
    # Bad input: a clear message and exit code 2, nothing written.
    assert "either --to CLUSTER or --new" in run("move", str(fax[3]), code=2)
    assert "cannot merge cluster 1 with itself" in run("merge", "1", "1", code=2)
    # Split asks before keeping: answering no changes nothing.
    before = _state(col)
    res = runner.invoke(app, ["split", "4", "-c", root], input="n\n")
    assert res.exit_code == 0 and "not split" in res.output and _state(col) == before


def _selection_script(root: str, page_ids: list[int]) -> None:
    """An app page that shows the map-selection actions for ``page_ids`` (AppTest cannot draw a
    lasso on a Plotly chart; the map view hands its selection to the same function)."""
    from docsort.faces.edit_views import selection_actions, show_edit_message
    from docsort.queries.tables import cluster_table
    from docsort.store.storage import Collection

    col = Collection(root)
    table = col.page_table()
    show_edit_message()
    selection_actions(col, table[table["page_id"].isin(page_ids)], cluster_table(col))


def test_app_acts_on_a_selection_cluster_type_and_copy(col, tmp_path):
    from streamlit.testing.v1 import AppTest

    from docsort.jobs import classify

    fax = _pages(col, TYPES.index("fax_test_page"))
    at = AppTest.from_function(_selection_script, args=(str(col.root), fax[:2]), default_timeout=60).run()
    assert not at.exception, at.exception

    def submit(label):
        next(b for b in at.get("form_submit_button") if b.label == label).click().run()
        assert not at.exception, at.exception
        return [s.value for s in at.success] + [e.value for e in at.error]

    at.selectbox(key="map-move-to").set_value("new")
    at.text_input(key="map-move-name").set_value("Picked")
    said = submit("Move 2 pages")
    assert any(s.startswith("Moved 2 pages to new cluster") for s in said), said
    target = {c for p, c in _cluster_of(col).items() if p in fax[:2]}
    assert len(target) == 1 and col.cluster_names()[target.pop()] == ("Picked", True)
    assert edits.list_edits(col)[-1]["who"] == "ui"

    at.text_input(key="map-label-type").set_value("Fax")
    assert "Labelled 2 pages as 'Fax'." in submit("Label 2 pages")
    assert dict(zip(classify.labels(col)["page_id"], classify.labels(col)["type"])) == {fax[0]: "Fax", fax[1]: "Fax"}

    at.text_input(key="map-copy-dir").set_value(str(tmp_path / "out"))
    said = submit("Copy documents")
    assert any(s.startswith("Copied 1 document into") for s in said), said  # both pages are of one TIFF
    assert [p.name for p in (tmp_path / "out" / "selection").iterdir()] == ["ccitt-1-3-4-5-7.tif"]


def test_map_points_carry_their_page_id_as_1d_customdata():
    """Selections on the map come back with each point's customdata; a 2-D NumPy customdata goes
    to the browser without its shape (plotly.py 6 typed arrays) and the page id is lost, which a
    Chromium box selection showed (benchmarks/selection_benchmark.py). By construction: 1,500 points."""
    import pandas as pd

    from docsort.faces import plots

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"page_id": np.arange(100, 1600), "path": ["/x/a.png"] * 1500, "page": 2,
                          "cluster": pd.array(rng.integers(-1, 4, 1500), dtype="Int64"), "cluster_name": None,
                          "umap_x": rng.normal(size=1500), "umap_y": rng.normal(size=1500)})
    fig = plots.map_figure(table)
    assert all(np.asarray(t.customdata).ndim == 1 for t in fig.data)
    assert sorted(int(i) for t in fig.data for i in t.customdata) == list(range(100, 1600))
    assert set(fig.data[0].hovertext) == {"a.png · p.2"}


def test_app_cluster_view_merges_then_splits(col, monkeypatch):
    """The real app (app.py, st.navigation): open a cluster, merge another into it, preview a split
    and keep it; each through docsort.jobs.edits, recorded as made by ``ui``."""
    from streamlit.testing.v1 import AppTest

    from docsort.faces import edit_views

    from .conftest import REPO

    t = {name: i for i, name in enumerate(TYPES)}
    sheet, news = _pages(col, t["sheet_music"]), _pages(col, t["newspaper"])
    monkeypatch.setenv("DOCSORT_COLLECTION", str(col.root))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    at.button(key=f"open-{t['sheet_music']}").click().run()
    at.selectbox(key=f"merge-other-{t['sheet_music']}").set_value(t["newspaper"])
    next(b for b in at.get("form_submit_button") if b.label == "Merge").click().run()
    assert not at.exception, at.exception
    said = [s.value for s in at.success]
    assert f"Merged cluster {t['newspaper']} (4 pages) into cluster {t['sheet_music']} (4 pages)." in said, said
    assert {_cluster_of(col)[p] for p in sheet + news} == {t["sheet_music"]}

    next(b for b in at.get("form_submit_button") if b.label == "Preview split").click().run()
    assert not at.exception, at.exception
    assert "Keep split" in [b.label for b in at.button]
    assert sum(len(img.captions) for img in at.image) >= 8 + 2  # the gallery's 8 pages and each part's thumbnails
    at.button(key=f"split-keep-{t['sheet_music']}").click().run()
    assert not at.exception, at.exception
    assert [h.value for h in at.header] == ["Clusters"]  # the split cluster is gone: back to the list
    assert any(s.value.startswith(f"Split cluster {t['sheet_music']} into ") for s in at.success)
    where = _cluster_of(col)
    assert t["sheet_music"] not in where.values() and len({where[p] for p in sheet + news}) == 2
    assert [(e["kind"], e["who"]) for e in edits.list_edits(col)] == [("merge", "ui"), ("split", "ui")]

    # Tick two thumbnails of one part's gallery and move them, as a selection, to a new cluster: the
    # larger part (k-means may split the 8 pages unevenly on another CPU; the larger has >= 4).
    part = max({where[p] for p in sheet + news}, key=lambda c: sum(1 for v in where.values() if v == c))
    at.button(key=f"open-{part}").click().run()
    boxes = [c for c in at.checkbox if c.key.startswith(f"members-{part}-pick-")]
    assert len(boxes) == sum(1 for c in where.values() if c == part) >= 2  # one "Select" per thumbnail
    picked = [int(c.key.rsplit("-", 1)[1]) for c in boxes[:2]]
    for c in boxes[:2]:
        c.check()
    at.run()
    assert not at.exception, at.exception
    assert "2 pages selected" in [h.value for h in at.subheader]
    at.selectbox(key=f"gallery-{part}-move-to").set_value(edit_views.NEW_CLUSTER)
    next(b for b in at.get("form_submit_button") if b.label == "Move 2 pages").click().run()
    assert not at.exception, at.exception
    moved = _cluster_of(col)
    assert moved[picked[0]] == moved[picked[1]] not in set(where.values())
    assert [(e["kind"], e["who"]) for e in edits.list_edits(col)][-1] == ("move", "ui")


def test_app_gallery_selection_survives_its_pages_and_pages_that_leave_the_cluster(col, monkeypatch):
    """Pages ticked in a cluster's gallery stay selected on the gallery's other pages and after
    another session moved one of them out of the cluster; the label then acts on all of them (the
    message says how many), and clears the selection. Streamlit forgets a box a run does not draw,
    so before, the selection was only the ticks of the gallery page shown."""
    from streamlit.testing.v1 import AppTest

    from docsort.faces import app as face
    from docsort.jobs import classify

    from .conftest import REPO

    t = {name: i for i, name in enumerate(TYPES)}
    cid = max(t.values(), key=lambda c: len(_pages(col, c)))  # the largest cluster by construction
    members = _pages(col, cid)
    assert len(members) >= 4, "needs a cluster of at least 4 pages for two gallery pages of 2"
    monkeypatch.setattr(face, "MEMBERS_PER_PAGE", 2)
    monkeypatch.setenv("DOCSORT_COLLECTION", str(col.root))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    at.button(key=f"open-{cid}").click().run()

    def boxes():
        return [c for c in at.checkbox if c.key.startswith(f"members-{cid}-pick-")]

    assert len(boxes()) == 2  # the first gallery page
    first = int(boxes()[0].key.rsplit("-", 1)[1])
    boxes()[0].check()
    at.run()
    assert "1 page selected" in [h.value for h in at.subheader]
    at.session_state[f"members-page-{cid}"] = 2  # st.pagination: the gallery's second page
    at.run()
    assert not at.exception, at.exception
    shown = [int(c.key.rsplit("-", 1)[1]) for c in boxes()]
    assert first not in shown and len(shown) == 2
    boxes()[0].check()
    at.run()
    assert "2 pages selected" in [h.value for h in at.subheader], [h.value for h in at.subheader]
    assert any("1 on other pages of this gallery" in c.value for c in at.caption)

    # Another session moves the first ticked page to another cluster before this one acts.
    other = next(c for c in t.values() if c != cid)
    edits.move(col, [first], to=other, who="cli", log=lambda m: None)
    at.run()
    assert not at.exception, at.exception
    assert "2 pages selected" in [h.value for h in at.subheader]
    assert any("1 no longer in this cluster" in c.value for c in at.caption), [c.value for c in at.caption]
    at.text_input(key=f"gallery-{cid}-label-type").input("ticked page")
    next(b for b in at.get("form_submit_button") if b.label == "Label 2 pages").click().run()
    assert not at.exception, at.exception
    labelled = set(classify.labels(col).query("type == 'ticked page'")["page_id"].tolist())
    assert labelled == {first, shown[0]}
    assert "Labelled 2 pages as 'ticked page'." in [s.value for s in at.success]
    assert not any(h.value.endswith("selected") for h in at.subheader)  # the label cleared the selection
    assert not any(c.value for c in boxes())
