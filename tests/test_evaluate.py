"""`docsort evaluate`: kNN precision, ARI/NMI, noise, purity and confusion against sample_docs' labels,
checked against values recomputed here from the stored vectors and clusters; the scan-style measures
(cross-style kNN, style leakage) on vectors built so the answer is known, and on sample_docs with a
synthetic style column."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from docsort.queries.evaluate import LabelsError, cross_style_knn_precision, evaluate, knn_precision, read_labels, style_leakage
from docsort.store.storage import Collection

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
    from docsort.jobs.ingest import ingest

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
    from docsort.queries.vectors import active_projection, page_vectors
    from docsort.store.manifest import effective_settings
    from docsort.config.settings import load_pipeline

    with Collection(sample_collection) as col:
        # By default the CLI judges the vectors index and clustering use (projected when the
        # collection has a scan-style-invariant projection); --vectors stored the raw ones.
        settings = effective_settings(col, load_pipeline("default"))
        pv = page_vectors(col, settings, "fused")
        projection = active_projection(col, settings)
        again = evaluate(col, LABELS, ks=(1, 5), vectors=(pv.ids, pv.vectors))
        stored = evaluate(col, LABELS, ks=(1, 5))
    assert data["knn_precision"] == {"1": again.knn_precision[1], "5": again.knn_precision[5]}
    assert data["labelled_pages"] == 41 and data["ari"] == pytest.approx(again.ari)
    assert f"{again.knn_precision[5]:.3f}" in res.stdout
    assert data["vectors"].startswith("clustering vectors") and (projection is None) == ("raw visual" in data["vectors"])
    raw = tmp_path / "raw.json"
    run("evaluate", "--labels", LABELS, "--collection", sample_collection, "-k", "1,5", "--vectors", "stored", "--json", raw, check=0)
    raw_data = json.loads(raw.read_text())
    assert raw_data["knn_precision"] == {"1": stored.knn_precision[1], "5": stored.knn_precision[5]}
    assert raw_data["vectors"] == "stored visual vectors"
    assert data["features"]["pooling"] == "topk" and data["features"]["dim"] == 288
    bad = run("evaluate", "--labels", tmp_path / "none.csv", "--collection", sample_collection)
    assert bad.returncode == 2 and "cannot read labels" in bad.stderr


def _style_dominated_vectors():
    """12 pages: 2 types x 2 scan styles x 3 pages; the style direction weighs 10, the type 1.

    Cosine: same style and type ~101/101, same style other type 100/101, other style same type
    1/101, other style and type 0. So every page's 5 nearest neighbours are its own style (2 of
    its type, 3 of the other), and among the other style its 3 nearest are its type.
    """
    vecs, cats, styles = [], [], []
    for si, style in enumerate(("fax", "grey")):
        for ti, cat in enumerate(("letter", "form")):
            for i in range(3):
                v = np.zeros(5, np.float32)
                v[si] = 10.0
                v[2 + ti] = 1.0
                v[4] = 0.01 * (i + 1)
                vecs.append(v)
                cats.append(cat)
                styles.append(style)
    return np.array(vecs), np.array(cats), np.array(styles)


def test_cross_style_knn_sees_through_vectors_that_group_by_scan_style():
    vecs, cats, styles = _style_dominated_vectors()
    plain, _ = knn_precision(vecs, cats, (2, 5))
    assert plain[2] == 1.0 and plain[5] == pytest.approx(2 / 5)  # 5 same-style neighbours: 2 of the type
    cross, per_page = cross_style_knn_precision(vecs, cats, styles, (3, 4, 6, 7))
    assert cross[3] == 1.0 and cross[4] == pytest.approx(3 / 4) and cross[6] == pytest.approx(0.5)
    assert cross[7] is None  # only 6 pages of the other style exist
    assert per_page[3].tolist() == [1.0] * 12
    same_style, _ = knn_precision(vecs, styles, (5,))
    assert same_style[5] == 1.0  # the vectors encode the scanner
    # Swap the weights (type 10, style 1): types now sort together in every style.
    swapped = vecs.copy()
    swapped[:, :2] /= 10.0
    swapped[:, 2:4] *= 10.0
    plain, _ = knn_precision(swapped, cats, (5,))
    assert plain[5] == 1.0
    cross, _ = cross_style_knn_precision(swapped, cats, styles, (3,))
    assert cross[3] == 1.0
    with pytest.raises(ValueError, match="12 vectors but 11 groups"):
        cross_style_knn_precision(vecs, cats, styles[:-1], (1,))


def test_style_leakage_is_one_for_clusters_by_style_and_zero_for_clusters_by_type():
    _, cats, styles = _style_dominated_vectors()
    by_style = np.where(styles == "fax", 0, 1)
    by_type = np.where(cats == "letter", 0, 1)
    assert style_leakage(styles, by_style) == {"style_nmi": pytest.approx(1.0), "style_nmi_clustered": pytest.approx(1.0)}
    leak = style_leakage(styles, by_type)  # each type cluster holds both styles half and half
    assert leak["style_nmi"] == pytest.approx(0.0, abs=1e-12) and leak["style_nmi_clustered"] == pytest.approx(0.0, abs=1e-12)
    # Noise pages count as singletons overall and are left out of the clustered-only figure.
    noisy = by_type.copy()
    noisy[[0, 6]] = -1
    leak = style_leakage(styles, noisy)
    singletons = np.where(noisy < 0, 100 + np.arange(12), noisy)
    assert leak["style_nmi"] == pytest.approx(normalized_mutual_info_score(styles, singletons)) and leak["style_nmi"] > 0
    kept = noisy >= 0
    assert leak["style_nmi_clustered"] == pytest.approx(normalized_mutual_info_score(styles[kept], noisy[kept]))
    with pytest.raises(ValueError, match="12 styles but 3"):
        style_leakage(styles, by_type[:3])


def _labels_with_styles(tmp_path, name="styled.csv", conflict=False):
    """sample_docs' labels with a synthetic style column (s0/s1/s2 in turn within each category)."""
    with open(LABELS, newline="") as f:
        rows = list(csv.DictReader(f))
    seen = {}
    for r in rows:
        r["style"] = f"s{seen.get(r['category'], 0) % 3}"
        seen[r["category"]] = seen.get(r["category"], 0) + 1
        r["file"] = str((SAMPLE_DOCS / r["file"]).resolve())
    if conflict:
        rows.append({**rows[0], "style": "s9"})
    path = tmp_path / name
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "page", "category", "style", "source", "licence"])
        w.writeheader()
        w.writerows(rows)
    return path, {(r["file"], int(r["page"])): r["style"] for r in rows}


