"""The collection's writer: one transaction per document (the streamed ``--ray`` path and the
in-process ingest) against one transaction per Parquet shard (``[ray] shards``, issue 17).

    python benchmarks/shards_benchmark.py --pages 20000 --shard-pages 4096

Pages: 288-d unit float32 vectors (seeded) with real thumbnails (the sample_docs pages rendered by
``docsort.core.pages.render_for_network``, cycled), in documents of ``--doc-pages`` pages. Times
(a) ``Collection.add_document`` per document, (b) ``docsort.store.shards.write_shard`` (what a Ray
worker does) and (c) ``ShardIntake.take_pending`` (what the driver does), each into a fresh
collection in a temporary folder. Prints one JSON line. Not a test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _thumbnails() -> list[bytes]:
    from docsort.config.settings import RenderSettings
    from docsort.core.pages import SourceFile, discover_files, render_for_network

    out = []
    for src in discover_files([HERE.parent / "sample_docs"]):
        if isinstance(src, SourceFile):
            pages, _, _ = render_for_network(src, RenderSettings(), (299, 299), 1, 3)
            out += [p.thumbnail for p in pages]
    return out


def main() -> None:
    from docsort.store.shards import ShardIntake, write_shard
    from docsort.store.storage import Collection

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=20_000)
    ap.add_argument("--doc-pages", type=int, default=2)
    ap.add_argument("--shard-pages", type=int, default=4096)
    a = ap.parse_args()
    thumbs = _thumbnails()
    rng = np.random.default_rng(0)
    vecs = np.abs(rng.normal(size=(a.pages, 288))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    docs = [(f"{d:064x}", list(range(d * a.doc_pages, min(a.pages, (d + 1) * a.doc_pages)))) for d in range((a.pages + a.doc_pages - 1) // a.doc_pages)]
    out = {"pages": a.pages, "doc_pages": a.doc_pages, "shard_pages": a.shard_pages, "thumbnail_bytes_mean": round(float(np.mean([len(t) for t in thumbs])))}
    with tempfile.TemporaryDirectory() as tmp:
        col = Collection(Path(tmp) / "per-document", create=True)
        t = time.perf_counter()
        for sha, rows in docs:
            col.add_document(sha256=sha, path=f"/scans/{sha[-8:]}.pdf", format="pdf", size_bytes=1000,
                             pages=[(k + 1, 300, 400, vecs[i], thumbs[i % len(thumbs)]) for k, i in enumerate(rows)])
        out["per_document_pages_per_s"] = round(a.pages / (time.perf_counter() - t))
        col.close()

        col = Collection(Path(tmp) / "sharded", create=True)
        flat = [(sha, k + 1, i, len(rows)) for sha, rows in docs for k, i in enumerate(rows)]
        t = time.perf_counter()
        for s in range(0, len(flat), a.shard_pages):
            part = flat[s : s + a.shard_pages]
            write_shard(col.shards_dir(), {
                "sha256": [p[0] for p in part], "path": [f"/scans/{p[0][-8:]}.pdf" for p in part], "format": ["pdf"] * len(part),
                "size_bytes": [1000] * len(part), "n_pages": [p[3] for p in part], "page_no": [p[1] for p in part],
                "width_px": [300] * len(part), "height_px": [400] * len(part), "vector": vecs[[p[2] for p in part]],
                "thumbnail": [thumbs[p[2] % len(thumbs)] for p in part], "error": [""] * len(part)})
        write_s = time.perf_counter() - t
        out["shard_bytes_per_page"] = round(sum(f.stat().st_size for f in col.shards_dir().glob("*.parquet")) / a.pages)
        out["shard_write_pages_per_s"] = round(a.pages / write_s)
        t = time.perf_counter()
        intake = ShardIntake(col)
        got = intake.take_pending()
        failed = intake.finish()
        out["shard_take_in_pages_per_s"] = round(a.pages / (time.perf_counter() - t))
        out["stored_pages"] = col.counts()["pages"]
        out["not_stored_documents"] = len(failed)
        assert sum(got.stored.values()) == a.pages == out["stored_pages"]
        col.close()
    out["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
