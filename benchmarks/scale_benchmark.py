"""Search and clustering at scale, on synthetic vectors of docsort's real dimension (288).

    python benchmarks/scale_benchmark.py --sizes 100000 1000000          # FAISS
    python benchmarks/scale_benchmark.py --cluster-sizes 20000 100000    # UMAP + HDBSCAN
    python benchmarks/scale_benchmark.py --sizes --cluster-sizes --pq-sizes 1000000   # IVF-Flat vs IVF-PQ

Vectors: a mixture of ``n_clusters`` Gaussian blobs in 288-d, made non-negative and
L2-normalised like pooled ReLU features (seeded). FAISS indexes are built with
``docsort.core.index.build_index`` (the code docsort runs), and for comparison IVF-Flat.
Reports build time, p50/p99 single-query latency (1,000 queries, one at a time), batched
throughput and recall@10 against the exact flat index; and UMAP + HDBSCAN wall time and peak RSS
through ``docsort.core.clustering.cluster_vectors`` in a fresh process per size.

Writes ``OUT/scale.json`` and ``OUT/scale.md``. Not a test: run by hand (1M vectors take minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def synthetic(n: int, d: int = 288, n_clusters: int = 50, latent: int = 16, seed: int = 0) -> np.ndarray:
    """float32 (n, d) unit vectors: ``n_clusters`` blobs, each varying along its own
    ``latent``-dimensional subspace plus a little isotropic noise, made non-negative like pooled
    ReLU features. Real page vectors have a low intrinsic dimension; isotropic 288-d noise would
    make every neighbour search artificially hard. Generated in chunks, seeded.
    """
    rng = np.random.default_rng(0)  # the blobs are the same for data and queries
    centres = np.abs(rng.normal(size=(n_clusters, d))).astype(np.float32)
    bases = (rng.normal(size=(n_clusters, latent, d)) / np.sqrt(latent)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        lab = rng.integers(0, n_clusters, m)
        z = rng.normal(size=(m, latent)).astype(np.float32)
        x = centres[lab] + np.einsum("ml,mld->md", z, bases[lab]) + 0.05 * rng.normal(size=(m, d)).astype(np.float32)
        x = np.maximum(x, 0)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def bench_faiss(n: int, n_queries: int = 1000, k: int = 10) -> list[dict]:
    import faiss

    from docsort.core.index import build_index, search_index
    from docsort.config.settings import IndexSettings

    x = synthetic(n)
    q = synthetic(n_queries, seed=1)
    ids = np.arange(n, dtype=np.int64)
    rows, truth = [], None
    configs = [("flat", IndexSettings(type="flat")), ("hnsw M=32 ef=64", IndexSettings(type="hnsw")),
               ("hnsw M=32 ef=128", IndexSettings(type="hnsw", hnsw_ef_search=128))]
    for name, st in configs:
        t = time.perf_counter()
        index = build_index(ids, x, st)
        build = time.perf_counter() - t
        rows.append(_measure(name, n, index, q, k, build, truth, search_index))
        if truth is None:
            truth = rows[-1].pop("_ids")
        else:
            rows[-1].pop("_ids")
        del index
    nlist = int(4 * np.sqrt(n))
    for nprobe in (16, 64):
        t = time.perf_counter()
        quant = faiss.IndexFlatIP(x.shape[1])
        ivf = faiss.IndexIVFFlat(quant, x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(x[np.random.default_rng(0).choice(n, min(n, 50 * nlist), replace=False)])
        ivf.add(x)
        ivf.nprobe = nprobe
        build = time.perf_counter() - t
        row = _measure(f"ivf-flat nlist={nlist} nprobe={nprobe}", n, ivf, q, k, build, truth, search_index)
        row.pop("_ids")
        rows.append(row)
    return rows


def bench_pq(n: int, n_queries: int = 1000, k: int = 10, nprobe: int = 64) -> list[dict]:
    """IVF-Flat against IVF-PQ (M = 16 / 32 / 48 sub-quantizers of 8 bits; FAISS wiki "Lower memory
    footprint") and IVF-PQ M=48 with an exact re-ranking stage (``IndexRefineFlat``, k_factor 4), all
    through :func:`docsort.core.index.build_index` (4 sqrt(n) lists, ``nprobe`` probed, trained on
    the same seeded sample): build seconds, bytes per vector (the serialised index / n), p50 latency
    and recall@10 against the exact answer."""
    import faiss

    from docsort.config.settings import IndexSettings
    from docsort.core.index import build_index, ivf_nlist, search_index

    x = synthetic(n)
    q = synthetic(n_queries, seed=1)
    ids = np.arange(n, dtype=np.int64)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, truth = exact.search(q, k)
    del exact
    rows = []
    configs = [("ivf-flat", IndexSettings(type="ivf", ivf_nprobe=nprobe), None)]
    configs += [(f"ivf-pq M={m}", IndexSettings(type="ivfpq", pq_m=m, ivf_nprobe=nprobe), None) for m in (16, 32, 48)]
    if n <= 100_000:  # the re-ranking row: memory is the flat index's plus the codes, so it saves nothing
        configs += [("ivf-pq M=48 + refine-flat k_factor=4", IndexSettings(type="ivfpq", pq_m=48, ivf_nprobe=nprobe), 4)]
    # Not docsort's code: FAISS factory strings for the middle ground (8-bit scalar quantizer, 288
    # bytes a vector; FAISS wiki "Guidelines to choose an index"), trained on the same sample.
    configs += [(f"faiss {f.replace('{nlist}', '')}", f, None) for f in ("IVF{nlist},SQ8", "IVF{nlist},PQ48 + refine SQ8 k_factor=8")]
    for name, st, k_factor in configs:
        print(f"  {name}...", file=sys.stderr)
        t = time.perf_counter()
        if isinstance(st, str):
            index = keep = _factory_index(st, x, ivf_nlist(IndexSettings(type="ivf"), n), nprobe)
        else:
            index = keep = build_index(ids, x, st)
        if k_factor:  # the exact vectors kept next to the codes: a re-ranking stage (ids = row numbers here)
            index = faiss.IndexRefineFlat(faiss.downcast_index(keep.index), faiss.swig_ptr(x))
            index.k_factor = k_factor
        build = time.perf_counter() - t
        nbytes = int(faiss.serialize_index(index).size)
        row = _measure(f"{name} nlist={ivf_nlist(IndexSettings(type='ivf'), n)} nprobe={nprobe}", n, index, q, k, build, truth, search_index)
        row.pop("_ids")
        row["bytes_per_vector"] = round(nbytes / n, 1)
        rows.append(row)
        del index, keep
    return rows


def _factory_index(spec: str, x: np.ndarray, nlist: int, nprobe: int):
    """``faiss.index_factory`` for ``spec`` (``{nlist}`` filled in; ``+ refine SQ8 k_factor=K``
    wraps it in ``IndexRefine`` over an 8-bit scalar quantizer), inner product, trained on the
    seeded sample ``build_index`` uses, filled with ``x``."""
    import faiss

    from docsort.config.settings import IndexSettings
    from docsort.core.index import training_rows

    base_spec, _, refine = spec.partition(" + refine SQ8 k_factor=")
    base = faiss.index_factory(x.shape[1], base_spec.format(nlist=nlist), faiss.METRIC_INNER_PRODUCT)
    index = base
    if refine:
        sq = faiss.IndexScalarQuantizer(x.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefine(base, sq)
        index.k_factor = int(refine)  # (faiss's wrapper keeps base and sq referenced by the IndexRefine)
    rows = training_rows(IndexSettings(type="ivf"), len(x))
    index.train(x if rows is None else x[rows])
    index.add(x)
    faiss.extract_index_ivf(base).nprobe = nprobe
    return index


def _measure(name, n, index, q, k, build, truth, search_index):
    lat = []
    for i in range(len(q)):
        t = time.perf_counter()
        search_index(index, q[i : i + 1], k)
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    _, found = search_index(index, q, k)
    batched = len(q) / (time.perf_counter() - t)
    recall = 1.0 if truth is None else float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
    return {"index": name, "n": n, "build_s": round(build, 2), "p50_ms": round(1000 * float(np.percentile(lat, 50)), 3),
            "p99_ms": round(1000 * float(np.percentile(lat, 99)), 3), "batched_qps": round(batched), "recall@10": round(recall, 4),
            "_ids": found}


def bench_cluster(n: int) -> dict:
    from docsort.core.clustering import cluster_vectors
    from docsort.config.settings import HdbscanSettings, UmapSettings

    x = synthetic(n)
    t = time.perf_counter()
    res = cluster_vectors(x, UmapSettings(), HdbscanSettings())
    return {"n": n, "seconds": round(time.perf_counter() - t, 1), "clusters": res.n_clusters, "noise": res.n_noise,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    ap.add_argument("--cluster-sizes", type=int, nargs="*", default=[20_000, 100_000])
    ap.add_argument("--pq-sizes", type=int, nargs="*", default=[])
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--one-cluster", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one_cluster:
        print("RESULT" + json.dumps(bench_cluster(a.one_cluster)))
        return
    out = {"faiss": [], "cluster": [], "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}
    for n in a.sizes:
        print(f"faiss n={n}...", file=sys.stderr)
        out["faiss"] += bench_faiss(n)
    out["pq"] = []
    for n in a.pq_sizes:
        print(f"ivf-flat vs ivf-pq n={n}...", file=sys.stderr)
        out["pq"] += bench_pq(n)
    for n in a.cluster_sizes:
        print(f"umap+hdbscan n={n}...", file=sys.stderr)
        res = subprocess.run([sys.executable, __file__, "--one-cluster", str(n)], capture_output=True, text=True)
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")]
        out["cluster"].append(json.loads(line[-1][6:]) if line else {"n": n, "error": res.stderr[-500:]})
    md = ["| index | n | build s | p50 ms | p99 ms | batched q/s | recall@10 |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['index']} | {r['n']} | {r['build_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['batched_qps']} | {r['recall@10']} |" for r in out["faiss"]]
    md += ["", "| UMAP+HDBSCAN n | seconds | clusters | noise | peak RSS MB |", "|---|---|---|---|---|"]
    md += [f"| {r['n']} | {r.get('seconds')} | {r.get('clusters')} | {r.get('noise')} | {r.get('peak_rss_mb')} |" for r in out["cluster"]]
    md += ["", "| IVF index | n | build s | bytes/vector | p50 ms | p99 ms | batched q/s | recall@10 |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['index']} | {r['n']} | {r['build_s']} | {r['bytes_per_vector']} | {r['p50_ms']} | {r['p99_ms']} | {r['batched_qps']} | {r['recall@10']} |"
           for r in out["pq"]]
    out["loadavg"] = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    (a.out / "scale.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
