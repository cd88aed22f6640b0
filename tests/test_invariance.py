"""Scan-style-invariant vectors (issue 13): the styles stage, the projection stage, and the job
that fits the projection at ``docsort cluster`` and applies it to index, search, export.

All on the real pages of sample_docs/ (bundled weights). sample_docs has 41 pages, fewer than
the default ``invariance.min_pages``, so ``inv_collection`` is a copy of the shared collection
re-clustered with ``min_pages = 20`` (``inv_settings``), which fits a projection on it.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from docsort.core.invariance import InvarianceError, InvarianceProjection, fit_projection, stored_projection, within_between_ratio
from docsort.core.pages import discover_files, iter_pages
from docsort.jobs.invariance import _needs_fit, fit_invariance, style_views
from docsort.queries.vectors import active_projection, page_vectors, visual_index_path
from docsort.jobs.cluster import cluster
from docsort.jobs.export import export_pages
from docsort.jobs.ingest import ingest
from docsort.queries.search import search_file, search_page
from docsort.store.storage import Collection
from docsort.core.styles import DEFAULT_STYLES, STYLES, otsu_threshold, page_rng, render_styles, restyle

from .conftest import SAMPLE_DOCS

QUIET = {"progress": False, "log": lambda m: None}


def _page(name: str, settings, page_no: int = 1) -> Image.Image:
    [src] = list(discover_files([SAMPLE_DOCS / name]))
    return next(iter_pages(src, settings.render, page_no, page_no)).image


@pytest.fixture(scope="module")
def inv_settings(settings):
    """The default settings with ``invariance.min_pages = 20`` (sample_docs has 41 pages)."""
    return settings.model_copy(update={"invariance": settings.invariance.model_copy(update={"min_pages": 20})})


@pytest.fixture(scope="module")
def inv_collection(sample_collection, inv_settings, extractor, tmp_path_factory):
    """A copy of the sample collection clustered with ``inv_settings``: it has a projection. Read-only."""
    root = tmp_path_factory.mktemp("inv") / "collection"
    shutil.copytree(sample_collection, root, ignore=shutil.ignore_patterns(".lock"))
    with Collection(root) as col:
        cluster(col, inv_settings, extractor=extractor, **QUIET)
    return root


@pytest.fixture
def inv_copy(inv_collection, tmp_path):
    """A private, writable copy of ``inv_collection``."""
    dst = tmp_path / "collection"
    shutil.copytree(inv_collection, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@pytest.fixture(scope="module")
def views(sample_collection, settings, extractor):
    """(ids, float32 (41, 5, D)) every sample page in the default styles."""
    with Collection(sample_collection) as col:
        ids, v, skipped = style_views(col, settings, col.page_ids(), extractor=extractor)
    assert skipped == 0 and v.shape[:2] == (41, len(DEFAULT_STYLES))
    return ids, v


# -- styles ------------------------------------------------------------------------------------


def test_styles_are_deterministic_per_seed_and_really_different(settings):
    page = _page("leptonica/1555.007.jpg", settings)  # a greyscale photo of a printed page
    a = render_styles(page, STYLES, page_rng(0, 7))
    b = render_styles(page, STYLES, page_rng(0, 7))
    c = render_styles(page, STYLES, page_rng(0, 8))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    assert all(x.size == page.size and x.mode == page.mode for x in a)
    arr = {s: np.asarray(im, np.float64) for s, im in zip(STYLES, a)}
    assert np.array_equal(arr["as_is"], np.asarray(page, np.float64))
    assert set(np.unique(arr["bilevel"])) == {0.0, 255.0}  # two-valued
    assert len(np.unique(arr["bilevel_blur"])) > 2  # grey edges
    spread = {s: np.percentile(arr[s], 99.5) - np.percentile(arr[s], 0.5) for s in ("as_is", "grey_paper")}
    assert arr["grey_paper"].max() < 250 and spread["grey_paper"] < spread["as_is"]  # ink and paper drawn together
    for s in STYLES[1:]:
        assert np.abs(arr[s] - arr["as_is"]).mean() > 2.0, s  # really another rendering
    # another page id draws another paper tone / JPEG quality
    assert a[STYLES.index("grey_paper")].tobytes() != c[STYLES.index("grey_paper")].tobytes()
    with pytest.raises(ValueError, match="unknown scan style"):
        restyle(page, "sepia", page_rng(0, 1))


def test_otsu_separates_ink_from_paper_on_a_real_scan(settings):
    page = np.asarray(_page("leptonica/pageseg1.png", settings))
    t = otsu_threshold(page)
    ink = page <= t
    assert 0.01 < ink.mean() < 0.5  # text is a minority of the page
    assert page[ink].mean() + 60 < page[~ink].mean()
    assert otsu_threshold(np.full((10, 10), 200, np.uint8)) == 200  # a flat page stays as it is


def test_rgb_pages_are_restyled_in_rgb(settings):
    page = _page("leptonica/map1.jpg", settings).convert("RGB")
    out = render_styles(page, DEFAULT_STYLES, page_rng(1, 1))
    assert all(im.mode == "RGB" and im.size == page.size for im in out)


# -- the projection --------------------------------------------------------------------------


def test_projection_pulls_renderings_of_a_page_together_on_held_out_pages(views):
    """Fitted on half the pages, the projection raises (same-page cosine - other-page cosine)
    on the other half: it learned scan style, not those pages."""
    _, v = views
    rng = np.random.default_rng(0)
    gains = []
    for _ in range(3):
        order = rng.permutation(len(v))
        fit, held = v[order[:24]], v[order[24:]]
        proj = fit_projection(fit, dims=16)
        raw, projected = within_between_ratio(held), within_between_ratio(held, proj.transform)
        gains.append(projected - raw)
    assert min(gains) > 0.1, gains


def test_projection_on_its_own_pages_and_its_bytes(views):
    _, v = views
    proj = fit_projection(v, dims=32)
    assert proj.dims == 32 and proj.input_dim == v.shape[2]
    assert within_between_ratio(v, proj.transform) > within_between_ratio(v) + 0.3
    Y = proj.transform(v[:, 0])
    assert Y.dtype == np.float32 and Y.shape == (41, 32) and np.allclose(np.linalg.norm(Y, axis=1), 1, atol=1e-5)
    # centred: unlike the raw (all-positive) features, cosines of different pages spread around 0
    C = Y @ Y.T
    assert np.median(C[~np.eye(41, dtype=bool)]) < 0.3
    again = fit_projection(v.copy(), dims=32)
    assert again.to_bytes() == proj.to_bytes() and again.sha256 == proj.sha256
    back = InvarianceProjection.from_bytes(proj.to_bytes())
    assert np.array_equal(back.transform(v[:, 1]), proj.transform(v[:, 1])) and back.sha256 == proj.sha256
    assert fit_projection(v[:5], dims=32).dims == 4  # at most pages - 1 directions
    with pytest.raises(InvarianceError):
        fit_projection(v[:, :1])
    with pytest.raises(InvarianceError):
        InvarianceProjection.from_bytes(proj.to_bytes()[:-3])
    with pytest.raises(ValueError):
        proj.transform(np.zeros((2, 5), np.float32))


# -- the job ---------------------------------------------------------------------------------


def test_cluster_stores_the_projection_with_its_checksum_in_the_manifest(inv_collection, inv_settings):
    with Collection(inv_collection) as col:
        entry = col.manifest()["invariance"]
        data = (col.root / Collection.INVARIANCE).read_bytes()
        proj = stored_projection(col)
        run = col.last_cluster_run()
    assert entry["active"] and entry["sha256"] == hashlib.sha256(data).hexdigest() == proj.sha256
    assert entry["dims"] == 32 and entry["styles"] == list(DEFAULT_STYLES) and entry["n_pages_fitted"] == 41
    assert entry["pages_at_fit"] == 41 and entry["pages_skipped"] == 0 and entry["seed"] == 0
    assert run["settings"]["invariance_sha256"] == proj.sha256  # the clustering ran on these vectors
    assert (inv_collection / f"index.{proj.sha256[:16]}.faiss").is_file()


def test_refit_is_byte_identical_and_a_damaged_file_is_not_used(inv_copy, inv_settings, extractor):
    with Collection(inv_copy) as col:
        before = col.manifest()["invariance"]["sha256"]
        with col.write_lock():
            assert fit_invariance(col, inv_settings, extractor=extractor, **QUIET).action == "kept"
            report = fit_invariance(col, inv_settings, extractor=extractor, force=True, **QUIET)
        assert report.action == "fitted" and report.projection.sha256 == before
        (col.root / Collection.INVARIANCE).write_bytes(b"damaged")
        assert stored_projection(col) is None and visual_index_path(col, inv_settings) == col.root / Collection.INDEX
        assert "does not match its sha256" in _needs_fit(col, inv_settings, 41)


def test_refit_when_the_collection_has_grown_by_half_or_settings_change(inv_copy, inv_settings):
    with Collection(inv_copy) as col:
        assert _needs_fit(col, inv_settings, 41) is None
        assert _needs_fit(col, inv_settings, 61) is None  # 41 * 1.5 = 61.5
        assert "grew from 41 to 62 pages" in _needs_fit(col, inv_settings, 62)
        other = inv_settings.model_copy(update={"invariance": inv_settings.invariance.model_copy(update={"dims": 16})})
        assert "settings changed" in _needs_fit(col, other, 41)
        unchanged = inv_settings.model_copy(update={"invariance": inv_settings.invariance.model_copy(update={"refit_growth": 2.0})})
        assert _needs_fit(col, unchanged, 62) is None


def test_new_pages_use_the_stored_projection(inv_copy, inv_settings, extractor, tmp_path):
    page = _page("leptonica/1555.007.jpg", inv_settings)
    bilevel = restyle(page, "bilevel", page_rng(5, 5))
    bilevel.convert("1").save(tmp_path / "fax.tif", compression="group4")
    with Collection(inv_copy) as col:
        proj = stored_projection(col)
        report = ingest(col, [tmp_path / "fax.tif"], inv_settings, extractor=extractor, **QUIET)
        assert report.pages_added == 1 and "scan-style invariant 32-d" in report.index and "42 vectors" in report.index
        assert report.provisional_pages == 1  # placed by the stored clustering, on projected vectors
        assert stored_projection(col).sha256 == proj.sha256
        ids, raw = col.vectors()
        pv = page_vectors(col, inv_settings, "visual")
        assert np.allclose(pv.vectors, proj.transform(raw), atol=1e-6)


def test_a_bilevel_rerendering_of_a_stored_greyscale_page_finds_that_page_first(inv_collection, inv_settings, extractor, tmp_path):
    names = ["leptonica/1555.007.jpg", "leptonica/cavalerie.29.jpg", "leptonica/map1.jpg", "leptonica/zanotti-78.jpg",
             "ocrmypdf/c03-29.jpg"]
    with Collection(inv_collection) as col:
        table = col.page_table()
        for i, name in enumerate(names):
            path = str((SAMPLE_DOCS / name).absolute())
            want = int(table[(table["path"] == path) & (table["page"] == 1)]["page_id"].iloc[0])
            query = tmp_path / f"q{i}.png"
            restyle(_page(name, inv_settings), "bilevel", page_rng(9, i)).save(query)
            result = search_file(col, query, inv_settings, k=3, extractor=extractor, mode="visual", log=lambda m: None)
            assert result.pages[0].page_id == want, (name, [(h.path, h.score) for h in result.pages])
            assert "scan-style-invariant" in result.score_note


def test_scores_spread_once_projected(inv_collection, inv_settings):
    off = inv_settings.model_copy(update={"invariance": inv_settings.invariance.model_copy(update={"enabled": False})})
    with Collection(inv_collection) as col:
        on_scores = [h.score for h in search_page(col, 3, inv_settings, k=10).pages[1:]]
        off_scores = [h.score for h in search_page(col, 3, off, k=10).pages[1:]]
    assert min(off_scores) > 0.9  # the raw cosine: every neighbour looks alike
    assert max(on_scores) - min(on_scores) > 0.1 and min(on_scores) < 0.6


def test_disabled_gives_the_old_vectors_exactly(inv_copy, inv_settings, extractor):
    off = inv_settings.model_copy(update={"invariance": inv_settings.invariance.model_copy(update={"enabled": False})})
    with Collection(inv_copy) as col:
        ids, raw = col.vectors()
        assert active_projection(col, off) is None
        pv = page_vectors(col, off, "visual")
        assert np.array_equal(pv.vectors, raw) and np.array_equal(pv.ids, ids)
        assert visual_index_path(col, off) == col.root / Collection.INDEX
        hit = search_page(col, 1, off, k=2).pages[1]
        assert hit.score == pytest.approx(float(raw[0] @ raw[ids == hit.page_id][0]), abs=1e-5)
        with col.write_lock():
            assert fit_invariance(col, off, extractor=extractor, **QUIET).action == "disabled"
        assert col.manifest()["invariance"]["active"] is False and stored_projection(col) is None


def test_too_few_pages_use_the_raw_vectors(tmp_path, inv_settings, extractor):
    with Collection(tmp_path / "small", create=True) as col:
        ingest(col, [SAMPLE_DOCS / "leptonica" / "map1.jpg", SAMPLE_DOCS / "leptonica" / "comap.063.jpg"], inv_settings,
               extractor=extractor, **QUIET)
        with col.write_lock():
            report = fit_invariance(col, inv_settings, extractor=extractor, **QUIET)
        assert report.action == "too_few_pages" and stored_projection(col) is None


def test_pages_whose_file_moved_are_skipped_and_counted(tmp_path, inv_settings, extractor):
    import shutil

    docs = tmp_path / "docs"
    shutil.copytree(SAMPLE_DOCS / "leptonica", docs)
    small = inv_settings.model_copy(update={"invariance": inv_settings.invariance.model_copy(update={"min_pages": 10})})
    with Collection(tmp_path / "col", create=True) as col:
        ingest(col, [docs], small, extractor=extractor, **QUIET)
        n = col.counts()["pages"]
        (docs / "map1.jpg").rename(tmp_path / "moved.jpg")
        ids, v, skipped = style_views(col, small, col.page_ids(), extractor=extractor)
        assert skipped == 1 and len(ids) == n - 1


# -- export ----------------------------------------------------------------------------------


def test_export_writes_the_clustered_vectors_and_says_which(inv_collection, inv_settings, tmp_path):
    import pyarrow.parquet as pq

    with Collection(inv_collection) as col:
        proj = stored_projection(col)
        ids, raw = col.vectors()
        assert export_pages(col, tmp_path / "pages.parquet", vectors=True) == 41
        assert export_pages(col, tmp_path / "raw.csv", vectors="raw") == 41
        assert export_pages(col, tmp_path / "visual.parquet", vectors="visual") == 41
        with pytest.raises(ValueError, match="unknown vectors"):
            export_pages(col, tmp_path / "x.csv", vectors="pixels")
    meta = json.loads(pq.read_schema(tmp_path / "pages.parquet").metadata[b"docsort"])
    assert meta["vectors"] == "clustering" and meta["mode"] == "visual" and meta["dim"] == 32
    assert meta["invariance_sha256"] == proj.sha256
    df = pd.read_parquet(tmp_path / "pages.parquet")
    got = np.stack(df.sort_values("page_id")["vector"].to_numpy())
    assert np.allclose(got, proj.transform(raw), atol=1e-6)
    csv = pd.read_csv(tmp_path / "raw.csv")
    assert f"f{raw.shape[1] - 1}" in csv.columns and "f32" in csv.columns
    side = json.loads((tmp_path / "raw.csv.json").read_text())
    assert side["vectors"] == "raw" and side["invariance_sha256"] is None and side["dim"] == raw.shape[1]
    vmeta = json.loads(pq.read_schema(tmp_path / "visual.parquet").metadata[b"docsort"])
    assert vmeta["vectors"] == "visual" and vmeta["dim"] == 32


# -- the classifier --------------------------------------------------------------------------


def test_the_classifier_is_trained_on_the_projected_vectors_and_retrained_when_it_changes(inv_copy, inv_settings, extractor):
    from docsort.jobs import classify
    from docsort.config.settings import ClassifierSettings

    with Collection(inv_copy) as col:
        proj = stored_projection(col)
        ids = [int(i) for i in col.page_ids()]
        classify.label_pages(col, ids[:3], "first")
        classify.label_pages(col, ids[-3:], "second")
        report = classify.classify_collection(col, ClassifierSettings())
        clf = report.classifier
        assert clf.projection_sha256 == proj.sha256 and clf.centre.shape == (proj.dims,)
        assert classify.is_current(clf, col, ClassifierSettings())
        (col.root / Collection.INVARIANCE).write_bytes(b"damaged")  # now the raw vectors are the collection's
        assert not classify.is_current(clf, col, ClassifierSettings())
        again = classify.classify_collection(col, ClassifierSettings())
        assert again.retrained and again.classifier.projection_sha256 is None
        assert again.classifier.centre.shape == (col.vectors()[1].shape[1],)
        # Turning the projection back on at a clustering retrains the classifier on the projected vectors.
        (col.root / Collection.INVARIANCE).unlink()
        cluster(col, inv_settings, extractor=extractor, **QUIET)  # refits (file missing) -> a projection again
        clf3 = classify.load_classifier(col)
        assert clf3.projection_sha256 == stored_projection(col).sha256 == proj.sha256  # byte-identical refit
        versions = set(classify.type_table(col)["model_version"].dropna())
        assert versions == {clf3.version} and clf3.version != again.classifier.version
