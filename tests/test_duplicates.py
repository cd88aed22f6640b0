"""Near-duplicate families (issue 18) on re-scans made from real sample_docs pages.

The collection is the session's sample_docs collection (41 real scanned pages) plus re-scans of
four of its pages, made the way ``benchmarks/duplicates_corpus.py`` makes them (scaled to 80-95 %,
rotated up to 1.5 degrees, noise, a stamp, JPEG 40-70): two pages of the 5-page CCITT fax TIFF
(its other three pages, same scanner, same kind of page, are the hard negatives) and two pages of
the Ortiz book (ortiz-02 .. ortiz-05, one typeface and layout). Every re-scan must join its own
page's family, and no family may hold two different pages.
"""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, SAMPLE_DOCS

#: (file under sample_docs, page, re-scans made of it)
RESCANNED = [("jbigkit/ccitt-1-3-4-5-7.tif", 1, 2), ("jbigkit/ccitt-1-3-4-5-7.tif", 3, 1),
             ("leptonica/ortiz-02.png", 1, 1), ("leptonica/ortiz-04.png", 1, 1)]


def _corpus_module():
    spec = importlib.util.spec_from_file_location("duplicates_corpus", REPO / "benchmarks" / "duplicates_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dup_collection(sample_collection, tmp_path_factory, settings, extractor):
    """``(collection root, {re-scan path: (original path, page)})``: sample_docs + re-scans, families found."""
    from docsort.config.settings import RenderSettings
    from docsort.core.pages import discover_files, iter_pages
    from docsort.jobs.duplicates import find_duplicates
    from docsort.jobs.ingest import ingest
    from docsort.store.storage import Collection

    base = tmp_path_factory.mktemp("dups")
    root = base / "collection"
    shutil.copytree(sample_collection, root, ignore=shutil.ignore_patterns(".lock"))
    rescan = _corpus_module().rescan
    rng = np.random.default_rng(7)
    folder = base / "rescans"
    folder.mkdir()
    origin = {}
    for name, page_no, copies in RESCANNED:
        src = next(discover_files([SAMPLE_DOCS / name]))
        page = next(p for p in iter_pages(src, RenderSettings(long_side_px=1400)) if p.page_no == page_no)
        for c in range(copies):
            im, quality, _ = rescan(page.image, rng)
            out = folder / f"rescan-{Path(name).stem}-p{page_no}-{c}.jpg"
            im.save(out, quality=quality)
            origin[str(out)] = (str((SAMPLE_DOCS / name).absolute()), page_no)
    col = Collection(root)
    report = ingest(col, [folder], settings, extractor=extractor, progress=False, log=lambda m: None)
    assert report.failures == [], report.failures
    find_duplicates(col, workers=2, log=lambda m: None)
    col.close()
    return root, origin


def _key(path: str, page: int, origin: dict) -> tuple[str, int]:
    """The original page of a stored page: itself, or what it is a re-scan of."""
    return origin.get(path, (str(Path(path).absolute()), int(page)))


def _families(root, origin):
    """``(page table, stored families, {page_id: original page}, {page_id: family})``."""
    from docsort.store.storage import Collection

    with Collection(root) as col:
        fams = col.duplicate_families()
        pages = col.page_table()
    key = {int(p): _key(path, page, origin) for p, path, page in zip(pages["page_id"], pages["path"], pages["page"])}
    return pages, fams, key, dict(zip(fams["page_id"].astype(int), fams["family"].astype(int)))


def test_rescans_join_their_page_and_nothing_else(dup_collection):
    root, origin = dup_collection
    pages, fams, key, family = _families(root, origin)
    # No family joins two different pages: the other fax pages and Ortiz pages stay out.
    for f, group in fams.groupby("family"):
        originals = {key[int(p)] for p in group["page_id"]}
        assert len(originals) == 1, f"family {f} joins different pages: {sorted(originals)}"
    # Every re-scan joins its own page, by look alone (no OCR here): its coverage with its page is
    # 0.68-0.91 and with every other page at most 0.06 here, against a bar of 0.4.
    original_id = {key[int(p)]: int(p) for p, path in zip(pages["page_id"], pages["path"]) if path not in origin}
    joined = [path for p, path in zip(pages["page_id"], pages["path"])
              if path in origin and int(p) in family and family.get(original_id[origin[path]]) == family[int(p)]]
    assert sorted(joined) == sorted(origin), f"only {joined} of {sorted(origin)} joined their page"
    assert 0.0 < fams["similarity"].min() <= fams["similarity"].max() <= 1.0 + 1e-6


def test_incremental_run_maps_only_new_pages(dup_collection):
    from docsort.jobs.duplicates import duplicates_stale, find_duplicates
    from docsort.store.storage import Collection

    root, _ = dup_collection
    with Collection(root) as col:
        before = col.duplicate_families()
        assert duplicates_stale(col) is None
        again = find_duplicates(col, workers=1, log=lambda m: None)
        assert again.mapped == 0
        assert again.table[["family", "page_id"]].equals(before[["family", "page_id"]])


def test_maps_made_before_the_ink_keep_their_keypoints_and_get_their_ink(dup_collection, tmp_path, monkeypatch):
    """A collection whose page maps were made by the docsort before schema 8 (no ink, the older
    settings token) gets only the ink of every page made: its maps and keypoints are kept as they
    were (making keypoints again would fail here), and the families are the same."""
    from docsort.config.settings import DuplicateSettings
    from docsort.core import duplicates as core
    from docsort.jobs.duplicates import find_duplicates
    from docsort.store.storage import Collection

    root, _ = dup_collection
    old = tmp_path / "old"
    shutil.copytree(root, old, ignore=shutil.ignore_patterns(".lock"))
    s = DuplicateSettings()
    token = core.settings_token(s)
    with Collection(old) as col:
        before = col.duplicate_families()
        ids, maps = col.page_maps(token, s.map_px)
        keypoints = col.page_keypoints(token, ids)
        with col.transaction() as c:
            c.execute("UPDATE page_maps SET ink = NULL, settings = ?", (core.older_settings_tokens(s)[0],))
        n = col.counts()["pages"]
        assert len(col.pages_needing_maps(token)) == n

        def no_keypoints(*args, **kwargs):
            raise AssertionError("keypoints made again for a page that has them")

        monkeypatch.setattr(core, "page_keypoints", no_keypoints)
        again = find_duplicates(col, workers=1, log=lambda m: None)
        assert again.mapped == n and not again.unmapped
        ids_after, maps_after = col.page_maps(token, s.map_px)
        assert np.array_equal(ids_after, ids) and np.array_equal(maps_after, maps)
        assert col.page_keypoints(token, ids) == keypoints
        inks = col.page_inks(token, ids)
        assert all(b is not None for b in inks) and core.decode_ink(inks[0]).ndim == 2
        assert again.table[["family", "page_id"]].equals(before[["family", "page_id"]])


def test_cli_duplicates_csv_and_export_column(dup_collection, tmp_path):
    from typer.testing import CliRunner

    from docsort.faces.cli import app

    root, origin = dup_collection
    work = tmp_path / "collection"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns(".lock"))
    out = tmp_path / "dups.csv"
    result = CliRunner().invoke(app, ["duplicates", "--csv", str(out), "-c", str(work), "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["family", "path", "page", "page_id", "similarity"]
    assert {r["path"] for r in rows} & set(origin)
    assert "near-duplicate families" in result.output
    exported = tmp_path / "pages.csv"
    result = CliRunner().invoke(app, ["export", str(exported), "-c", str(work)])
    assert result.exit_code == 0, result.output
    with open(exported, newline="") as fh:
        table = list(csv.DictReader(fh))
    fam_of = {r["page_id"]: r["family"] for r in rows}
    assert all(r["duplicate_family"] == fam_of.get(r["page_id"], "") for r in table)
    assert sum(1 for r in table if r["duplicate_family"]) == len(rows)


def test_sort_one_per_family(dup_collection, tmp_path):
    from docsort.jobs.sort import sort_into_folders
    from docsort.store.storage import Collection

    root, origin = dup_collection
    pages, fams, key, family = _families(root, origin)
    with Collection(root) as col:
        full = sort_into_folders(col, tmp_path / "all")
        one = sort_into_folders(col, tmp_path / "one", one_per_family=True)
        documents = col.counts()["documents"]
        skipped_paths = {col.document_paths(d)[0] for d in one.duplicates_skipped}
    assert full.copied == documents and full.duplicates_skipped == []
    # The re-scans that joined a family (later documents, one page each) are left out; every
    # original document is copied.
    original_id = {key[int(p)]: int(p) for p, path in zip(pages["page_id"], pages["path"]) if path not in origin}
    in_family = {path for p, path in zip(pages["page_id"], pages["path"])
                 if path in origin and int(p) in family and family.get(original_id[origin[path]]) == family[int(p)]}
    assert in_family and skipped_paths == in_family
    assert one.copied == documents - len(in_family)
    copied = {p.name for p in (tmp_path / "one").rglob("*") if p.is_file()}
    assert not any(Path(p).name in copied for p in in_family)


def test_text_minhash_tells_a_reocr_from_another_page():
    """MinHash of OCR words: the same page read twice with OCR errors shares most words; another
    page of the same document (README paragraphs of one text) shares few."""
    from docsort.config.settings import DuplicateSettings
    from docsort.core.duplicates import score_pairs, text_minhashes

    paras = [p for p in (REPO / "README.md").read_text().split("\n\n") if len(set(p.lower().split())) > 40][:2]
    assert len(paras) == 2, "README.md needs two long paragraphs for this test"
    rng = np.random.default_rng(0)
    words = paras[0].split()
    misread = [w[:-1] + "x" if rng.random() < 0.08 and len(w) > 3 else w for w in words]
    s = DuplicateSettings()
    sig, has = text_minhashes([paras[0], " ".join(misread), paras[1], "too few words"], s)
    assert has.tolist() == [True, True, True, False]
    from PIL import Image

    from docsort.core.duplicates import page_keypoints

    page = Image.open(SAMPLE_DOCS / "leptonica" / "ortiz-02.png")
    keypoints = [page_keypoints(page, s)] * 4  # the same look for all
    # ... but the same look only half-way: the words decide
    same, cov, jac = score_pairs(keypoints, np.array([[0, 1], [0, 2], [0, 3]]), sig, has,
                                 s.model_copy(update={"min_coverage": 1.01, "min_coverage_text": 0.5}))
    assert (cov == 1.0).all()
    assert jac[0] >= s.min_text_jaccard > jac[1]
    assert np.isnan(jac[2])
    assert same.tolist()[:2] == [True, False]


def test_app_shows_each_family_side_by_side(dup_collection, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from docsort.faces.app import PAGES
    from docsort.store.storage import Collection

    root, _ = dup_collection
    work = tmp_path / "collection"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns(".lock"))
    with Collection(work) as col:
        fams = col.duplicate_families()
    monkeypatch.setenv("DOCSORT_COLLECTION", str(work))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    at.run()
    script = next(f for title, f, _ in PAGES if title == "Near-duplicates")
    at.switch_page(f"docsort/faces/views/{script}").run()
    assert not at.exception, at.exception
    assert at.header[0].value == "Near-duplicates"
    assert [s.value for s in at.subheader] == [f"Family {f}: {len(g)} pages" for f, g in fams.groupby("family")]
    captions = [c for img in at.image for c in img.captions]
    assert len(captions) == len(fams)
    assert all("similarity" in c for c in captions)


def test_the_quick_first_test_keeps_every_decision_of_the_full_verification(dup_collection):
    """The first, cheaper test (each page's 250 strongest keypoints against all of the other's)
    only skips pairs that the full verification would reject too: over every pair of the
    collection (sample_docs and its re-scans), the near-duplicate decisions are the same with it
    and without it; and it is really applied (a bar no pair can pass rejects every pair)."""
    from docsort.config.settings import DuplicateSettings
    from docsort.core.duplicates import KEYPOINT_DTYPE, settings_token, verify_pairs
    from docsort.store.storage import Collection

    base = DuplicateSettings()
    assert base.quick_keypoints > 0, "the quick test is off by default: nothing to check"
    with Collection(dup_collection[0]) as col:
        ids, _ = col.page_maps(settings_token(base), base.map_px)
        keypoints = [np.frombuffer(b, KEYPOINT_DTYPE) for b in col.page_keypoints(settings_token(base), ids)]
    i, j = np.triu_indices(len(ids), 1)
    pairs = np.stack([i, j], 1)
    quick, _ = verify_pairs(keypoints, pairs, base)
    full, _ = verify_pairs(keypoints, pairs, base.model_copy(update={"quick_keypoints": 0}))
    assert int((full >= base.min_coverage).sum()) >= 5, "fewer near-duplicate pairs than re-scans were made"
    np.testing.assert_array_equal(quick >= base.min_coverage, full >= base.min_coverage)
    np.testing.assert_array_equal(quick >= base.min_coverage_text, full >= base.min_coverage_text)
    none, _ = verify_pairs(keypoints, pairs, base.model_copy(update={"quick_inliers": 10**6}))
    n_kp = np.array([len(k) for k in keypoints])
    tested = (n_kp[i] > base.quick_keypoints) | (n_kp[j] > base.quick_keypoints)  # else the quick test is the full one
    assert tested.mean() > 0.9, "most pages have too few keypoints for a quick test"
    assert not none[tested].any(), "a quick-test bar no pair can reach still let pairs through"


def test_the_descriptor_match_finds_what_a_faiss_k2_search_finds(dup_collection):
    """The match takes the two nearest descriptors from all Hamming distances (faiss.hammings)
    instead of a k = 2 search of faiss.IndexBinaryFlat: on real pages (a fax page and its
    re-scans, other pages of sample_docs), every row that passes the ratio test has the same
    nearest row and the same two distances as the search gives."""
    import faiss

    from docsort.config.settings import DuplicateSettings
    from docsort.core.duplicates import KEYPOINT_DTYPE, _match, settings_token
    from docsort.core.hamming import descriptor_words
    from docsort.store.storage import Collection

    s = DuplicateSettings()
    with Collection(dup_collection[0]) as col:
        ids, _ = col.page_maps(settings_token(s), s.map_px)
        keypoints = [np.frombuffer(b, KEYPOINT_DTYPE) for b in col.page_keypoints(settings_token(s), ids)]
    checked = matched = 0
    for a in range(0, len(keypoints), 5):
        for b in range(len(keypoints)):
            x, y = keypoints[a], keypoints[b]
            if a == b or len(x) < 8 or len(y) < 8:
                continue
            index = faiss.IndexBinaryFlat(256)
            index.add(np.ascontiguousarray(y["d"]))
            dist, nbr = index.search(np.ascontiguousarray(x["d"]), 2)
            ok = dist[:, 0] < s.ratio * dist[:, 1]
            found = _match(x, y, descriptor_words(x["d"]), descriptor_words(y["d"]), s)
            if int(ok.sum()) < 8:
                assert found is None
                continue
            if found is None:  # no transform, or one scaling too much: the matches are not returned
                continue
            qa, qb, _ = found
            np.testing.assert_array_equal(qa, np.flatnonzero(ok))
            np.testing.assert_array_equal(qb, nbr[ok, 0])
            checked += 1
            matched += len(qa)
    assert checked >= 20 and matched > 1000, (checked, matched)


def test_the_matching_kernel_equals_the_distance_matrix_on_real_descriptors(dup_collection):
    """docsort.core.hamming.ratio_matches (one row of distances at a time, in numba) keeps
    exactly the rows and nearest columns that all distances from faiss.hammings and the two
    smallest of each row keep: on real ORB descriptors of sample_docs pages and their re-scans,
    at three ratios, with ties made on purpose (a base row repeated) and with one or two base
    rows."""
    import faiss

    from docsort.config.settings import DuplicateSettings
    from docsort.core.duplicates import KEYPOINT_DTYPE, settings_token
    from docsort.core.hamming import descriptor_words, ratio_matches
    from docsort.store.storage import Collection

    s = DuplicateSettings()
    with Collection(dup_collection[0]) as col:
        ids, _ = col.page_maps(settings_token(s), s.map_px)
        keypoints = [np.frombuffer(b, KEYPOINT_DTYPE) for b in col.page_keypoints(settings_token(s), ids)]

    def by_matrix(q, b, ratio):
        dist = np.empty((len(q), len(b)), np.int32)
        faiss.hammings(faiss.swig_ptr(q), faiss.swig_ptr(b), len(q), len(b), 32, faiss.swig_ptr(dist))
        rows = np.arange(len(q))
        nearest = dist.argmin(axis=1)
        first = dist[rows, nearest].copy()
        dist[rows, nearest] = np.iinfo(np.int32).max
        ok = first < ratio * dist.min(axis=1)
        return np.flatnonzero(ok), nearest[ok]

    rng = np.random.default_rng(0)
    kept = compared = 0
    pages = [k for k in keypoints if len(k) >= 8]
    assert len(pages) >= 40, "too few pages with keypoints"
    for t in range(60):
        x, y = pages[rng.integers(len(pages))], pages[(t * 7) % len(pages)]
        q, b = np.ascontiguousarray(x["d"]), np.ascontiguousarray(y["d"])
        if t % 3 == 0:  # a tie: one base row twice
            b = np.concatenate([b, b[rng.integers(len(b)):][:1]])
        if t % 10 == 1:
            b = b[:1 + t % 2]
        for ratio in (0.6, s.ratio, 0.95):
            wq = descriptor_words(q)
            rows, cols = ratio_matches(wq, descriptor_words(b), ratio)
            np.testing.assert_array_equal(rows[rows < 100], ratio_matches(wq[:, :100], descriptor_words(b), ratio)[0])
            want_rows, want_cols = by_matrix(q, b, ratio)
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_array_equal(cols, want_cols)
            kept += len(rows)
            compared += len(q)
    assert kept > 0.05 * compared, (kept, compared)
    with pytest.raises(ValueError, match="uint8"):
        descriptor_words(np.zeros((3, 16), np.uint8))
    with pytest.raises(ValueError, match="base must be uint64"):
        ratio_matches(descriptor_words(q), np.zeros((4, 3), np.int64), 0.8)


def test_ransac_iterations_follow_the_formula():
    """N = log(1 - p) / log(1 - w^2) for a 2-point sample (Hartley & Zisserman 2004, 4.7.1)."""
    from docsort.core.duplicates import ransac_iterations

    assert ransac_iterations(8, 20) == 27  # w = 0.4: log(0.01) / log(0.84) = 26.4
    assert ransac_iterations(8, 100) == 718  # w = 0.08: log(0.01) / log(1 - 0.0064) = 717.3
    assert ransac_iterations(8, 10_000) == 2000  # capped
    assert ransac_iterations(8, 8) == 1
    counts = [ransac_iterations(8, n) for n in range(8, 400)]
    assert counts == sorted(counts)  # more matches for the same inliers: more draws


def _page(name: str, page_no: int = 1, px: int = 1400):
    from docsort.config.settings import RenderSettings
    from docsort.core.pages import discover_files, iter_pages

    src = next(discover_files([SAMPLE_DOCS / name]))
    return next(p for p in iter_pages(src, RenderSettings(long_side_px=px)) if p.page_no == page_no).image.convert("L")


def _other_details(page, donor, rng, patches: int = 10):
    """``page`` with ``patches`` scattered blocks of its content replaced by blocks of ``donor``
    taken from elsewhere: the same layout with other details (other words, other digits), as two
    pages of one template."""
    out = page.copy()
    w, h = page.size
    bw, bh = w // 7, h // 12
    for r, c in zip(rng.permutation(np.arange(1, 11))[:patches], rng.integers(0, 6, patches)):
        x, y = int(c * w // 6 + rng.integers(0, max(1, w // 6 - bw))), int(r * h // 12)
        sx, sy = int(rng.integers(0, donor.width - bw)), int(rng.integers(0, donor.height - bh))
        out.paste(donor.crop((sx, sy, sx + bw, sy + bh)).resize((bw, bh)), (x, y))
    return out


def test_content_conflicts_tell_a_rescan_from_a_page_of_the_same_template_with_other_details():
    """The check after the keypoints, on real pages: re-scans (scale, rotation, noise, a stamp in
    half of them, JPEG) of a real book page have fewer conflict cells than the bar against the
    page and against each other; the same page with ten scattered blocks replaced by text from
    another page of the book (one template, other details) has at least the bar, as the months of
    one calendar design do in the re-scan corpora."""
    from docsort.config.settings import DuplicateSettings
    from docsort.core.duplicates import content_conflicts, decode_ink, page_ink, page_keypoints, pair_transform

    s = DuplicateSettings()
    rescan = _corpus_module().rescan
    page, donor = _page("leptonica/ortiz-02.png"), _page("leptonica/ortiz-04.png")
    rng = np.random.default_rng(3)

    def conflicts(x, y) -> int:
        model = pair_transform(page_keypoints(x, s), page_keypoints(y, s), s)
        assert model is not None, "the keypoints found no transform for a pair made from one page"
        return content_conflicts(decode_ink(page_ink(x, s)), decode_ink(page_ink(y, s)), model, s)

    rescans = [rescan(page, rng)[0] for _ in range(4)]
    same = [conflicts(page, r) for r in rescans] + [conflicts(rescans[0], rescans[1]), conflicts(rescans[2], rescans[3])]
    assert max(same) < s.max_conflict_cells, same
    others = [_other_details(page, donor, np.random.default_rng(seed)) for seed in range(3)]
    different = [conflicts(page, o) for o in others] + [conflicts(rescans[0], others[0])]
    assert min(different) >= s.max_conflict_cells, different


def test_page_ink_round_trips_and_bad_bytes_are_a_clear_error():
    from docsort.config.settings import DuplicateSettings
    from docsort.core.duplicates import decode_ink, page_ink

    s = DuplicateSettings()
    page = _page("leptonica/ortiz-02.png")
    blob = page_ink(page, s)
    ink = decode_ink(blob)
    assert ink.dtype == bool and max(ink.shape) == s.render_px
    assert 0.01 < ink.mean() < 0.5  # a text page: some ink, mostly paper
    assert len(blob) < ink.size / 8  # compressed below one bit a pixel
    with pytest.raises(ValueError, match="no page ink"):
        decode_ink(b"ab")
    with pytest.raises(ValueError, match="does not decompress"):
        decode_ink(blob[:4] + b"not zlib at all")
    with pytest.raises(ValueError, match="holds"):
        decode_ink(blob[:4] + __import__("zlib").compress(b"\0" * 10))


def test_find_families_keeps_a_page_of_the_same_template_apart_and_says_so():
    """Through find_families, on real pages: a book page, two re-scans of it, the same page with
    ten blocks of other text (one template, other details) and another book page. The keypoints
    alone join the look-alike into the page's family; with the pages' ink the family is the page
    and its re-scans, and the look-alike's pairs are reported as kept apart."""
    from docsort.config.settings import DuplicateSettings
    from docsort.core.duplicates import find_families, page_ink, page_keypoints, page_map

    s = DuplicateSettings()
    page, donor = _page("leptonica/ortiz-02.png"), _page("leptonica/ortiz-04.png")
    rng = np.random.default_rng(5)
    rescan = _corpus_module().rescan
    pages = [page, rescan(page, rng)[0], rescan(page, rng)[0], _other_details(page, donor, np.random.default_rng(1)), donor]
    maps = np.stack([page_map(p, s) for p in pages])
    keypoints = [page_keypoints(p, s) for p in pages]
    inks = [page_ink(p, s) for p in pages]

    def families(fams) -> list[set[int]]:
        return [set(fams.rows[fams.family == f].tolist()) for f in np.unique(fams.family)]

    without = find_families(maps, keypoints, settings=s)
    assert {0, 1, 2, 3} in families(without), families(without)  # the look-alike joins by keypoints alone
    checked = find_families(maps, keypoints, settings=s, inks=lambda rows: [inks[int(r)] for r in rows])
    assert families(checked) == [{0, 1, 2}], families(checked)
    assert len(checked.kept_apart) and all(3 in pair for pair in checked.kept_apart.tolist())
    off = find_families(maps, keypoints, settings=s.model_copy(update={"max_conflict_cells": 0}),
                        inks=lambda rows: [inks[int(r)] for r in rows])
    assert families(off) == families(without) and not len(off.kept_apart)