def test_evaluate_with_a_style_column_matches_independent_computation(sample_collection, tmp_path):
    table, vecs, cats = _stored(sample_collection)
    labels, style_of = _labels_with_styles(tmp_path)
    styles = np.array([style_of[(str(Path(p).resolve()), n)] for p, n in zip(table["path"], table["page"])])
    with Collection(sample_collection) as col:
        r = evaluate(col, labels, ks=(1, 5))
    assert r.styles == ["s0", "s1", "s2"] and r.style_note is None and r.labelled_pages == 41
    for k in (1, 5):
        assert r.cross_style_knn_precision[k] == pytest.approx(_numpy_knn(vecs, cats, k, styles))
        assert r.style_knn_precision[k] == pytest.approx(_numpy_knn(vecs, styles, k))
    counts = {s: int((styles == s).sum()) for s in r.styles}
    assert r.style_knn_chance == pytest.approx(np.mean([(counts[s] - 1) / 40 for s in styles]))
    clusters = table["cluster"].to_numpy(dtype=np.int64)
    singletons = np.where(clusters < 0, 1000 + np.arange(len(clusters)), clusters)
    assert r.style_nmi == pytest.approx(normalized_mutual_info_score(styles, singletons))
    assert [s.style for s in r.per_style] == r.styles and sum(s.pages for s in r.per_style) == 41
    for s in r.per_style:
        assert s.pages == counts[s.style]
        assert s.noise_share == pytest.approx(float((clusters[styles == s.style] < 0).mean()))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["cross_style_knn_precision"]["5"] == r.cross_style_knn_precision[5]
    assert d["per_style"][0]["cross_style_knn"]["1"] == r.per_style[0].cross_style_knn[1]
    assert d["style_nmi"] == r.style_nmi

    # One page labelled with two styles is a conflict, left out like one with two categories.
    labels2, _ = _labels_with_styles(tmp_path, "conflict.csv", conflict=True)
    with Collection(sample_collection) as col:
        r2 = evaluate(col, labels2, ks=(1, 5))
    assert r2.labelled_pages == 40 and any("conflicting labels" in m.reason and "style s9" in m.reason for m in r2.missing_labels)


