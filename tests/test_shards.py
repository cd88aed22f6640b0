"""Parquet shards of a Ray ingest (issue 17), taken in without Ray: a document is stored only when
all its pages have been seen, a page written twice (a retried task's shard) is stored once, a
shard taken in again stores nothing, and a shard is deleted once nothing still needs it. (The
sharded ingest on Ray itself, against the streamed one, is in tests/test_ray.py.)"""

from __future__ import annotations

import numpy as np

from docsort.store.shards import ShardIntake, TakeIn, write_shard
from docsort.store.storage import Collection

D = 288
RNG = np.random.default_rng(0)
#: sha256 -> (path, format, n_pages): A three pages, B one, C two (only one ever written), E one that failed.
DOCS = {"a" * 64: ("/scans/a.pdf", "pdf", 3), "b" * 64: ("/scans/b.jpg", "jpeg", 1), "c" * 64: ("/scans/c.pdf", "pdf", 2),
        "e" * 64: ("/scans/e.pdf", "pdf", 2)}
VECTORS = {(sha, p): (lambda v: v / np.linalg.norm(v))(np.abs(RNG.normal(size=D)).astype(np.float32))
           for sha, (_, _, n) in DOCS.items() for p in range(1, n + 1)}


def _rows(pages: list[tuple[str, int]], error: str = "") -> dict:
    cols = {k: [] for k in ("sha256", "path", "format", "size_bytes", "n_pages", "page_no", "width_px", "height_px", "vector", "thumbnail", "error")}
    for sha, p in pages:
        path, fmt, n = DOCS[sha]
        for k, v in (("sha256", sha), ("path", path), ("format", fmt), ("size_bytes", 1000 + n), ("n_pages", n), ("page_no", p),
                     ("width_px", 300 + p), ("height_px", 400), ("vector", VECTORS.get((sha, p), np.zeros(D, np.float32))),
                     ("thumbnail", f"jpeg {sha[0]}{p}".encode()), ("error", error)):
            cols[k].append(v)
    cols["vector"] = np.stack(cols["vector"])
    return cols


def _stored(col: Collection) -> dict[tuple[str, int], tuple[np.ndarray, bytes]]:
    pages = col.pages()
    ids, vecs = col.vectors([p.page_id for p in pages])
    by_id = dict(zip(ids.tolist(), vecs))
    return {(p.sha256, p.page_no): (by_id[p.page_id], col.thumbnail(p.page_id)) for p in pages}


def test_shards_are_taken_in_whole_documents_once_and_then_deleted(tmp_path):
    a, b, c, e = (s * 64 for s in "abce")
    with Collection(tmp_path / "col", create=True) as col:
        folder = col.shards_dir()
        s1 = write_shard(folder, _rows([(a, 1), (a, 2), (b, 1)]))
        s2 = write_shard(folder, _rows([(a, 3), (c, 1)]))
        s3 = write_shard(folder, _rows([(a, 3), (b, 1)]))  # a retried task's rows again, in another shard
        s4 = write_shard(folder, _rows([(e, 0)], error="/scans/e.pdf: cannot read page 2"))
        assert write_shard(folder, _rows([(a, 1), (a, 2), (b, 1)])) == s1  # the same rows: the same shard
        intake = ShardIntake(col)
        first = intake.take(s1)
        assert first.stored == {b: 1} and (folder / s1).exists()  # A is not whole yet: s1 is still needed
        assert col.find_document(a) is None
        second = intake.take(s2)
        assert second.stored == {a: 3}
        assert not (folder / s1).exists() and (folder / s2).exists()  # s2 holds half of C
        assert intake.take(s3).stored == {} and intake.take(s4).stored == {}
        failed = intake.finish()
        assert failed == {c: ("/scans/c.pdf", "expected 2 pages, read 1"), e: ("/scans/e.pdf", "/scans/e.pdf: cannot read page 2")}
        assert intake.pending() == [] and not list(folder.glob("*.parquet"))
        stored = _stored(col)
        assert sorted(stored) == [(a, 1), (a, 2), (a, 3), (b, 1)]  # every page once, C and E not at all
        for (sha, p), (vec, thumb) in stored.items():
            assert np.array_equal(vec, VECTORS[(sha, p)]) and thumb == f"jpeg {sha[0]}{p}".encode()
        assert col.counts()["documents"] == 2

        # The same shards taken in again (a restart that found them, a task that wrote them twice): nothing new.
        for pages in ([(a, 1), (a, 2), (b, 1)], [(a, 3), (c, 1)], [(a, 3), (b, 1)]):
            write_shard(folder, _rows(pages))
        again = ShardIntake(col)
        result = again.take_pending()
        assert result.stored == {} and result.already == {a, b}
        assert again.finish() == {c: ("/scans/c.pdf", "expected 2 pages, read 1")}
        assert sorted(_stored(col)) == sorted(stored) and col.counts()["pages"] == 4


def test_the_shards_a_killed_run_left_are_taken_in_and_none_stays(tmp_path):
    """What every ingest does first (``store.shards.take_leftovers``, called by ``jobs.ingest``
    before it lists its files): a killed run's shards are taken in (A and B whole: stored; C half:
    not), its half-written temporary shard and a shard cut short (unreadable) are deleted, and
    nothing stays in ``shards/``; a collection that never had shards gets no folder."""
    from docsort.store.shards import take_leftovers

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    with Collection(tmp_path / "empty", create=True) as col:
        assert take_leftovers(col) == (TakeIn(), []) and not (col.root / Collection.SHARDS).exists()
    with Collection(tmp_path / "col", create=True) as col:
        folder = col.shards_dir()
        write_shard(folder, _rows([(a, 1), (a, 2), (b, 1)]))
        write_shard(folder, _rows([(a, 3), (c, 1)]))
        (folder / ".shard-0123456789abcdef.parquet.4242.tmp").write_bytes(b"PAR1 half a shard")  # its writer was killed
        cut = write_shard(folder, _rows([(c, 2)]))
        (folder / cut).write_bytes((folder / cut).read_bytes()[:100])  # cut short: unreadable
        seen = []
        taken, unreadable = take_leftovers(col, on_stored=lambda sha, n: seen.append((sha, n)))
        assert taken.stored == {a: 3, b: 1} and sorted(seen) == [(a, 3), (b, 1)] and unreadable == [cut]
        assert sorted(_stored(col)) == [(a, 1), (a, 2), (a, 3), (b, 1)] and col.find_document(c) is None
        assert list(folder.iterdir()) == [], "a leftover stayed in shards/"
        assert take_leftovers(col) == (TakeIn(), [])  # nothing twice
