"""docsort.queries.browse: galleries, paging, uploads, CSV export and sorting into folders."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from docsort.queries import browse
from docsort.core.names import sanitise_name
from docsort.faces import plots
from docsort.jobs import export, sort as sorting, uploads
from docsort.store.storage import Collection, CollectionError

from .conftest import SAMPLE_DOCS


def _jpeg_of(path: Path, quality: int = 83) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(path).convert("L").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.pdf", "evil.pdf"),
        ("..", "upload"),
        ("", "upload"),
        ("/", "upload"),
        (" .hidden.png", "hidden.png"),
        ("a\x00b\nc.jpg", "a_b_c.jpg"),
        ("invoice:2024?.jpg", "invoice_2024_.jpg"),
        ("con.pdf", "_con.pdf"),
    ],
)
def test_sanitise_name(name, expected):
    assert sanitise_name(name) == expected


def test_sanitise_name_caps_length_and_keeps_extension():
    out = sanitise_name("x" * 500 + ".tiff", max_len=40)
    assert len(out) == 40 and out.endswith(".tiff")


def test_save_upload_stays_under_the_collection(tmp_path):
    data = b"%PDF-1.4 not really"
    path = uploads.save_upload(tmp_path, "../../../outside.pdf", data)
    sha = hashlib.sha256(data).hexdigest()
    assert path == (tmp_path / "uploads" / sha[:16] / "outside.pdf").resolve()
    assert path.read_bytes() == data
    assert uploads.save_upload(tmp_path, "../../../outside.pdf", data) == path  # same bytes: reused
    with pytest.raises(ValueError, match="empty"):
        uploads.save_upload(tmp_path, "a.pdf", b"")
    with pytest.raises(ValueError, match="limit"):
        uploads.save_upload(tmp_path, "a.pdf", b"x" * 11, max_bytes=10)
    with pytest.raises(ValueError, match="PDF, TIFF, PNG or JPEG"):
        uploads.save_upload(tmp_path, "run.sh", b"echo hi")
    assert not (tmp_path.parent / "outside.pdf").exists()


def test_cluster_pages_are_ordered_by_similarity_to_the_centre(sample_collection):
    col = Collection(sample_collection)
    table = col.page_table()
    cid = int(table.loc[table["cluster"] >= 0, "cluster"].value_counts().index[0])
    rows = browse.cluster_pages(col, cid, table=table)
    assert len(rows) == int((table["cluster"] == cid).sum())
    ids = rows["page_id"].to_numpy()
    _, vecs = col.vectors(ids)
    centre = vecs.mean(axis=0)
    centre /= np.linalg.norm(centre)
    np.testing.assert_allclose(rows["similarity"].to_numpy(), vecs @ centre, rtol=1e-5, atol=1e-6)
    assert (np.diff(rows["similarity"].to_numpy()) <= 1e-12).all()
    reps = browse.representative_pages(col, cid, n=3, table=table)
    assert reps["page_id"].tolist() == ids[:3].tolist()
    noise = browse.cluster_pages(col, browse.NOISE, table=table)
    assert noise["similarity"].isna().all() and noise["page_id"].is_monotonic_increasing
    assert browse.cluster_pages(col, None, table=table).empty  # everything is clustered
    with pytest.raises(CollectionError):
        browse.cluster_pages(col, 999, table=table)
    with pytest.raises(ValueError):
        browse.representative_pages(col, cid, n=0)
    col.close()


def test_page_slice():
    import pandas as pd

    frame = pd.DataFrame({"x": range(50)})
    rows, n = browse.page_slice(frame, 3, 24)
    assert n == 3 and rows["x"].tolist() == [48, 49]
    rows, n = browse.page_slice(frame, 99, 24)  # clamped to the last page
    assert rows["x"].tolist() == [48, 49]
    rows, n = browse.page_slice(frame.iloc[:0], 1, 24)
    assert n == 1 and rows.empty
    with pytest.raises(ValueError):
        browse.page_slice(frame, 1, 0)


def test_document_assignments_and_csv(sample_collection):
    col = Collection(sample_collection)
    docs = browse.document_assignments(col)
    assert len(docs) == col.counts()["documents"] == docs["document_id"].nunique()
    assert docs["pages"].sum() == col.counts()["pages"]
    assert docs["cluster"].notna().all()
    rows = list(csv.DictReader(io.StringIO(export.assignments_csv(col).decode("utf-8"))))
    assert len(rows) == col.counts()["pages"]
    assert {"path", "page", "cluster", "cluster_name", "document_cluster"} <= set(rows[0])
    col.close()


def test_sort_into_folders_copies_never_moves(collection_copy, tmp_path):
    col = Collection(collection_copy)
    table = col.page_table()
    cid = int(table.loc[table["cluster"] >= 0, "cluster"].iloc[0])
    col.rename_cluster(cid, "Letters / faxes")
    out = tmp_path / "sorted"
    report = sorting.sort_into_folders(col, out)
    docs = browse.document_assignments(col)
    assert report.copied == len(docs) and not report.missing
    assert sum(report.folders.values()) == len(docs)
    assert "Letters _ faxes" in report.folders  # the slash never makes a sub-folder
    for row in docs.itertuples():
        assert Path(row.path).is_file()  # the original stays
    copies = [p for p in out.rglob("*") if p.is_file()]
    assert len(copies) == len(docs)
    assert {hashlib.sha256(p.read_bytes()).hexdigest() for p in copies} == set(docs["sha256"])
    again = sorting.sort_into_folders(col, out)
    assert again.copied == 0 and again.already_there == len(docs)
    with pytest.raises(ValueError, match="inside the collection"):
        sorting.sort_into_folders(col, collection_copy / "out")
    col.close()


def test_sort_into_folders_reports_missing_sources(tmp_path, collection_copy):
    col = Collection(collection_copy)
    table = col.page_table()
    # Point one document at a file that is gone, as if it had been deleted after ingest.
    with col.transaction() as con:
        con.execute("UPDATE documents SET path='/nonexistent/x.png' WHERE id=?", (int(table["document_id"].iloc[0]),))
        con.execute("UPDATE document_paths SET path='/nonexistent/x.png' WHERE document_id=?", (int(table["document_id"].iloc[0]),))
    report = sorting.sort_into_folders(col, tmp_path / "out")
    assert [p for p, _ in report.missing] == ["/nonexistent/x.png"]
    col.close()


def test_ingest_uploads_added_duplicate_failed_rejected(collection_copy, settings, extractor):
    col = Collection(collection_copy)
    before = col.counts()
    new = _jpeg_of(SAMPLE_DOCS / "leptonica" / "pageseg1.png")
    dup = (SAMPLE_DOCS / "leptonica" / "pageseg2.png").read_bytes()
    outcomes, report = uploads.ingest_uploads(
        col,
        [("../scan:1.jpg", new), ("pageseg2.png", dup), ("again.jpg", new), ("broken.pdf", b"not a pdf at all"), ("empty.png", b"")],
        settings,
        extractor=extractor,
    )
    status = [(o.name, o.status) for o in outcomes]
    assert status == [("scan_1.jpg", "added"), ("pageseg2.png", "already"), ("again.jpg", "already"),
                      ("broken.pdf", "failed"), ("empty.png", "rejected")]
    assert "already in the collection" in outcomes[1].message
    assert outcomes[0].message == "scan_1.jpg: added (1 page)"
    assert len(outcomes[0].page_ids) == 1 and outcomes[1].page_ids
    assert outcomes[0].stored_path.parent.parent == (collection_copy / "uploads").resolve()
    assert report.documents_added == 1
    assert col.counts()["documents"] == before["documents"] + 1
    assert not any(p.name == "broken.pdf" for p in (collection_copy / "uploads").rglob("*"))
    col.close()


def test_selection_page_ids():
    points = [{"customdata": [7]}, {"customdata": 3}, {"customdata": [7]}, {"x": 1}, {"customdata": ["n/a"]}]
    assert browse.selection_page_ids(points) == [7, 3]
    assert browse.selection_page_ids(None) == []


def test_data_version_changes_on_write(collection_copy):
    col = Collection(collection_copy)
    v0 = browse.data_version(col)
    assert browse.data_version(col) == v0
    cid = int(col.page_table()["cluster"].max())
    col.rename_cluster(cid, "renamed")
    assert browse.data_version(col) != v0
    col.close()


def test_folder_names_are_distinct_and_safe():
    names = sorting.folder_names({0: "Invoices", 1: "invoices", 2: "../x", 3: None, -1: "noise", None: None})
    assert names == {-1: "noise", 0: "Invoices", 1: "invoices (1)", 2: "_x", 3: "cluster 3", None: "not yet clustered"}


def _n_points(trace) -> int:
    xs = trace["x"]
    if isinstance(xs, dict):  # plotly's typed-array encoding {"dtype": ..., "bdata": base64}
        import base64

        return len(base64.b64decode(xs["bdata"])) // np.dtype(xs["dtype"]).itemsize
    return len(xs)


def test_map_figure_svg_for_small_webgl_for_large(sample_collection):
    import pandas as pd

    col = Collection(sample_collection)
    table = col.page_table()
    col.close()
    fig = plots.map_figure(table).to_plotly_json()
    assert {t["type"] for t in fig["data"]} == {"scatter"}
    assert sum(_n_points(t) for t in fig["data"]) == len(table)
    names = [t["name"] for t in fig["data"]]
    assert names[-1] == "noise" and fig["data"][-1]["marker"]["color"] == "#b0b0b0"
    rng = np.random.default_rng(0)
    big = pd.DataFrame({
        "page_id": np.arange(1500), "path": ["/x/a.png"] * 1500, "page": 1,
        "cluster": pd.array(rng.integers(-1, 5, 1500), dtype="Int64"), "cluster_name": None,
        "umap_x": rng.normal(size=1500), "umap_y": rng.normal(size=1500),
    })
    fig = plots.map_figure(big).to_plotly_json()
    assert {t["type"] for t in fig["data"]} == {"scattergl"}