def test_without_a_style_column_the_style_measures_are_absent_and_said_so(sample_collection, tmp_path):
    with Collection(sample_collection) as col:
        r = evaluate(col, LABELS, ks=(1, 5))
    assert r.styles is None and r.cross_style_knn_precision is None and r.style_nmi is None and r.per_style == []
    assert "no 'style' column" in r.style_note
    d = r.to_dict()
    assert d["cross_style_knn_precision"] is None and "no 'style' column" in d["style_note"]


def test_cli_evaluate_prints_the_style_measures(sample_collection, tmp_path):
    labels, _ = _labels_with_styles(tmp_path)
    out = tmp_path / "styled.json"
    res = run("evaluate", "--labels", labels, "--collection", sample_collection, "-k", "1,5", "--json", out, check=0)
    data = json.loads(out.read_text())
    assert "cross-style kNN@5" in res.stdout and "style leakage NMI" in res.stdout and "per scan style" in res.stdout
    assert f"{data['cross_style_knn_precision']['5']:.3f}" in res.stdout and f"{data['style_nmi']:.3f}" in res.stdout
    plain = run("evaluate", "--labels", LABELS, "--collection", sample_collection, "-k", "5", check=0)
    assert "no 'style' column" in plain.stdout and "cross-style kNN@5" not in plain.stdout and "per scan style" not in plain.stdout


def test_read_labels_reads_styles_and_refuses_an_empty_one(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("file,page,category,style\na.pdf,1,x,fax\nb.pdf,2,y,grey\n")
    assert [r.style for r in read_labels(f)] == ["fax", "grey"]
    f.write_text("file,page,category,style\na.pdf,1,x,fax\nb.pdf,2,y,\n")
    with pytest.raises(LabelsError, match="labels.csv:3: empty style"):
        read_labels(f)
    assert {r.style for r in read_labels(LABELS)} == {None}


def test_evaluate_judges_the_vectors_it_is_given(sample_collection):
    """kNN is measured on the vectors passed in (e.g. the projected ones the index uses), in any row order."""
    table, vecs, cats = _stored(sample_collection)
    ids = table["page_id"].to_numpy()
    other = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32)
    with Collection(sample_collection) as col:
        r = evaluate(col, LABELS, ks=(1, 5), vectors=(ids[::-1], other[::-1]))
        with pytest.raises(ValueError, match="lack 1 labelled pages"):
            evaluate(col, LABELS, ks=(5,), vectors=(ids[1:], other[1:]))
        with pytest.raises(ValueError, match="41 page ids but 40 vectors"):
            evaluate(col, LABELS, ks=(5,), vectors=(ids, other[1:]))
    assert r.knn_precision[5] == pytest.approx(_numpy_knn(other, cats, 5))
    assert r.knn_precision[5] != pytest.approx(_numpy_knn(vecs, cats, 5))
