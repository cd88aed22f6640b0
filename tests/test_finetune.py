"""docsort classify --fine-tune (issue 14, item 3): both accuracies on the same folds, the kept /
not-kept rule both ways, stored weights with their sha256, typing of re-read pages.

Real pages of sample_docs (12: two PDFs and three PNGs, three document types from
sample_docs/labels.csv), bundled weights, a 128x128 network input and 1 epoch, so a run takes
seconds. Which model wins on so few pages is not asserted (it is not a quality test): each branch
of the rule is forced by a fixed baseline, and the measured rule is checked as the rule itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from docsort.jobs.finetuning import fine_tune, fine_tuned_in_use, type_after_ingest  # first: imports docsort.store.storage before TensorFlow
from docsort.jobs import classify as cl
from docsort.core.finetune import FineTuneError, train_classifier
from docsort.store.manifest import effective_settings
from docsort.queries.tables import info
from docsort.jobs.ingest import ingest
from docsort.store.storage import Collection
from docsort.core.weights import sidecar_path

from .conftest import QUIET, SAMPLE_DOCS, TRAIN_FILES as FILES, sample_labels

#: labelled: 3 sheet_music, 3 book_page, 2 newspaper (so 2 folds); unlabelled: the other 4 pages
LABELLED = {("bois-2-5.pdf", 1), ("bois-2-5.pdf", 2), ("bois-2-5.pdf", 3), ("book-pages.pdf", 1), ("book-pages.pdf", 2),
            ("book-pages.pdf", 3), ("pageseg1.png", 1), ("pageseg2.png", 1)}
TINY = {"epochs": 1, "batch_size": 4, "seed": 5}


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_settings):
    """A 12-page collection with 8 pages labelled from sample_docs/labels.csv (bundled weights)."""
    truth = {(k[0].split("/")[-1], k[1]): v for k, v in sample_labels().items()}
    root = tmp_path_factory.mktemp("ft_base")
    docs = root / "docs"
    docs.mkdir()
    for f in FILES:
        shutil.copy(SAMPLE_DOCS / f, docs / f.split("/")[-1])
    with Collection(root / "col", create=True) as col:
        rep = ingest(col, [docs], small_settings, **QUIET)
        assert rep.failures == [] and col.counts()["pages"] == 12
        for rec in col.pages():
            key = (rec.path.split("/")[-1], rec.page_no)
            if key in LABELLED:
                cl.label_pages(col, [rec.page_id], truth[key], who="test")
        assert cl.label_counts(col) == {"book_page": 3, "newspaper": 2, "sheet_music": 3}
    return root


def _copy(base, tmp_path):
    shutil.copytree(base / "docs", tmp_path / "docs")
    shutil.copytree(base / "col", tmp_path / "col", ignore=shutil.ignore_patterns(".lock"))
    with Collection(tmp_path / "col") as col:
        with col.transaction() as c:
            for table in ("documents", "document_paths"):
                c.execute(f"UPDATE {table} SET path = REPLACE(path, ?, ?)", (str(base / "docs"), str(tmp_path / "docs")))
    return tmp_path / "col"


def _predictions(col):
    return {int(p): (t, v) for p, t, v in col.query("SELECT page_id, type, model_version FROM page_predictions")}


def _unlabelled(col):
    return [int(r[0]) for r in col.query(
        "SELECT p.id FROM pages p LEFT JOIN page_labels l ON l.page_id = p.id WHERE l.page_id IS NULL ORDER BY p.id")]


def test_not_kept_when_not_better(base, small_settings, tmp_path):
    """A baseline no accuracy can exceed: the frozen classifier stays in use and types the pages."""
    root = _copy(base, tmp_path)
    with Collection(root) as col:
        rep = fine_tune(col, effective_settings(col, small_settings), baseline=1.0, **TINY, **QUIET)
        assert rep.folds == 2 and rep.labelled == 8 and "stratified 2-fold" in rep.cv_method
        assert 0.0 <= rep.frozen_accuracy <= 1.0 and 0.0 <= rep.fine_tuned_accuracy <= 1.0
        assert not rep.kept and rep.in_use == "frozen" and rep.weights_sha256 == ""
        assert not (root / Collection.FINE_TUNED).exists()
        preds = _predictions(col)
        assert sorted(preds) == _unlabelled(col) and rep.typed == 4
        assert all(not v.startswith("ft-") for _, v in preds.values())  # the frozen classifier's versions
        m = col.manifest()
        assert m["fine_tune"]["in_use"] == "frozen" and m["classifier"]["in_use"] == "frozen"
        assert m["fine_tune"]["frozen_accuracy"] == round(rep.frozen_accuracy, 4)
        assert m["fine_tune"]["fine_tuned_accuracy"] == round(rep.fine_tuned_accuracy, 4)
        assert info(col)["classifier_in_use"].startswith("frozen")
        assert not fine_tuned_in_use(col)


def test_kept_when_better_stores_weights_and_types_reread_pages(base, small_settings, tmp_path):
    """A baseline every accuracy exceeds: the fine-tuned model is stored with its sha256 and types
    the unlabelled pages it can re-read; one whose file moved is left untyped and counted."""
    root = _copy(base, tmp_path)
    (tmp_path / "docs" / "pageseg3.png").rename(tmp_path / "pageseg3.png")  # unlabelled, its file moved
    messages = []
    with Collection(root) as col:
        moved = [r.page_id for r in col.pages() if r.path.endswith("pageseg3.png")]
        rep = fine_tune(col, effective_settings(col, small_settings), baseline=-1.0, **TINY, progress=False,
                        log=messages.append)
        assert rep.kept and rep.in_use == "fine-tuned"
        assert 0.0 <= rep.frozen_accuracy <= 1.0 and 0.0 <= rep.fine_tuned_accuracy <= 1.0
        f = root / Collection.FINE_TUNED
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        side = json.loads(sidecar_path(f).read_text())
        m = col.manifest()
        assert rep.weights_sha256 == sha == side["sha256"] == m["fine_tune"]["sha256"]
        assert side["classes"] == m["fine_tune"]["classes"] == ["book_page", "newspaper", "sheet_music"]
        assert m["fine_tune"]["in_use"] == "fine-tuned" and m["fine_tune"]["file"] == Collection.FINE_TUNED
        assert m["fine_tune"]["label_hash"] == cl.label_set_hash(col)
        preds = _predictions(col)
        assert sorted(preds) == [i for i in _unlabelled(col) if i not in moved]  # the moved page has no type
        assert {v for _, v in preds.values()} == {"ft-" + sha[:9]}
        assert {t for t, _ in preds.values()} <= {"book_page", "newspaper", "sheet_music"}
        assert rep.typed == 3 and rep.untyped_moved == 1
        assert any("left untyped" in m and "moved" in m for m in messages)
        assert info(col)["classifier_in_use"].startswith("fine-tuned")
        assert fine_tuned_in_use(col)
        assert cl.after_ingest(col, small_settings) is None  # the frozen classifier does not mix its predictions in
        type_after_ingest(col, small_settings)  # and the fine-tuned one has nothing new to type
        assert _predictions(col) == preds
        # a plain classify goes back to the frozen classifier and says so in the manifest
        cl.classify_collection(col, small_settings.classifier)
        assert not fine_tuned_in_use(col) and col.manifest()["classifier"]["in_use"] == "frozen"
        assert all(not v.startswith("ft-") for _, v in _predictions(col).values())


def test_cli_reports_both_accuracies_and_applies_the_measured_rule(base, tmp_path):
    from typer.testing import CliRunner

    from docsort.faces.cli import app

    root = _copy(base, tmp_path)
    # the collection's own (128x128) settings are pinned by its manifest
    res = CliRunner().invoke(app, ["classify", "--fine-tune", "--epochs", "1", "--seed", "5", "--no-progress",
                                   "--collection", str(root), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout[res.stdout.index("{"):])
    assert data["kept"] == (data["fine_tuned_accuracy"] > data["frozen_accuracy"])
    assert data["in_use"] == ("fine-tuned" if data["kept"] else "frozen")
    assert (root / Collection.FINE_TUNED).exists() == data["kept"]
    with Collection(root) as col:
        assert col.manifest()["fine_tune"]["in_use"] == data["in_use"]
    res = CliRunner().invoke(app, ["info", "--collection", str(root), "--json"])
    assert json.loads(res.stdout[res.stdout.index("{"):])["classifier_in_use"].startswith(data["in_use"])
    # the table for people: both accuracies and the model in use (same seed, same machine: same figures)
    res = CliRunner().invoke(app, ["classify", "--fine-tune", "--epochs", "1", "--seed", "5", "--no-progress",
                                   "--collection", str(root)])
    assert res.exit_code == 0, res.output
    assert "frozen features + logistic regression" in res.stdout and f"{data['frozen_accuracy']:.3f}" in res.stdout
    assert f"{data['fine_tuned_accuracy']:.3f}" in res.stdout and f"in use: {data['in_use']}" in res.stdout


def test_training_is_seeded_and_refuses_one_type(small_settings):
    from PIL import Image

    from docsort.store.manifest import make_extractor

    ims = [Image.open(SAMPLE_DOCS / f"leptonica/pageseg{i}.png").convert("L") for i in (1, 2, 3, 4)]
    for im in ims:
        im.thumbnail((300, 300))
    runs = []
    for _ in range(2):
        ex = make_extractor(small_settings, announce=False)
        tuned = train_classifier(ex.model, ims, ["a", "a", "b", "b"], preprocessing=ex.weights.preprocessing,
                                 pooling=small_settings.features.pooling, epochs=1, batch_size=2, seed=7)
        assert tuned.classes == ["a", "b"] and tuned.report.steps == 2 and tuned.report.trainable_params > 0
        runs.append([w.copy() for w in tuned.model.get_weights()])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    with pytest.raises(FineTuneError, match="two document types"):
        train_classifier(ex.model, ims, ["a"] * 4, preprocessing=ex.weights.preprocessing, epochs=1)


def test_refuses_too_few_labels_per_type(base, small_settings, tmp_path):
    root = _copy(base, tmp_path)
    with Collection(root) as col:
        keep = [r.page_id for r in col.pages() if r.path.endswith("pageseg2.png")]
        cl.unlabel(col, keep)  # newspaper keeps one labelled page: no fold can hold it out
        with pytest.raises(FineTuneError, match="at least two readable labelled pages"):
            fine_tune(col, effective_settings(col, small_settings), **TINY, **QUIET)


def test_pages_ingested_later_are_typed_by_the_fine_tuned_classifier(base, small_settings, tmp_path):
    """After a kept fine-tune, ingest types new pages with the stored model (rebuilt from the weights
    file and the standardisation beside it): the probabilities equal those of the model that was
    just trained, page for page, and no frozen prediction is mixed in. A tampered standardisation
    is refused and reported, and the pages are left untyped."""
    root = _copy(base, tmp_path)
    with Collection(root) as col:
        settings = effective_settings(col, small_settings)
        rep = fine_tune(col, settings, baseline=-1.0, **TINY, **QUIET)
        assert rep.kept
        version = "ft-" + rep.weights_sha256[:9]
        trained = {int(p): (t, pr) for p, t, pr in col.query("SELECT page_id, type, probability FROM page_predictions")}
        assert len(trained) == 4
        # the stored model gives the trained model's predictions: drop two and type them again
        again = sorted(trained)[:2]
        with col.transaction() as c:
            c.executemany("DELETE FROM page_predictions WHERE page_id = ?", [(i,) for i in again])
        messages = []
        type_after_ingest(col, settings, log=messages.append)
        now = {int(p): (t, pr, v) for p, t, pr, v in col.query("SELECT page_id, type, probability, model_version FROM page_predictions")}
        assert sorted(now) == sorted(trained)
        for i in again:
            assert now[i][0] == trained[i][0] and now[i][1] == pytest.approx(trained[i][1], abs=1e-5) and now[i][2] == version
        assert any("typed 2 new pages with the fine-tuned classifier " + version in m for m in messages)

    # a new document, ingested later: typed by the fine-tuned model as part of the ingest
    shutil.copy(SAMPLE_DOCS / "leptonica/pageseg4.png", tmp_path / "docs" / "pageseg4.png")
    with Collection(root) as col:
        messages = []
        ingest(col, [tmp_path / "docs"], settings, progress=False, log=messages.append)
        new = [r.page_id for r in col.pages() if r.path.endswith("pageseg4.png")]
        assert len(new) == 1
        row = col.query("SELECT type, model_version FROM page_predictions WHERE page_id = ?", (new[0],))
        assert row and row[0][1] == version and row[0][0] in {"book_page", "newspaper", "sheet_music"}
        assert any("typed 1 new pages with the fine-tuned classifier" in m for m in messages)
        assert all(v == version for _, v in _predictions(col).values())

    # a standardisation that is not the one recorded is refused, and said
    side_file = sidecar_path(root / Collection.FINE_TUNED)
    side = json.loads(side_file.read_text())
    side["standardise_mean"][0] += 1.0
    side_file.write_text(json.dumps(side))
    with Collection(root) as col:
        with col.transaction() as c:
            c.execute("DELETE FROM page_predictions WHERE page_id = ?", (new[0],))
        messages = []
        type_after_ingest(col, settings, log=messages.append)
        assert any("new pages not typed" in m and "standardisation" in m for m in messages)
        assert not col.query("SELECT 1 FROM page_predictions WHERE page_id = ?", (new[0],))

    # the standardisation put right, docsort sort-by-type types the page left out before it sorts
    side["standardise_mean"][0] -= 1.0
    side_file.write_text(json.dumps(side))
    from typer.testing import CliRunner

    from docsort.faces.cli import app

    res = CliRunner().invoke(app, ["sort-by-type", str(tmp_path / "sorted"), "--collection", str(root)])
    assert res.exit_code == 0, res.output
    assert "typed 1 new pages with the fine-tuned classifier" in res.output
    with Collection(root) as col:
        row = col.query("SELECT type, model_version FROM page_predictions WHERE page_id = ?", (new[0],))
        assert row and row[0][1] == version
    assert list((tmp_path / "sorted").glob(f"{row[0][0]}/pageseg4*"))  # in its type's folder, not unclassified
