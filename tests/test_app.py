"""The Streamlit app (app.py), view by view, with streamlit.testing.v1.AppTest.

Each test runs the app in-process against its own copy of the session's sample collection
(conftest.py), so st.cache_resource entries (keyed by the collection path) never leak between
tests.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from docsort.faces.app import PAGES
from docsort.queries import browse
from docsort.jobs import export
from docsort.queries.tables import cluster_table
from docsort.store.storage import Collection

from .conftest import REPO, SAMPLE_DOCS

APP = str(REPO / "app.py")


@pytest.fixture
def app(collection_with_noise, monkeypatch):
    """An AppTest of app.py on a private copy of the sample collection (with noise pages, made so
    on any machine: conftest.add_noise_pages), after its first run."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOCSORT_COLLECTION", str(collection_with_noise))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def _view(at, name):
    """Open the page titled ``name`` as its sidebar link does (``st.navigation``: AppTest selects a
    page by its script, docsort/faces/views/*.py, relative to app.py)."""
    script = next(f for title, f, _ in PAGES if title == name)
    at.switch_page(f"docsort/faces/views/{script}").run()
    assert not at.exception, at.exception
    return at


def _shown(at):
    """The title of the view on screen: its header (each view starts with one)."""
    return at.header[0].value


def _button(at, label):
    return next(b for b in at.button if b.label == label)


def _captions(at):
    return [c for img in at.image for c in img.captions]


def test_clusters_view_lists_clusters_with_representatives(app, collection_copy):
    at = app
    assert _shown(at) == "Clusters"
    assert [h.value for h in at.header] == ["Clusters"]
    col = Collection(collection_copy)
    rows = [r for r in cluster_table(col) if r.cluster >= 0]
    assert [s.value for s in at.subheader] == [r.name for r in rows]
    # Representatives: the pages nearest each cluster's centre, in that order.
    first = browse.representative_pages(col, rows[0].cluster, n=6)
    assert _captions(at)[:6] == [f"{f} · p.{p}" for f, p in zip(first["file"], first["page"])]
    noise = col.counts()["noise_pages"]
    col.close()
    assert any(b.label == f"Noise / outliers ({noise} page{'' if noise == 1 else 's'})" for b in at.button)
    assert sum(b.label == "Open" for b in at.button) == len(rows)


def test_open_cluster_pages_through_members_and_renames(app, collection_copy):
    at = app
    col = Collection(collection_copy)
    biggest = [r for r in cluster_table(col) if r.cluster >= 0][0]
    at.button(key=f"open-{biggest.cluster}").click().run()
    assert [h.value for h in at.header] == [biggest.name]
    assert f"Pages 1–{biggest.pages} of {biggest.pages}, nearest the cluster centre first." in [c.value for c in at.caption]
    members = browse.cluster_pages(col, biggest.cluster)
    shown = _captions(at)
    assert len(shown) == biggest.pages
    assert shown[0] == f"{members['file'][0]} · p.{members['page'][0]} · {members['similarity'][0]:.2f}"
    # Rename: persists in the collection and shows in the list.
    at.text_input(key=at.text_input[0].key).set_value("Sheet music")
    next(b for b in at.get("form_submit_button") if b.label == "Rename").click().run()
    assert not at.exception, at.exception
    assert any("is now called 'Sheet music'" in s.value for s in at.success)
    assert [h.value for h in at.header] == ["Sheet music"]
    col.close()
    col = Collection(collection_copy)
    assert (col.page_table().query("cluster == @biggest.cluster")["cluster_name"] == "Sheet music").all()
    col.close()
    at.button(key="close-cluster").click().run()
    assert "Sheet music" in [s.value for s in at.subheader]


def test_noise_view(app, collection_copy):
    at = app
    col = Collection(collection_copy)
    noise = browse.cluster_pages(col, browse.NOISE)
    col.close()
    assert len(noise) >= 2  # made so by the fixture
    at.button(key="open-noise").click().run()
    assert [h.value for h in at.header] == ["Noise / outliers"]
    assert _captions(at) == [f"{f} · p.{p}" for f, p in zip(noise["file"], noise["page"])]
    assert sum(b.label == "Similar" for b in at.button) == len(noise)


def test_map_view_plots_the_stored_embedding(app, collection_copy):
    at = _view(app, "Map")
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    assert {t["type"] for t in spec["data"]} == {"scatter"}  # 41 points: SVG; WebGL above 1000
    assert spec["data"][-1]["name"] == "noise"
    assert list(charts[0].proto.selection_mode)  # selection events are on
    assert "41 pages (SVG), coloured by cluster, noise in grey" in at.caption[0].value


