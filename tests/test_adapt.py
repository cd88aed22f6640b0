"""docsort adapt (issue 14): fine-tuning on the collection, stored weights, re-embedding, resume.

Real pages of sample_docs (12 of them: two PDFs and three PNGs), bundled weights, a 128x128
network input and 1 epoch, so a run takes seconds. Nothing here asserts sorting quality (that is
benchmarks/adapt_study.py's job); it asserts provenance, that vectors are never mixed, resume
after a crash, and determinism for a seed on this machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from docsort.jobs.adaptation import adapt  # first: imports docsort.store.storage (sqlite3) before TensorFlow
from docsort.core.adapt import AdaptError, augment_view, set_trainable, train_contrastive, training_twin
from docsort.store.manifest import effective_settings
from docsort.queries.tables import info
from docsort.jobs.ingest import ingest
from docsort.store.storage import Collection, CollectionError
from docsort.core.weights import BUNDLED_WEIGHTS, WeightsError, file_sha256, sidecar_path

from .conftest import QUIET, SAMPLE_DOCS, TRAIN_FILES as FILES

# The fast tier (pytest -m "not slow") leaves this file out: it trains the network (TensorFlow).
pytestmark = pytest.mark.slow

TINY = {"epochs": 1, "batch_size": 6, "seed": 3}


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_settings):
    """A 12-page collection (and its document folder) ingested with the bundled weights."""
    root = tmp_path_factory.mktemp("adapt_base")
    docs = root / "docs"
    docs.mkdir()
    for f in FILES:
        shutil.copy(SAMPLE_DOCS / f, docs / f.split("/")[-1])
    with Collection(root / "col", create=True) as col:
        rep = ingest(col, [docs], small_settings, **QUIET)
        assert rep.failures == [] and col.counts()["pages"] == 12
    return root


def _copy(base, tmp_path):
    shutil.copytree(base / "docs", tmp_path / "docs")
    shutil.copytree(base / "col", tmp_path / "col", ignore=shutil.ignore_patterns(".lock"))
    # the copied collection must read the copied files: rewrite its recorded paths
    with Collection(tmp_path / "col") as col:
        with col.transaction() as c:
            for table in ("documents", "document_paths"):
                c.execute(f"UPDATE {table} SET path = REPLACE(path, ?, ?)", (str(base / "docs"), str(tmp_path / "docs")))
    return tmp_path / "col"


@pytest.fixture(scope="module")
def adapted(base, small_settings, tmp_path_factory):
    """The base collection adapted once (uninterrupted): (root, report, old vectors)."""
    root = _copy(base, tmp_path_factory.mktemp("adapted"))
    with Collection(root) as col:
        _, old = col.vectors()
        report = adapt(col, effective_settings(col, small_settings), **TINY, **QUIET)
    return root, report, old


def test_views_are_seeded_and_keep_the_page_size(small_settings):
    from PIL import Image

    im = Image.open(SAMPLE_DOCS / "leptonica/pageseg1.png").convert("L")
    im.thumbnail((400, 400))
    a = augment_view(im, (128, 128), np.random.default_rng(1))
    b = augment_view(im, (128, 128), np.random.default_rng(1))
    c = augment_view(im, (128, 128), np.random.default_rng(2))
    assert a.shape == (128, 128, 1) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_layer_choices_train_nested_sets_of_parameters():
    from docsort.core.features import build_inception_backbone
    from docsort.core.weights import resolve_weights

    model = build_inception_backbone(resolve_weights("bundled", None, announce=False), "mixed1", (128, 128))
    n1, n01, nall = (set_trainable(model, x) for x in ("mixed1", "mixed0,mixed1", "all"))
    assert 0 < n1 < n01 < nall
    with pytest.raises(AdaptError, match="unknown --layers"):
        set_trainable(model, "mixed5")


def test_bfloat16_training_is_seeded_and_leaves_float32_weights():
    """Mixed-precision training (bfloat16 compute, float32 variables) is deterministic for a seed,
    trains the chosen block and nothing else, computes float32's loss within 2 %, and leaves the
    float32 model with float32 weights."""
    from PIL import Image

    from docsort.core.features import build_inception_backbone
    from docsort.core.weights import resolve_weights

    weights = resolve_weights("bundled", None, announce=False)
    ims = [Image.open(SAMPLE_DOCS / f"leptonica/pageseg{i}.png").convert("L") for i in (1, 2, 3, 4)]
    for im in ims:
        im.thumbnail((300, 300))
    start = build_inception_backbone(weights, "mixed1", (128, 128)).get_weights()
    runs, losses = {}, {}
    for name, precision in (("bf16", "bfloat16"), ("bf16 again", "bfloat16"), ("f32", "float32")):
        model = build_inception_backbone(weights, "mixed1", (128, 128))
        twin = training_twin(model, precision)
        assert (twin is model) == (precision == "float32")
        rep = train_contrastive(model, ims, preprocessing=weights.preprocessing, epochs=1, batch_size=4, seed=3,
                                precision=precision)
        assert rep.steps == 1 and np.isfinite(rep.losses).all()
        losses[name] = rep.losses[0]
        runs[name] = model.get_weights()
        assert all(w.dtype == np.float32 for w in runs[name]) and model.dtype_policy.name == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(runs["bf16"], runs["bf16 again"]))
    changed = [not np.array_equal(a, b) for a, b in zip(start, runs["bf16"])]
    assert any(changed) and not all(changed)  # the mixed1 block moved, the stem did not
    assert changed == [not np.array_equal(a, b) for a, b in zip(start, runs["f32"])]
    # the one step's loss is computed before the update: bfloat16's forward pass gives float32's loss
    assert losses["bf16"] == pytest.approx(losses["f32"], rel=0.02), losses
    with pytest.raises(AdaptError, match="unknown training precision"):
        training_twin(model, "float16")


def test_adapted_weights_are_stored_with_their_checksum_and_recorded(adapted):
    root, report, _ = adapted
    assert report.trained and report.pages_trained == 12 and report.pages_skipped == 0 and report.epochs_run == 1
    wfile = root / Collection.ADAPTED_WEIGHTS
    sha = file_sha256(wfile)
    assert sha == hashlib.sha256(wfile.read_bytes()).hexdigest() == report.weights_sha256
    assert json.loads(sidecar_path(wfile).read_text())["sha256"] == sha
    m = json.loads((root / Collection.MANIFEST).read_text())
    a = m["adaptation"]
    assert a["state"] == "done" and a["sha256"] == sha
    assert a["base_weights"]["sha256"] == file_sha256(BUNDLED_WEIGHTS) and a["base_weights"]["source"] == "bundled"
    assert a["objective"]["name"].startswith("NT-Xent") and a["objective"]["temperature"] == 0.1
    assert a["augmentations"]["styles"] and a["epochs"] == 1 and a["seed"] == 3 and a["layers"] == "mixed1"
    assert a["training_precision"] == "float32"  # the default
    assert "tensorflow" in a["libraries"] and "keras" in a["libraries"]
    assert m["features"]["weights"]["sha256"] == sha  # the vectors in use are the adapted network's
    with Collection(root) as col:
        assert col.vectors_weights_sha256() == sha
        assert "yes" in info(col)["adapted_weights"]


def test_every_vector_is_re_embedded_with_the_adapted_network(adapted, small_settings, tmp_path):
    root, report, old = adapted
    assert report.pages_embedded == 12 and report.pages_resumed == 0
    with Collection(root) as col:
        ids, new = col.vectors()
        assert col.staged_page_ids(report.weights_sha256) == set()
        docs = {p for d in col.query("SELECT path FROM documents") for p in d}
    assert not np.isclose(new, old, atol=1e-6).all(axis=1).any()  # no page kept its old vector
    # A new collection started from these weights (--weights PATH) makes exactly these vectors.
    with Collection(tmp_path / "fresh", create=True) as fresh:
        s = effective_settings(fresh, small_settings, weights=str(root / Collection.ADAPTED_WEIGHTS))
        ingest(fresh, sorted(docs), s, **QUIET)
        fids, fvec = fresh.vectors()
        assert fresh.manifest()["features"]["weights"]["sha256"] == report.weights_sha256
        assert fresh.manifest()["features"]["preprocessing"] == "unit"  # the base weights' scheme, from the sidecar
    order = {tuple(r): i for i, r in enumerate(new.round(5).tolist())}
    assert len(fids) == 12 and all(tuple(v) in order for v in fvec.round(5).tolist())


def test_ingest_with_the_base_weights_into_an_adapted_collection_is_refused(adapted, small_settings, tmp_path):
    root, _, _ = adapted
    col_dir = tmp_path / "col"
    shutil.copytree(root, col_dir, ignore=shutil.ignore_patterns(".lock"))
    extra = tmp_path / "extra.jpg"
    shutil.copy(SAMPLE_DOCS / "leptonica/map1.jpg", extra)
    with Collection(col_dir) as col:
        with pytest.raises(CollectionError, match="refusing to mix"):
            ingest(col, [extra], effective_settings(col, small_settings, weights="bundled"), **QUIET)
        assert col.counts()["pages"] == 12
        # with the collection's own (adapted) settings the page goes in, embedded by the adapted network
        rep = ingest(col, [extra], effective_settings(col, small_settings), **QUIET)
        assert rep.pages_added == 1


def test_weights_of_another_collection_are_checked_against_its_manifest(adapted, small_settings, tmp_path):
    root, _, _ = adapted
    other = tmp_path / "other"
    shutil.copytree(root, other, ignore=shutil.ignore_patterns(".lock"))
    m = json.loads((other / Collection.MANIFEST).read_text())
    m["adaptation"]["sha256"] = "0" * 64
    (other / Collection.MANIFEST).write_text(json.dumps(m))
    with Collection(tmp_path / "new", create=True) as col:
        with pytest.raises(WeightsError, match="differs from the one its collection recorded"):
            effective_settings(col, small_settings, weights=str(other / Collection.ADAPTED_WEIGHTS))


def test_a_crash_during_re_embedding_keeps_the_old_vectors_and_the_rerun_finishes(base, adapted, small_settings, tmp_path,
                                                                                    monkeypatch):
    root = _copy(base, tmp_path)
    calls = {"n": 0}
    real = Collection.stage_vectors

    def crash_after_one_batch(self, *a, **k):
        if calls["n"] == 1:
            raise RuntimeError("simulated kill")
        calls["n"] += 1
        return real(self, *a, **k)

    with Collection(root) as col:
        _, old = col.vectors()
        settings = effective_settings(col, small_settings)
        monkeypatch.setattr(Collection, "stage_vectors", crash_after_one_batch)
        with pytest.raises(RuntimeError, match="simulated kill"):
            adapt(col, settings, **TINY, **QUIET)
        monkeypatch.setattr(Collection, "stage_vectors", real)
        m = col.manifest()
        assert m["adaptation"]["state"] == "re-embedding"
        assert m["features"]["weights"]["source"] == "bundled"  # still describes the vectors in use
        _, now = col.vectors()
        assert np.array_equal(now, old)  # nothing swapped: all old vectors
        assert len(col.staged_page_ids(m["adaptation"]["sha256"])) == 4  # one batch of 4 staged
        assert "unfinished" in info(col)["adapted_weights"]
        report = adapt(col, effective_settings(col, small_settings), **TINY, **QUIET)
        assert not report.trained and report.pages_resumed == 4 and report.pages_embedded == 8
        ids, vec = col.vectors()
        assert len(ids) == 12 == len(set(ids.tolist()))
        assert col.manifest()["adaptation"]["state"] == "done"
    # Same seed, same pages, same machine: the same weights and vectors as the uninterrupted run.
    aroot, _, _ = adapted
    with Collection(aroot) as acol:
        assert np.array_equal(vec, acol.vectors()[1])


def test_pages_whose_file_moved_are_skipped_for_training_and_block_the_swap(base, small_settings, tmp_path):
    root = _copy(base, tmp_path)
    (tmp_path / "docs" / "pageseg1.png").rename(tmp_path / "moved.png")
    with Collection(root) as col:
        _, old = col.vectors()
        with pytest.raises(AdaptError, match="1 pages could not be re-read"):
            adapt(col, effective_settings(col, small_settings), **TINY, **QUIET)
        assert np.array_equal(col.vectors()[1], old)
        assert col.manifest()["adaptation"]["pages_skipped"] == 1
        assert col.manifest()["adaptation"]["pages_trained"] == 11
        (tmp_path / "moved.png").rename(tmp_path / "docs" / "pageseg1.png")
        report = adapt(col, effective_settings(col, small_settings), **TINY, **QUIET)
        assert not report.trained and report.pages_embedded == 1 and report.pages_resumed == 11


@pytest.mark.slow
def test_cli_adapt_then_info_says_adapted(base, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = _copy(base, tmp_path)
    docsort = str(Path(sys.executable).with_name("docsort"))
    env = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}

    def run(*args):
        return subprocess.run([docsort, *args], capture_output=True, text=True, env=env, timeout=600)

    bad = run("adapt", "-c", str(root), "--layers", "mixed9", "--no-progress")
    assert bad.returncode == 2 and "unknown --layers" in bad.stderr
    bad = run("adapt", "-c", str(root), "--precision", "float16", "--no-progress")
    assert bad.returncode == 2 and "unknown --precision" in bad.stderr
    res = run("adapt", "-c", str(root), "--epochs", "1", "--seed", "5", "--precision", "bfloat16", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "trained 1 epoch(s) on 12 pages" in res.stdout and "re-embedded 12 pages" in res.stdout
    assert json.loads((root / Collection.MANIFEST).read_text())["adaptation"]["training_precision"] == "bfloat16"
    data = json.loads(run("info", "-c", str(root), "--json").stdout)
    assert data["adapted_weights"].startswith("yes") and data["weights_source"] == "path"
    assert data["weights_sha256"] == file_sha256(root / Collection.ADAPTED_WEIGHTS)
