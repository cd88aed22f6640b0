"""`docsort evaluate`: kNN precision, ARI/NMI, noise, purity and confusion against sample_docs' labels,
checked against values recomputed here from the stored vectors and clusters."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from docsort.evaluate import LabelsError, evaluate, knn_precision, read_labels
from docsort.storage import Collection

from .conftest import SAMPLE_DOCS, sample_labels
from .test_cli import run

LABELS = SAMPLE_DOCS / "labels.csv"


def _stored(sample_collection):
    """(page table, vectors, categories) of the sample collection, categories from labels.csv."""
    labels = sample_labels()
    with Collection(sample_collection) as col:
        table = col.page_table()
        ids, vecs = col.vectors()
    assert np.array_equal(ids, table["page_id"].to_numpy())
    cats = np.array([labels[(p, n)] for p, n in zip(table["path"], table["page"])])
    return table, vecs, cats


def _numpy_knn(vecs, cats, k, groups=None):
    """Leave-one-out precision@k by brute force: full cosine matrix, self (and own group) masked."""
    x = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    if groups is not None:
        s[groups[:, None] == groups[None, :]] = -np.inf
    nn = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float((cats[nn] == cats[:, None]).mean())


def test_evaluate_matches_independent_computation(sample_collection):
    table, vecs, cats = _stored(sample_collection)
    with Collection(sample_collection) as col:
        r = evaluate(col, LABELS, ks=(1, 5, 10))
    assert (r.pages_in_collection, r.labelled_pages, r.unlabelled_pages, r.missing_labels) == (41, 41, 0, [])
    assert r.categories == sorted(set(cats))
    docs = table["document_id"].to_numpy()
    for k in (1, 5, 10):
        assert r.knn_precision[k] == pytest.approx(_numpy_knn(vecs, cats, k))
    for k in (1, 5):
        # The largest document has 5 pages, so 41 - 5 others remain for k <= 36.
        assert r.knn_precision_other_documents[k] == pytest.approx(_numpy_knn(vecs, cats, k, docs))
    # The bundled weights sort real scans far above chance (6 categories: ~0.18 at random).
    assert r.knn_precision[5] > 0.55

    # Clusters: noise pages count as singletons for ARI/NMI; the confusion table is a crosstab.
    clusters = table["cluster"].to_numpy(dtype=np.int64)
    singletons = np.where(clusters < 0, 1000 + np.arange(len(clusters)), clusters)
    assert r.ari == pytest.approx(adjusted_rand_score(cats, singletons))
    assert r.nmi == pytest.approx(normalized_mutual_info_score(cats, singletons))
    kept = clusters >= 0
    assert r.ari_clustered == pytest.approx(adjusted_rand_score(cats[kept], clusters[kept]))
    assert r.noise_share == pytest.approx(float((clusters < 0).mean()))
    assert r.n_clusters == len(set(clusters[kept].tolist())) >= 2
    crosstab = pd.crosstab(cats, clusters)
    assert r.confusion["clusters"] == [int(c) for c in crosstab.columns]
    assert np.array_equal(np.array(r.confusion["matrix"]), crosstab.loc[r.categories].to_numpy())
    majority = crosstab.loc[:, crosstab.columns >= 0].max(axis=0).sum()
    assert r.purity == pytest.approx(majority / kept.sum())
    by_cat = {c.category: c for c in r.per_category}
    assert sum(c.pages for c in r.per_category) == 41 and by_cat["map"].pages == 6
    for c in r.per_category:
        mine = cats == c.category
        assert c.noise_share == pytest.approx(float((clusters[mine] < 0).mean()))


def test_unlabelled_pages_and_bad_labels_are_reported(sample_collection, tmp_path):
    """Labels written elsewhere: a renamed copy matches by content, the rest is reported with reasons."""
    rows = list(csv.DictReader(open(LABELS, newline="")))
    maps = [r for r in rows if r["category"] == "map"]
    shutil.copy(SAMPLE_DOCS / maps[0]["file"], tmp_path / "renamed-copy.jpg")  # same bytes, new name
    (tmp_path / "stranger.png").write_bytes(b"\x89PNG\r\n\x1a\nnot ingested")
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "page", "category"])
        w.writerow(["renamed-copy.jpg", 1, "map"])
        for r in maps[1:] + [r for r in rows if r["category"] == "sheet_music"]:
            w.writerow([str(SAMPLE_DOCS / r["file"]), r["page"], r["category"]])
        w.writerow(["missing.pdf", 1, "map"])
        w.writerow(["stranger.png", 1, "map"])
        w.writerow([str(SAMPLE_DOCS / "leptonica" / "bois-2-5.pdf"), 9, "sheet_music"])
        w.writerow([str(SAMPLE_DOCS / "leptonica" / "map1.jpg"), 1, "newspaper"])  # map1 also labelled map above
    with Collection(sample_collection) as col:
        r = evaluate(col, labels, ks=(1, 5))
    reasons = {(m.file, m.category): m.reason for m in r.missing_labels}
    assert reasons[("missing.pdf", "map")] == "file not found"
    assert reasons[("stranger.png", "map")] == "not in the collection"
    assert reasons[(str(SAMPLE_DOCS / "leptonica" / "bois-2-5.pdf"), "sheet_music")] == "document has 4 pages"
    conflict = [m for m in r.missing_labels if m.reason.startswith("conflicting labels")]
    assert len(conflict) == 2 and "map, newspaper" in conflict[0].reason
    # 6 maps + 8 sheet music pages, less map1 (conflicting): 13 labelled, 28 ignored.
    assert (r.labelled_pages, r.unlabelled_pages) == (13, 28)
    assert r.categories == ["map", "sheet_music"]
    assert 0 < r.knn_precision[1] <= 1 and r.knn_precision[5] is not None


def test_an_unclustered_collection_gets_knn_only_and_labels_of_absent_files_are_listed(tmp_path, settings, extractor):
    from docsort.pipeline import ingest

    files = ["leptonica/bois-2-5.pdf", "leptonica/ortiz-02.png", "leptonica/map1.jpg", "leptonica/comap.063.jpg"]
    with Collection(tmp_path / "c", create=True) as col:
        ingest(col, [SAMPLE_DOCS / f for f in files], settings, extractor=extractor, progress=False, log=lambda m: None)
        r = evaluate(col, LABELS, ks=(1, 5))
    assert (r.pages_in_collection, r.labelled_pages, r.unlabelled_pages) == (7, 7, 0)
    assert len(r.missing_labels) == 41 - 7 and {m.reason for m in r.missing_labels} == {"not in the collection"}
    assert r.clustered_pages == 0 and r.ari is None and r.noise_share is None and r.confusion is None
    assert r.knn_precision[5] is not None and r.knn_precision_other_documents[5] is None  # 4-page PDF: 3 others
    assert r.to_dict()["knn_precision"]["5"] == r.knn_precision[5]


def test_read_labels_refuses_bad_files(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("path,page,category\na.pdf,1,x\n")
    with pytest.raises(LabelsError, match=r"missing column\(s\) \['file'\]"):
        read_labels(bad)
    bad.write_text("file,page,category\na.pdf,one,x\n")
    with pytest.raises(LabelsError, match="labels.csv:2: page 'one' is not an integer"):
        read_labels(bad)
    bad.write_text("file,page,category\n")
    with pytest.raises(LabelsError, match="no labels"):
        read_labels(bad)
    with pytest.raises(LabelsError, match="cannot read labels"):
        read_labels(tmp_path / "nope.csv")
    assert read_labels(LABELS)[0].path == (SAMPLE_DOCS / "jbigkit" / "ccitt-1-3-4-5-7.tif").resolve()


def test_knn_precision_on_hand_made_vectors():
    """Two tight pairs far apart: every nearest neighbour is the partner; k beyond n-1 is None."""
    v = np.array([[1, 0.01], [1, -0.01], [0.01, 1], [-0.01, 1]], np.float32)
    cats = np.array(["a", "a", "b", "b"])
    p, per = knn_precision(v, cats, (1, 2, 3, 4))
    assert p[1] == 1.0 and p[2] == 0.5 and p[3] == pytest.approx(1 / 3) and p[4] is None
    assert per[1].tolist() == [1.0, 1.0, 1.0, 1.0]
    # Grouping each pair as one document leaves only the other category's pages as neighbours.
    q, _ = knn_precision(v, cats, (1, 3), groups=np.array([0, 0, 1, 1]))
    assert q[1] == 0.0 and q[3] is None


def test_cli_evaluate_prints_tables_and_writes_json(sample_collection, tmp_path):
    out = tmp_path / "eval" / "result.json"
    res = run("evaluate", "--labels", LABELS, "--collection", sample_collection, "-k", "1,5", "--json", out, check=0)
    assert "kNN precision@5" in res.stdout and "per category" in res.stdout and "confusion" in res.stdout
    data = json.loads(out.read_text())
    with Collection(sample_collection) as col:
        again = evaluate(col, LABELS, ks=(1, 5))
    assert data["knn_precision"] == {"1": again.knn_precision[1], "5": again.knn_precision[5]}
    assert data["labelled_pages"] == 41 and data["ari"] == pytest.approx(again.ari)
    assert f"{again.knn_precision[5]:.3f}" in res.stdout
    assert data["features"]["pooling"] == "topk" and data["features"]["dim"] == 288
    bad = run("evaluate", "--labels", tmp_path / "none.csv", "--collection", sample_collection)
    assert bad.returncode == 2 and "cannot read labels" in bad.stderr
