"""Text features from OCR, fusion with the visual vectors, keyword cluster names, full-text search
(issue 6), on the real OCR text of sample_docs (the ``ocr_collection`` fixture)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from docsort.jobs import cluster as cluster_job, ingest as ingest_job
from docsort.queries import search, tables, vectors
from docsort.store.storage import Collection, CollectionError
from docsort.core.text import cluster_keywords, fuse

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_docs"


@pytest.fixture
def ocr_copy(ocr_collection, tmp_path):
    dst = tmp_path / "collection"
    shutil.copytree(ocr_collection, dst, ignore=shutil.ignore_patterns(".lock", ".ocr.lock"))
    return dst


def _page_ids(col: Collection) -> dict[tuple[str, int], int]:
    return {(Path(p.path).name, p.page_no): p.page_id for p in col.pages()}


def _with_text(settings, **changes):
    return settings.model_copy(update={"text": settings.text.model_copy(update=changes)})


def test_fused_cosine_is_the_weighted_sum_of_visual_and_text_cosines_and_textless_pages_stay_visual():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 288)).astype(np.float32)
    t = rng.normal(size=(3, 32)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    t[2] = 0.0  # page 2 has no text
    f = fuse(v, t, 0.3)
    assert f.shape == (3, 320) and np.allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-6)
    assert f[0] @ f[1] == pytest.approx(0.7 * (v[0] @ v[1]) + 0.3 * (t[0] @ t[1]), abs=1e-6)
    assert np.allclose(f[2, :288], v[2], atol=1e-6) and not f[2, 288:].any()
    assert fuse(v, None, 0.3) is not None and np.array_equal(fuse(v, None, 0.3), v)
    with pytest.raises(ValueError):
        fuse(v, t, 1.5)


def test_text_vectors_of_real_ocr_put_pages_of_one_language_and_kind_together(ocr_collection, settings):
    with Collection(ocr_collection) as col:
        ids = _page_ids(col)
        model = cluster_job.fit_text(col, settings, persist=False)
        n_texts = len(vectors._usable_texts(col, settings))
        assert model is not None and model.n_fitted == n_texts
        assert model.dim == min(settings.text.lsa_components, n_texts - 1)  # SVD rank bound on 41 pages
        again = cluster_job.fit_text(col, settings, persist=False)
        assert again.token == model.token  # same texts, same settings: same model (seeded SVD)
        # the two French pages of the CCITT fax test set are each other's text neighbours
        hits = search.search_page(col, ids[("ccitt-1-3-4-5-7.tif", 3)], settings, 4, mode="text").pages
        assert hits[0].page_id == ids[("ccitt-1-3-4-5-7.tif", 3)] and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert ids[("ccitt-1-3-4-5-7.tif", 4)] in [h.page_id for h in hits[1:]]
        # a map has no text to search by
        with pytest.raises(CollectionError, match="no usable OCR text"):
            search.search_page(col, ids[("comap.063.jpg", 1)], settings, 4, mode="text")
        pv = vectors.page_vectors(col, settings, "text", text_model=model)
        assert not pv.vectors[~pv.has_text].any()  # pages without usable text: zero rows


def test_cluster_with_fusion_on_and_off(ocr_copy, settings):
    with Collection(ocr_copy) as col:
        # off: weight 0 clusters the visual vectors and stores no text model
        res_off = cluster_job.cluster(col, _with_text(settings, fusion_weight=0.0), log=lambda m: None)
        run = col.last_cluster_run()["settings"]
        assert run["features"] == "visual" and run["text_model_token"] is None
        assert not (ocr_copy / Collection.TEXT_MODEL).exists()
        # on (the default weight): fused vectors of 288 + LSA dims, model stored and described
        logs = []
        res_on = cluster_job.cluster(col, settings, log=logs.append)
        run = col.last_cluster_run()["settings"]
        n_text = len(vectors._usable_texts(col, settings))
        assert run["features"] == "fused" and run["pages_with_text"] == n_text > 10
        assert any("fused visual + text" in m for m in logs)
        model = vectors.load_text_model(col)
        assert model is not None and model.token == run["text_model_token"]
        manifest = col.manifest()["text"]
        assert manifest["token"] == model.token and manifest["pages_fitted"] == n_text and manifest["method"] == "lsa"
        pv = vectors.page_vectors(col, settings, "fused")
        assert pv.vectors.shape == (41, 288 + model.dim) and pv.mode == "fused"
        assert len(res_on.labels) == len(res_off.labels) == 41
        assert not np.array_equal(res_on.embedding_2d, res_off.embedding_2d)


def test_pages_added_after_a_fused_clustering_are_placed_provisionally(ocr_copy, settings, extractor, tmp_path):
    from PIL import Image

    with Collection(ocr_copy) as col:
        cluster_job.cluster(col, settings, log=lambda m: None)
        new = tmp_path / "new" / "c03-29-copy.png"  # the same page, re-encoded: new bytes, no text yet
        new.parent.mkdir()
        Image.open(SAMPLE / "ocrmypdf" / "c03-29.jpg").save(new)
        report = ingest_job.ingest(col, [new.parent], settings, extractor=extractor, progress=False, log=lambda m: None)
        assert report.pages_added == 1 and report.provisional_pages == 1
        table = col.page_table()
        row = table[table["path"] == str(new)].iloc[0]
        assert row["membership"] == "provisional"


def test_clusters_get_keyword_names_from_their_text_and_user_names_win(ocr_copy, settings):
    with Collection(ocr_copy) as col:
        result = cluster_job.cluster(col, settings, log=lambda m: None)
        assert result.names, "no cluster named from its OCR text"
        texts = vectors._usable_texts(col, settings)
        labels = dict(zip(col.cluster_assignments()[0].tolist(), col.cluster_assignments()[1].tolist()))
        rows = {r.cluster: r for r in tables.cluster_table(col)}
        for cid, name in result.names.items():
            words = name.split(" · ")
            assert 1 <= len(words) <= settings.text.keywords and rows[cid].name == name
            member_words = [set(re.findall(r"[^\W\d_]+", texts[p].lower())) for p, c in labels.items() if c == cid and p in texts]
            for w in words:  # every keyword is on at least two of the cluster's pages
                assert sum(w in t for t in member_words) >= 2, (w, cid)
        cid = next(iter(result.names))
        col.rename_cluster(cid, "my letters")
        cluster_job.cluster(col, settings, log=lambda m: None)
        assert {r.name for r in tables.cluster_table(col)} >= {"my letters"}


def test_c_tf_idf_prefers_words_that_set_a_cluster_apart(ocr_collection, settings):
    with Collection(ocr_collection) as col:
        ids = _page_ids(col)
        texts = col.page_texts()
    news = [ids[(f"pageseg{i}.png", 1)] for i in (1, 2, 3, 4)] + [ids[("scots-frag.tif", 1)]]
    french = [ids[("ccitt-1-3-4-5-7.tif", p)] for p in (3, 4)]
    pages = news + french
    labels = np.array([0] * len(news) + [1] * len(french))
    words = cluster_keywords([texts[p]["text"] for p in pages], labels, top_n=3)
    assert set(words) == {0, 1}
    vocab = {p: set(re.findall(r"[^\W\d_]+", texts[p]["text"].lower())) for p in pages}
    for cid, group in ((0, news), (1, french)):
        other = [p for p in pages if p not in group]
        for w in words[cid]:
            inside = sum(w in vocab[p] for p in group)
            outside = sum(w in vocab[p] for p in other)
            assert inside >= 2 and inside / len(group) > outside / len(other), (cid, w)


def test_full_text_search_finds_words_on_the_page_through_python_and_cli(ocr_collection):
    with Collection(ocr_collection) as col:
        ids = _page_ids(col)
        hits = search.search_text(col, "Watson")
        assert hits and hits[0].page_id == ids[("c03-29.jpg", 1)] and "[Watson]" in hits[0].snippet
        assert search.search_text(col, '"Miss Watson"')[0].page_id == ids[("c03-29.jpg", 1)]
        assert search.search_text(col, "zyxwvutsrq") == []
        with pytest.raises(ValueError, match="FTS5"):
            search.search_text(col, 'Watson AND "unclosed')
    res = subprocess.run([sys.executable, "-m", "docsort.faces.cli", "search", "--text", "Watson", "--json", "--collection", str(ocr_collection)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["pages"][0]["path"].endswith("c03-29.jpg") and "Watson" in data["pages"][0]["snippet"]


def test_search_a_file_by_text_ocrs_the_query_and_finds_the_same_page_first(ocr_collection, settings, extractor):
    with Collection(ocr_collection) as col:
        query = SAMPLE / "ocrmypdf" / "c03-29.jpg"
        for mode in ("text", "fused"):
            res = search.search_file(col, query, settings, 3, extractor=extractor, mode=mode)
            assert res.pages[0].path == str(query) and res.pages[0].score == pytest.approx(1.0, abs=1e-3), mode
        assert search.resolve_search_mode(col, settings, "auto") == "fused"
        assert search.resolve_search_mode(col, _with_text(settings, fusion_weight=0.0), "auto") == "visual"


def test_a_tf_hub_text_embedding_by_local_path_is_used_and_survives_a_reload(ocr_copy, settings, tmp_path):
    """text.method = "hub:PATH": a TF2 SavedModel taking a batch of strings (like the Universal
    Sentence Encoder / nnlm modules). This one hashes words into 64 buckets, as nnlm's hashed
    token embeddings do, so pages sharing words get similar vectors."""
    import tensorflow as tf

    class HashedBagOfWords(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            words = tf.strings.split(tf.strings.lower(texts))
            buckets = tf.strings.to_hash_bucket_fast(words, 64)
            return tf.reduce_sum(tf.one_hot(buckets, 64), axis=1)  # (n, 64) dense

    handle = tmp_path / "hashed_bow"
    tf.saved_model.save(HashedBagOfWords(), str(handle))
    hub_settings = _with_text(settings, method=f"hub:{handle}")
    with Collection(ocr_copy) as col:
        cluster_job.cluster(col, hub_settings, log=lambda m: None)
        assert col.last_cluster_run()["settings"]["features"] == "fused"
        model = vectors.load_text_model(col)  # unpickled: the SavedModel is loaded again on use
        assert model.method == f"hub:{handle}" and model.dim == 64 and col.manifest()["text"]["method"] == f"hub:{handle}"
        ids = _page_ids(col)
        hits = search.search_page(col, ids[("c03-29.jpg", 1)], hub_settings, 3, mode="text").pages
        assert hits[0].page_id == ids[("c03-29.jpg", 1)] and hits[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(Exception, match="cannot load the TF Hub text model"):
        from docsort.core.text import fit_text_model

        fit_text_model(["a b c"] * 3, _with_text(settings, method=f"hub:{tmp_path / 'missing'}").text)


def test_without_a_stored_text_model_one_is_fitted_once_per_state_of_the_text(ocr_copy, settings):
    with Collection(ocr_copy) as col:
        assert vectors.load_text_model(col) is None  # OCR'd, never clustered since
        first = vectors.page_vectors(col, settings, "text").text_model
        assert vectors.page_vectors(col, settings, "text").text_model is first  # reused, not refitted
        pid = next(iter(vectors._usable_texts(col, settings)))
        row = col.page_texts([pid])[pid]
        col.store_page_texts([{**row, "page_id": pid, "text": row["text"] + " indemnification clause"}])
        assert vectors.page_vectors(col, settings, "text").text_model is not first  # the text changed
