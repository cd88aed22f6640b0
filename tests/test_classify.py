"""Labels and the document-type classifier (docsort.jobs.classify) on the real pages of sample_docs/.

Every test works on its own copy of the session's sample collection (conftest.py); the truth is
sample_docs/labels.csv (41 pages, 6 categories). Nothing here starts a process: the CLI runs
in-process through Typer's CliRunner, ingest reuses the session's feature extractor.
"""

from __future__ import annotations

import csv
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from docsort.jobs import classify
from docsort.jobs.classify import (
    UNSURE,
    ClassifierError,
    classify_collection,
    export_labels,
    is_current,
    label_cluster,
    label_pages,
    labels,
    load_classifier,
    type_table,
    unlabel,
)
from docsort.config.settings import ClassifierSettings, PipelineError, load_pipeline
from docsort.store.storage import Collection, CollectionError

from .conftest import SAMPLE_DOCS, sample_labels

SETTINGS = ClassifierSettings()


def _truth(col: Collection) -> dict[int, str]:
    """{page id: category} from sample_docs/labels.csv."""
    truth = sample_labels()
    return {int(r.page_id): truth[(r.path, int(r.page))] for r in col.page_table().itertuples(index=False)}


def _by_type(truth: dict[int, str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for pid, t in sorted(truth.items()):
        out.setdefault(t, []).append(pid)
    return out


def _label_some(col: Collection, truth: dict[int, str], per_type: int, seed: int, types=None) -> dict[int, str]:
    """Label ``per_type`` random pages of each category (or of ``types``); returns {page id: type}."""
    rng = np.random.default_rng(seed)
    chosen = {}
    for t, ids in _by_type(truth).items():
        if types is not None and t not in types:
            continue
        for pid in rng.choice(ids, per_type, replace=False):
            chosen[int(pid)] = t
    for t in sorted(set(chosen.values())):
        label_pages(col, [p for p, tt in chosen.items() if tt == t], t)
    return chosen


def test_label_pages_and_clusters_persist_edit_and_export(collection_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCSORT_USER", "alice")
    col = Collection(collection_copy)
    ids = [int(i) for i in col.page_ids()]
    assert label_pages(col, ids[:2], "  Court   filing ") == 2
    assert label_pages(col, [ids[2]], "court FILING") == 1  # the existing spelling is reused
    df = labels(col)
    assert df["page_id"].tolist() == ids[:3] and set(df["type"]) == {"Court filing"}
    assert set(df["who"]) == {"alice"} and set(df["source"]) == {"page"} and df["cluster"].isna().all()

    # A cluster: every current member, except pages labelled one by one with another type.
    table = col.page_table()
    cid = int(table.loc[table["cluster"] >= 0, "cluster"].value_counts().index[0])
    members = table.loc[table["cluster"] == cid, "page_id"].astype(int).tolist()
    label_pages(col, [members[0]], "invoice", who="ui")
    own = set(labels(col).query("source == 'page' and type != 'lease'")["page_id"]) & set(members)
    res = label_cluster(col, cid, "lease")
    assert (res.doc_type, res.labelled, res.kept) == ("lease", len(members) - len(own), len(own))
    col.close()

    col = Collection(collection_copy)  # persisted
    df = labels(col).set_index("page_id")
    for pid in members:
        if pid in own:
            assert df.loc[pid, "source"] == "page" and df.loc[pid, "type"] != "lease"
        else:
            assert (df.loc[pid, "type"], df.loc[pid, "source"], df.loc[pid, "cluster"]) == ("lease", "cluster", cid)
    assert df.loc[members[0], "who"] == "ui"
    # Edit: relabel a cluster-labelled page by hand; remove labels.
    edited = next(p for p in members if p not in own)
    label_pages(col, [edited], "deed")
    assert labels(col).set_index("page_id").loc[edited, ["type", "source"]].tolist() == ["deed", "page"]
    before = len(labels(col))
    assert unlabel(col, [edited, ids[0], 10**9]) == 2
    assert len(labels(col)) == before - 2 and edited not in set(labels(col)["page_id"])
    # With overwrite, hand labels inside the cluster are replaced too.
    res = label_cluster(col, cid, "Lease", overwrite_page_labels=True)
    assert res.kept == 0 and res.labelled == len(members) and res.doc_type == "lease"

    # Export: the same rows, readable as CSV.
    out = tmp_path / "labels.csv"
    n = export_labels(col, out)
    rows = list(csv.DictReader(out.open()))
    current = labels(col)
    assert n == len(rows) == len(current)
    assert [(int(r["page_id"]), r["type"], r["who"]) for r in rows] == list(zip(current["page_id"], current["type"], current["who"]))
    assert all(Path(r["path"]).is_file() for r in rows)

    # Refused, and nothing written.
    snapshot = labels(col)
    with pytest.raises(CollectionError, match="no page with id"):
        label_pages(col, [ids[5], 10**9], "x")
    assert labels(col).equals(snapshot)
    for bad in ("", "   ", "Unsure", "a\x00b", "x" * 121):
        with pytest.raises(ValueError):
            label_pages(col, [ids[5]], bad)
    with pytest.raises(CollectionError, match="noise"):
        label_cluster(col, -1, "x")
    with pytest.raises(CollectionError, match="no cluster"):
        label_cluster(col, 10**6, "x")
    with pytest.raises(ValueError, match=".csv"):
        export_labels(col, tmp_path / "labels.parquet")
    col.close()


def test_a_few_labels_per_type_sort_the_rest_well_above_chance(collection_copy):
    col = Collection(collection_copy)
    truth = _truth(col)
    chosen = _label_some(col, truth, per_type=3, seed=7)
    report = classify_collection(col, SETTINGS)
    clf = report.classifier
    assert report.retrained and clf.counts == dict(Counter(chosen.values()))
    assert clf.cv.accuracy is not None and clf.cv.method.startswith("leave-one-out")
    assert set(clf.cv.per_type) == set(chosen.values())
    assert clf.calibration.startswith("the logistic regression's own probabilities")  # 3 < 20 labels per type
    table = type_table(col)
    rest = table[table["label"].isna()]
    assert len(rest) == len(truth) - len(chosen) == report.classified
    assert rest["predicted"].notna().all() and (rest["model_version"] == clf.version).all()
    assert rest["type_probability"].between(0, 1).all()
    # Probabilities are a distribution over the types: the best one is at least 1/k.
    assert (rest["type_probability"] >= 1 / len(clf.classes) - 1e-9).all()
    assert table.loc[table["label"].notna(), "predicted"].isna().all()  # labelled pages are not predicted
    accuracy = float((rest["predicted"] == rest["page_id"].map(truth)).mean())
    counts = Counter(truth[p] for p in rest["page_id"])
    chance = max(counts.values()) / len(rest)  # always answering the most common type
    assert accuracy >= 2 * chance, (accuracy, chance)
    # Unsure pages are the less reliable ones: the confident ones are right at least as often.
    sure = rest[~rest["unsure"]]
    assert len(sure) and (sure["predicted"] == sure["page_id"].map(truth)).mean() >= accuracy
    # The manifest records the classifier.
    assert col.manifest()["classifier"]["version"] == clf.version
    col.close()


def test_calibration_needs_enough_labels_and_keeps_the_best_type(collection_copy):
    col = Collection(collection_copy)
    truth = _truth(col)
    ids, X = col.vectors()
    chosen = _label_some(col, truth, per_type=3, seed=1)
    rows = [int(i) for i in ids if int(i) in chosen]
    _, Xl = col.vectors(rows)
    yl = [chosen[i] for i in rows]
    own = classify.train(Xl, yl, SETTINGS, cross_validate=False)
    scaled = classify.train(Xl, yl, SETTINGS.model_copy(update={"calibrate_min_per_type": 3}), cross_validate=False)
    assert own.calibration.startswith("the logistic regression's own") and scaled.calibration.startswith("temperature scaling")
    t_own, p_own, _ = own.predict(X)
    t_scaled, p_scaled, _ = scaled.predict(X)
    assert (t_own == t_scaled).all()  # temperature scaling changes confidence, never the type
    assert not np.allclose(p_own, p_scaled)
    assert own.version != scaled.version
    # One label per type: no cross-validation, and it says so.
    unlabel(col, labels(col)["page_id"].tolist())
    _label_some(col, truth, per_type=1, seed=1, types={"map", "sheet_music", "newspaper"})
    clf = classify_collection(col, SETTINGS.model_copy(update={"calibrate_min_per_type": 2})).classifier
    assert clf.cv.accuracy is None and "not enough labels" in clf.cv.note
    assert clf.calibration.startswith("the logistic regression's own")
    unlabel(col, labels(col)["page_id"].tolist())
    _label_some(col, truth, per_type=1, seed=1, types={"map"})
    with pytest.raises(ClassifierError, match="at least two document types"):
        classify_collection(col, SETTINGS)
    col.close()


def test_unsure_route(collection_copy):
    col = Collection(collection_copy)
    truth = _truth(col)
    _label_some(col, truth, per_type=3, seed=3)
    report = classify_collection(col, SETTINGS)
    table = type_table(col)
    rest = table[table["label"].isna()]
    clf = report.classifier
    # Stored flags are the documented rule.
    rule = (rest["type_probability"] < SETTINGS.threshold) | (rest["similarity"] < clf.similarity_floor)
    assert (rest["unsure"] == rule).all()
    assert (rest.loc[rest["unsure"], "doc_type"] == UNSURE).all()

    # A threshold above every probability sends every unlabelled page to "unsure", without retraining.
    top = float(rest["type_probability"].max())
    assert top < 1.0
    above = classify_collection(col, SETTINGS, threshold=float(np.nextafter(top, 2.0)))
    assert not above.retrained and above.classifier.version == clf.version
    assert above.unsure == above.classified == len(rest)
    table = type_table(col)
    assert set(table.loc[table["label"].isna(), "decision"]) == {"unsure"}
    docs = classify.document_types(col)
    assert set(docs.loc[docs["labelled_pages"] == 0, "doc_type"]) == {UNSURE}
    # ...and a threshold of 0 without the similarity rule sends none.
    none = classify_collection(col, SETTINGS.model_copy(update={"reject_unlike": False}), threshold=0.0)
    assert none.unsure == 0 and not none.retrained
    col.close()


def test_a_type_unlike_every_labelled_one_goes_to_unsure(collection_copy):
    """Pages of a type nobody labelled go to "unsure": the similarity rule catches what the
    probability alone misses (a logistic regression is confident far from its training pages)."""
    col = Collection(collection_copy)
    truth = _truth(col)
    ids, X = col.vectors()
    y = np.array([truth[int(i)] for i in ids])
    Z = X - X.mean(axis=0)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    S = Z @ Z.T
    # In the collection: the type least like the others (lowest mean similarity of its pages to
    # their nearest page of another type) is left unlabelled.
    isolation = {t: np.mean([S[i, y != t].max() for i in np.flatnonzero(y == t)]) for t in set(y)}
    stranger = min(isolation, key=isolation.get)
    _label_some(col, truth, per_type=3, seed=0, types=set(y) - {stranger})
    classify_collection(col, SETTINGS)
    table = type_table(col)
    rest = table[table["label"].isna()]
    theirs = rest[rest["page_id"].map(truth) == stranger]
    others = rest[rest["page_id"].map(truth) != stranger]
    assert len(theirs) == (y == stranger).sum()
    assert theirs["unsure"].mean() >= 0.5
    assert theirs["unsure"].mean() > others["unsure"].mean()
    assert (theirs.loc[theirs["unsure"], "doc_type"] == UNSURE).all()
    col.close()

    # Every type in turn left unlabelled (3 labels for each other type): with the similarity rule
    # more of the unlabelled type's pages go to "unsure" than by probability alone, and still more
    # of them than of the pages typed right.
    rng = np.random.default_rng(0)
    with_rule, prob_only, right_unsure = [], [], []
    for held in sorted(set(y)):
        known = sorted(set(y) - {held})
        train_idx = np.concatenate([rng.choice(np.flatnonzero(y == t), 3, replace=False) for t in known])
        test_idx = np.setdiff1d(np.arange(len(y)), train_idx)
        clf = classify.train(X[train_idx], y[train_idx], SETTINGS, centre=X.mean(axis=0), cross_validate=False)
        pred, prob, sim = clf.predict(X[test_idx])
        unknown = y[test_idx] == held
        right = ~unknown & (pred == y[test_idx])
        unsure = clf.unsure(prob, sim, SETTINGS.threshold, reject_unlike=True)
        with_rule.append(unsure[unknown].mean())
        prob_only.append(clf.unsure(prob, sim, SETTINGS.threshold, reject_unlike=False)[unknown].mean())
        right_unsure.append(unsure[right].mean())
    assert np.mean(with_rule) > np.mean(prob_only) + 0.1, (with_rule, prob_only)
    assert np.mean(with_rule) > np.mean(right_unsure) + 0.2, (with_rule, right_unsure)


def test_retrains_when_labels_change(collection_copy):
    col = Collection(collection_copy)
    truth = _truth(col)
    _label_some(col, truth, per_type=3, seed=5, types={"map", "sheet_music", "antique_book_photo"})
    first = classify_collection(col, SETTINGS)
    v1 = first.classifier.version
    path = collection_copy / Collection.CLASSIFIER
    stamp = path.stat().st_mtime_ns
    # Same labels: the stored model is reused.
    again = classify_collection(col, SETTINGS)
    assert not again.retrained and again.classifier.version == v1 and path.stat().st_mtime_ns == stamp
    assert is_current(load_classifier(col), col, SETTINGS)
    before = type_table(col).set_index("page_id")
    assert "newspaper" not in set(before["predicted"].dropna())

    # A new type is labelled: the model is stale, retrained, and predictions change.
    added = _label_some(col, truth, per_type=3, seed=5, types={"newspaper"})
    assert not is_current(load_classifier(col), col, SETTINGS)
    second = classify_collection(col, SETTINGS)
    v2 = second.classifier.version
    assert second.retrained and v2 != v1 and "newspaper" in second.classifier.classes
    after = type_table(col).set_index("page_id")
    rest = after[after["label"].isna()]
    assert (rest["model_version"] == v2).all()
    news = [p for p, t in truth.items() if t == "newspaper" and p not in added]
    assert (rest.loc[news, "predicted"] == "newspaper").any()

    # Removing those labels brings back the first model exactly (training is deterministic).
    unlabel(col, list(added))
    assert set(type_table(col).set_index("page_id").loc[list(added), "decision"]) == {"unclassified"}
    third = classify_collection(col, SETTINGS)
    assert third.retrained and third.classifier.version == v1
    final = type_table(col).set_index("page_id")
    common = before.index[before["label"].isna()]
    assert (final.loc[common, "predicted"] == before.loc[common, "predicted"]).all()
    # A label edited in place changes the label set too.
    pid = next(iter(labels(col)["page_id"]))
    label_pages(col, [pid], "something else")
    assert classify_collection(col, SETTINGS).classifier.version not in (v1, v2)
    col.close()


def test_new_ingests_are_classified_when_a_classifier_exists(collection_copy, settings, extractor, tmp_path):
    from PIL import Image

    from docsort.jobs.ingest import ingest

    def new_scan(name: str, source: str) -> Path:
        path = tmp_path / "scans" / name
        path.parent.mkdir(exist_ok=True)
        Image.open(SAMPLE_DOCS / "leptonica" / source).convert("L").save(path, "JPEG", quality=83)
        return path

    col = Collection(collection_copy)
    messages: list[str] = []
    # No classifier: ingest stores no predictions.
    report = ingest(col, [new_scan("a.jpg", "pageseg2.png")], settings, extractor=extractor, progress=False, log=messages.append)
    assert report.pages_added == 1
    assert col.query("SELECT COUNT(*) FROM page_predictions")[0][0] == 0
    assert not (collection_copy / Collection.CLASSIFIER).exists()

    truth = _truth_with_new(col)
    _label_some(col, truth, per_type=3, seed=2)
    clf = classify_collection(col, SETTINGS).classifier
    before = dict(col.query("SELECT page_id, at FROM page_predictions"))
    report = ingest(col, [new_scan("b.jpg", "ortiz-03.png")], settings, extractor=extractor, progress=False, log=messages.append)
    assert report.pages_added == 1
    new_page = int(col.page_ids().max())
    table = type_table(col).set_index("page_id")
    assert table.loc[new_page, "model_version"] == clf.version and table.loc[new_page, "decision"] in ("predicted", "unsure")
    assert dict(col.query("SELECT page_id, at FROM page_predictions WHERE page_id <> ?", (new_page,))) == before
    assert any("classified 1 new pages by document type" in m for m in messages)
    col.close()


def _truth_with_new(col: Collection) -> dict[int, str]:
    """Truth for the sample pages only (pages ingested by a test are left out)."""
    truth = sample_labels()
    return {int(r.page_id): truth[(r.path, int(r.page))] for r in col.page_table().itertuples(index=False) if (r.path, int(r.page)) in truth}


def test_sort_by_type_copies_documents_with_a_csv_of_decisions(collection_copy, tmp_path):
    col = Collection(collection_copy)
    truth = _truth(col)
    _label_some(col, truth, per_type=3, seed=4)
    classify_collection(col, SETTINGS)
    docs = classify.document_types(col)
    out = tmp_path / "by-type"
    report = classify.sort_by_type(col, out)
    assert report.copied == len(docs) and not report.missing
    rows = list(csv.DictReader((out / classify.DECISIONS_CSV).open()))
    assert len(rows) == len(docs)
    for r in rows:
        copy = out / r["folder"] / Path(r["path"]).name
        assert copy.is_file() and copy.read_bytes() == Path(r["path"]).read_bytes()  # copied, never moved
        assert 0.0 <= float(r["probability"]) <= 1.0
        assert r["decision"] in ("labelled", "predicted", "unsure")
        assert (r["type"] == UNSURE) == (r["decision"] == "unsure")
    assert {r["folder"] for r in rows} == set(report.folders)
    # Idempotent.
    again = classify.sort_by_type(col, out)
    assert again.copied == 0 and again.already_there == len(docs)
    col.close()


def test_cli_label_labels_classify_sort_by_type(collection_copy, tmp_path):
    from typer.testing import CliRunner

    from docsort.faces.cli import app

    runner = CliRunner()

    def run(*args, code=0):
        res = runner.invoke(app, [*map(str, args), "--collection", str(collection_copy)], env={"COLUMNS": "200", "DOCSORT_USER": "bob"})
        assert res.exit_code == code, res.output
        return res.output

    col = Collection(collection_copy)
    truth = _truth(col)
    col.close()
    groups = _by_type(truth)
    for t in ("map", "sheet_music"):
        assert f"labelled 3 pages as '{t}'" in run("label", *groups[t][:3], "--type", t)
    table = Collection(collection_copy).page_table()
    cid = int(table.loc[table["cluster"] >= 0, "cluster"].iloc[0])
    assert f"pages of cluster {cid} as 'scan'" in run("label", "--cluster", cid, "--type", "scan")
    assert "removed 1 label" in run("label", "--remove", groups["map"][0])
    out = run("labels", "--export", tmp_path / "l.csv")
    n = len(list(csv.DictReader((tmp_path / "l.csv").open())))
    assert f"wrote {n} labels" in out and "bob" in out
    out = run("classify", "--threshold", "0.5")
    assert "CV accuracy" in out and "classified" in out and "threshold 0.50" in out
    import json

    data = json.loads(run("classify", "--json"))
    assert data["threshold"] == 0.6 and not data["retrained"]
    assert {r["doc_type"] for r in data["types"]} >= {"map", "sheet_music", "scan"}
    out = run("sort-by-type", tmp_path / "sorted")
    assert (tmp_path / "sorted" / classify.DECISIONS_CSV).is_file() and "copied" in out
    run("label", "1", code=2)  # no --type
    run("label", "--remove", code=2)
    run("label", "1", "--type", "unsure", code=2)
    run("label", "999999", "--type", "x", code=2)


def test_classifier_settings_and_migration_of_an_older_collection(collection_copy, tmp_path):
    assert load_pipeline("default").classifier == ClassifierSettings()
    bad = tmp_path / "bad.toml"
    bad.write_text("[classifier]\nthreshold = 1.5\n")
    with pytest.raises(PipelineError, match="threshold"):
        load_pipeline(bad)
    # A collection made before labels existed (schema 1, as docsort before numbered migrations left
    # it: user_version 0) gets the tables when opened.
    db = sqlite3.connect(collection_copy / Collection.DB)
    db.execute("DROP TABLE page_labels")
    db.execute("DROP TABLE page_predictions")
    db.execute("ALTER TABLE page_clusters DROP COLUMN membership")
    db.execute("ALTER TABLE cluster_runs DROP COLUMN n_reassigned")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    col = Collection(collection_copy)
    assert label_pages(col, [int(col.page_ids()[0])], "letter") == 1
    assert classify.classifier_settings(col) == ClassifierSettings()
    col.close()