def test_similar_from_a_gallery_page(app, collection_copy):
    at = app
    col = Collection(collection_copy)
    biggest = [r for r in cluster_table(col) if r.cluster >= 0][0]
    at.button(key=f"open-{biggest.cluster}").click().run()
    first = int(browse.cluster_pages(col, biggest.cluster)["page_id"][0])
    at.button(key=f"members-{biggest.cluster}-sim-{first}").click().run()
    assert not at.exception, at.exception
    assert _shown(at) == "Similar documents"
    assert int(at.session_state["query_page"]) == first
    assert [s.value for s in at.subheader] == ["Most similar pages", "Most similar documents"]
    shown = _captions(at)[1:]  # [0] is the query's thumbnail
    assert len(shown) == 8 and shown[0].startswith("1.000 ·") and shown[0].endswith("(this page)")
    docs = at.table[0].value
    assert len(docs) == 8 and list(docs.columns) == ["similarity", "file", "best page", "pages matched", "cluster"]
    # Fewer neighbours.
    at.slider(key="k").set_value(3).run()
    assert len(_captions(at)[1:]) == 3
    col.close()


def test_similar_by_uploading_a_scan_that_is_not_stored(app, collection_copy):
    at = _view(app, "Similar documents")
    at.radio(key="query_source").set_value("A scan from this computer (not stored)").run()
    from PIL import Image

    buf = io.BytesIO()
    Image.open(SAMPLE_DOCS / "leptonica" / "pageseg3.png").convert("L").save(buf, "JPEG", quality=80)
    at.file_uploader(key="query_upload").set_value(("../query scan.jpg", buf.getvalue(), "image/jpeg")).run()
    assert not at.exception, at.exception
    assert any(m.value.startswith("**Query:** query scan.jpg (1 page, not stored)") for m in at.markdown)
    shown = _captions(at)
    assert len(shown) == 8 and all(" · " in c for c in shown)
    col = Collection(collection_copy)
    assert col.counts()["documents"] == 30  # nothing was stored
    col.close()


def test_add_scans_ingests_uploads_and_reports_each_file(collection_copy, monkeypatch):
    from PIL import Image
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOCSORT_COLLECTION", str(collection_copy))
    at = AppTest.from_file(APP, default_timeout=180).run()
    at = _view(at, "Add scans")
    assert not at.checkbox[0].value  # clustered collection: re-cluster is the user's call
    buf = io.BytesIO()
    Image.open(SAMPLE_DOCS / "leptonica" / "pageseg1.png").convert("L").save(buf, "JPEG", quality=85)
    at.file_uploader[0].set_value([
        ("new/scan?.jpg", buf.getvalue(), "image/jpeg"),
        ("ortiz-02.png", (SAMPLE_DOCS / "leptonica" / "ortiz-02.png").read_bytes(), "image/png"),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "application/pdf"),
    ]).run()
    add = _button(at, "Add 3 files to the collection")
    add.click().run()
    assert not at.exception, at.exception
    assert [s.value for s in at.success] == ["scan_.jpg: added (1 page)"]
    assert [i.value for i in at.info] == ["ortiz-02.png: already in the collection"]
    assert len(at.error) == 1 and at.error[0].value.startswith("broken.pdf: could not be read")
    assert any("Added 1 document (1 page)" in m.value and "1 already in the collection; 1 failed" in m.value for m in at.markdown)
    col = Collection(collection_copy)
    assert col.counts()["documents"] == 31
    stored = [p for p in (collection_copy / "uploads").rglob("*") if p.is_file()]
    assert [p.name for p in stored] == ["scan_.jpg"]
    new_page = int(col.page_table()["page_id"].max())
    col.close()
    # The uploader was cleared, and the new page's neighbours are one click away.
    assert at.file_uploader[0].value in (None, [])
    at.button(key="upload-sim-0").click().run()
    assert _shown(at) == "Similar documents" and int(at.session_state["query_page"]) == new_page
    assert _captions(at)[1].endswith("(this page)")
    # New pages are listed as added since the last clustering (placed provisionally).
    at = _view(at, "Clusters")
    at.button(key="open-unclustered").click().run()
    assert [h.value for h in at.header] == ["Added since the last clustering"] and _captions(at) == ["scan_.jpg · p.1"]


