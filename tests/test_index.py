"""The index stage's approximate options (issue 8): IVF chosen by ``auto`` above a collection size,
rebuilt when outgrown, and as good as exact search on page vectors."""

from __future__ import annotations

import numpy as np
import pytest

from docsort.core import index as ix
from docsort.store import index_file
from docsort.config.settings import IndexSettings, PipelineSettings
from docsort.store.storage import Collection


def _page_like(sample_collection, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n vectors around the 41 real page vectors of sample_docs (each a real vector plus a little
    seeded noise, renormalised), so the neighbourhoods are those of real pages."""
    with Collection(sample_collection) as col:
        _, real = col.vectors()
    rng = np.random.default_rng(0)
    x = real[rng.integers(0, len(real), n)] + rng.normal(scale=0.02, size=(n, real.shape[1])).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.arange(n, dtype=np.int64) * 7 + 1, x.astype(np.float32)


def test_ivf_finds_what_exact_search_finds_on_page_like_vectors(sample_collection):
    ids, x = _page_like(sample_collection, 6000)
    flat = ix.build_index(ids, x, IndexSettings(type="flat"))
    ivf = ix.build_index(ids, x, IndexSettings(type="ivf"))
    assert ix.index_kind(ivf) == "ivf" and ivf.ntotal == 6000
    q = x[:200]
    _, truth = ix.search_index(flat, q, 10)
    _, got = ix.search_index(ivf, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
    assert recall >= 0.95, recall
    assert (got[:, 0] == ids[:200]).mean() >= 0.95  # a page finds itself first
    again = ix.build_index(ids, x, IndexSettings(type="ivf"))  # seeded training sample: same index
    assert np.array_equal(ix.search_index(again, q, 10)[1], got)


def test_auto_switches_to_ivf_above_its_size_and_an_outgrown_ivf_is_rebuilt(sample_collection, tmp_path):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(sample_collection, root, ignore=shutil.ignore_patterns(".lock"))
    with Collection(root) as col:
        small = IndexSettings(auto_above=20)  # the 41 sample pages are "large" here
        index, info = index_file.sync_index(col, small)
        assert (info.kind, info.action, info.ntotal) == ("ivf", "rebuilt", 41)
        assert index_file.sync_index(col, small)[1].action == "unchanged"  # the stored IVF file fits
        assert index_file.sync_index(col, IndexSettings())[1].kind == "flat"  # default: exact up to 100k
    ids, x = _page_like(sample_collection, 8000)
    grown = ix.build_index(ids[:1000], x[:1000], IndexSettings(type="ivf"))
    assert ix._fits(grown, IndexSettings(type="ivf"), 1500)
    assert not ix._fits(grown, IndexSettings(type="ivf"), 8000)  # 4x more pages: retrain


def test_collections_made_before_ivf_keep_their_hnsw_threshold():
    old = {"index": {"type": "auto", "hnsw_m": 32, "hnsw_ef_search": 64, "hnsw_ef_construction": 40, "auto_hnsw_above": 200000}}
    s = PipelineSettings(**old).index
    assert (s.auto_above, s.auto_kind) == (200000, "hnsw")


@pytest.fixture
def one_faiss_thread():
    """FAISS on one OpenMP thread: its product-quantizer training on 2 threads of a busy 2-core
    machine took 22 s instead of 1 s (OpenMP threads spinning for a core)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def test_ivfpq_finds_each_page_first_and_auto_switches_to_it_above_pq_above(sample_collection, tmp_path, one_faiss_thread):
    """IVF-PQ (issue 17) on 3,000 page-like vectors: a page finds itself first for >= 95 % of
    queries; ``auto`` builds it above ``pq_above``, and ``sync_index`` rebuilds an index of the
    wrong kind for the size (an IVF-Flat file once the collection is above the PQ line)."""
    import shutil

    ids, x = _page_like(sample_collection, 3000)
    pq = ix.build_index(ids, x, IndexSettings(auto_above=1000, pq_above=2000))  # auto, above the line
    assert ix.index_kind(pq) == "ivfpq" and pq.ntotal == 3000
    assert ix._kind_for(IndexSettings(auto_above=1000, pq_above=3000), 3000) == "ivf"  # at the line: IVF-Flat
    q = x[:300]
    _, got = ix.search_index(pq, q, 10)
    assert (got[:, 0] == ids[:300]).mean() >= 0.95, (got[:, 0] == ids[:300]).mean()

    root = tmp_path / "c"
    shutil.copytree(sample_collection, root, ignore=shutil.ignore_patterns(".lock"))
    with Collection(root) as col:
        assert index_file.sync_index(col, IndexSettings(auto_above=20))[1].kind == "ivf"
        info = index_file.sync_index(col, IndexSettings(auto_above=20, pq_above=40))[1]  # 41 pages: above the line
        assert (info.kind, info.action, info.ntotal) == ("ivfpq", "rebuilt", 41)
        assert index_file.sync_index(col, IndexSettings(auto_above=20, pq_above=40))[1].action == "unchanged"
        assert index_file.sync_index(col, IndexSettings(auto_above=20))[1].kind == "ivf"  # back below: IVF-Flat again


def test_an_index_built_in_chunks_is_the_one_built_at_once(sample_collection, tmp_path, one_faiss_thread):
    """``build_in_chunks`` (a rebuild reading the collection 700 vectors at a time) gives the index
    ``build_index`` gives over all 3,000 vectors at once: the same ids in the same order and the
    same search results, for flat, IVF-Flat and IVF-PQ; and ``sync_index`` rebuilds that way."""
    import shutil

    ids, x = _page_like(sample_collection, 3000)
    pos = {int(i): j for j, i in enumerate(ids)}
    reads = []

    def read(chunk):
        reads.append(len(chunk))
        return np.asarray(chunk, np.int64), x[[pos[int(i)] for i in chunk]]

    q = x[::15]
    for st in (IndexSettings(type="flat", build_chunk=700), IndexSettings(type="ivf", build_chunk=700),
               IndexSettings(type="ivfpq", pq_m=16, build_chunk=700)):
        reads.clear()
        chunked, whole = index_file.build_in_chunks(ids, read, st), ix.build_index(ids, x, st)
        assert ix.index_kind(chunked) == ix.index_kind(whole) == st.type
        assert np.array_equal(ix.index_ids(chunked), ix.index_ids(whole)) and chunked.ntotal == 3000
        a, b = ix.search_index(chunked, q, 10), ix.search_index(whole, q, 10)
        assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0])
        assert max(reads[:1] + reads[2:]) <= 700, reads  # every read but the training sample's is one chunk

    root = tmp_path / "c"
    shutil.copytree(sample_collection, root, ignore=shutil.ignore_patterns(".lock", "index*.faiss"))
    with Collection(root) as col:
        st = IndexSettings(type="ivf", build_chunk=10)
        synced, info = index_file.sync_index(col, st)
        assert info.action == "rebuilt"
        one_shot = ix.build_index(*col.vectors(), st)
        assert np.array_equal(ix.index_ids(synced), ix.index_ids(one_shot))
        assert np.array_equal(ix.search_index(synced, col.vectors()[1], 5)[1], ix.search_index(one_shot, col.vectors()[1], 5)[1])