@pytest.mark.slow
def test_empty_collection_starts_on_add_scans(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOCSORT_COLLECTION", str(tmp_path / "new"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert _shown(at) == "Add scans"
    assert at.checkbox[0].value  # the first upload clusters by default
    assert _button(at, "Add files to the collection").disabled
    at = _view(at, "Clusters")
    assert "The collection is empty: add some scans first." in [i.value for i in at.info]
    at = _view(at, "Collection & export")
    assert "No scans yet: the backbone and weights are fixed by the first ingest." in [m.value for m in at.markdown]
    assert at.button(key="status-recluster").disabled
    at = _view(at, "Map")
    at = _view(at, "Similar documents")


def test_status_view_export_and_sort_into_folders(app, collection_copy, tmp_path):
    at = _view(app, "Collection & export")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Documents": "30", "Pages": "41", "Clusters": metrics["Clusters"], "Noise pages": metrics["Noise pages"],
                       "Not yet clustered": "0", "Failed files": "0"}
    assert any(w.value.startswith("Offline bundled weights in use") for w in at.warning)
    assert any(m.value.startswith("Last clustered **") for m in at.markdown)
    assert at.get("download_button")[0].label == "Download cluster assignments (CSV)"
    col = Collection(collection_copy)
    rows = list(csv.DictReader(io.StringIO(export.assignments_csv(col).decode())))
    assert len(rows) == 41
    out = tmp_path / "sorted"
    at.text_input(key="sort-out").set_value(str(out)).run()
    at.button(key="sort-go").click().run()
    assert not at.exception, at.exception
    assert at.success[0].value.startswith(f"Copied 30 documents into ")
    copies = [p for p in out.rglob("*") if p.is_file()]
    assert len(copies) == 30
    folders = {p.parent.name for p in copies}
    assert folders == {r.name for r in cluster_table(col) if r.documents}
    assert all(Path(d.path).is_file() for d in col.pages())  # copied, never moved
    col.close()


def test_recluster_button(app, collection_copy):
    at = _view(app, "Collection & export")
    before = Collection(collection_copy).last_cluster_run()["id"]
    at.button(key="status-recluster").click().run()
    assert not at.exception, at.exception
    assert any(s.value.startswith("Clustered 41 pages into") for s in at.success)
    col = Collection(collection_copy)
    assert col.last_cluster_run()["id"] == before + 1
    col.close()


@pytest.mark.slow
def test_from_an_empty_collection_to_clusters_and_neighbours(tmp_path, monkeypatch):
    """The whole first-time journey in the app: upload scans, they are clustered, browse, search."""
    from streamlit.testing.v1 import AppTest

    root = tmp_path / "fresh"
    monkeypatch.setenv("DOCSORT_COLLECTION", str(root))
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert _shown(at) == "Add scans" and at.checkbox[0].value
    names = ["comap.063.jpg", "comap.100.jpg", "comap.110.jpg", "comap.118.jpg", "ortiz-02.png", "ortiz-03.png",
             "ortiz-04.png", "ortiz-05.png", "pageseg1.png", "pageseg2.png", "pageseg3.png", "pageseg4.png"]
    at.file_uploader[0].set_value([(n, (SAMPLE_DOCS / "leptonica" / n).read_bytes(), "application/octet-stream") for n in names]).run()
    _button(at, f"Add {len(names)} files to the collection").click().run()
    assert not at.exception, at.exception
    assert len(at.success) == len(names) + 1
    assert at.success[-1].value.startswith(f"Clustered {len(names)} pages into ")
    at = _view(at, "Clusters")
    assert any(m.value.startswith("**") and "cluster" in m.value for m in at.markdown)
    open_buttons = [b for b in at.button if b.label == "Open"]
    assert open_buttons
    open_buttons[0].click().run()
    assert "nearest the cluster centre first" in at.caption[0].value
    next(b for b in at.button if b.label == "Similar").click().run()
    assert _shown(at) == "Similar documents"
    assert _captions(at)[1].endswith("(this page)")
    assert len(at.table[0].value) == 8


def test_opening_and_browsing_never_reruns_umap_or_embeds(collection_with_noise, monkeypatch):
    """Reading views use the stored map, clusters and vectors: no UMAP, HDBSCAN or TensorFlow model."""
    import umap
    from streamlit.testing.v1 import AppTest

    import docsort.core.features
    import docsort.jobs.cluster
    import docsort.store.manifest

    def forbidden(*_a, **_k):
        raise AssertionError("browsing must not cluster or embed")

    monkeypatch.setattr(umap.UMAP, "fit_transform", forbidden)
    monkeypatch.setattr(docsort.jobs.cluster, "cluster", forbidden)
    monkeypatch.setattr(docsort.store.manifest, "make_extractor", forbidden)
    monkeypatch.setattr(docsort.core.features.FeatureExtractor, "__init__", forbidden)
    monkeypatch.setenv("DOCSORT_COLLECTION", str(collection_with_noise))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    at.button(key="open-noise").click().run()
    next(b for b in at.button if b.label == "Similar").click().run()
    for view in ("Map", "Collection & export", "Add scans", "Clusters"):
        _view(at, view)
    assert not at.exception, at.exception
