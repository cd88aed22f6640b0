"""UMAP / HDBSCAN settings and the consensus of several UMAP runs, on the two style-balanced
development corpora, visual and fused (issue 13, item 4: "clusters that do not swing").

    python benchmarks/dev_corpus.py --styles benchmarks/out/dev_styles
    python benchmarks/dev_corpus2.py benchmarks/out/dev_corpus2
    for c in dev_styles dev_corpus2; do
        docsort ingest benchmarks/out/$c --collection benchmarks/out/col_$c --weights bundled --no-progress
        docsort ocr --collection benchmarks/out/col_$c --no-progress
        docsort cluster --collection benchmarks/out/col_$c
    done
    python benchmarks/consensus_study.py benchmarks/out/col_dev_styles=benchmarks/out/dev_styles \\
        benchmarks/out/col_dev_corpus2=benchmarks/out/dev_corpus2 --variants default,cons5,nn30_cons5 --seeds 0-9

Each collection was clustered once by ``docsort cluster`` (which fits the scan-style-invariant
projection and the text model); its vectors as the index and clustering use them
(``docsort.queries.vectors.page_vectors``: ``visual`` = projected, ``fused`` = projected + LSA
text) are then clustered in memory by ``docsort.core.clustering.cluster_vectors`` (what
``docsort cluster`` calls) under each variant and UMAP ``random_state``, two processes at a time
(UMAP with a seed is single-threaded). Per corpus, vectors and variant: ARI with the type (noise
pages as singletons, ``docsort.queries.evaluate.cluster_scores``; mean ± sd over the seeds),
seed-to-seed ARI (mean and min over all pairs of seeds), style leakage (NMI of clusters vs scan
style, ``style_leakage``), noise share, clusters and seconds a clustering. Writes
``--out/results.json`` and prints a Markdown table.

Variants: ``default`` (the pipeline's settings), or parts joined by ``_``: ``nnN`` (UMAP
``n_neighbors``), ``consR`` (``consensus_runs = R``), ``mcsN`` (HDBSCAN ``min_cluster_size``), ``msN`` (HDBSCAN
``min_samples``), ``cmcsN`` (the consensus step's ``min_cluster_size`` only, each run keeping its
own; a probe, patched into ``docsort.core.clustering.consensus_labels``), ``splitX`` (a probe:
HDBSCAN again inside each cluster, :func:`_split_clusters`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def variant_settings(base, name: str, seed: int):
    """The pipeline settings of variant ``name`` with UMAP ``random_state = seed``."""
    umap, hdb = {"random_state": seed}, {}
    for part in name.split("_"):
        if part == "default" or part.startswith("cmcs") or part.startswith("split"):
            continue
        if part.startswith("nn"):
            umap["n_neighbors"] = int(part[2:])
        elif part.startswith("cons"):
            umap["consensus_runs"] = int(part[4:])
        elif part.startswith("mcs"):
            hdb["min_cluster_size"] = int(part[3:])
        elif part.startswith("ms"):
            hdb["min_samples"] = int(part[2:])
        else:
            raise SystemExit(f"unknown variant part {part!r} in {name!r}")
    return base.model_copy(update={"umap": base.umap.model_copy(update=umap), "hdbscan": base.hdbscan.model_copy(update=hdb)})


def _one(job):
    """A worker: cluster one set of vectors under one variant and seed; (key, labels, seconds)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from docsort.config.settings import load_pipeline
    from docsort.core.clustering import cluster_vectors

    key, vectors, variant, seed = job
    import docsort.core.clustering as clustering

    if not hasattr(clustering, "_study_consensus_labels"):
        clustering._study_consensus_labels = clustering.consensus_labels
    cmcs = [int(p[4:]) for p in variant.split("_") if p.startswith("cmcs")]
    if cmcs:
        clustering.consensus_labels = lambda labs, mcs, ms, method="eom": clustering._study_consensus_labels(
            labs, cmcs[0], max(1, cmcs[0] // 2), method)
    else:
        clustering.consensus_labels = clustering._study_consensus_labels
    s = variant_settings(load_pipeline("default").with_overrides(weights="bundled"), variant, seed)
    t = time.perf_counter()
    r = cluster_vectors(vectors, s.umap, s.hdbscan)
    labels = r.labels
    split = [float(p[5:]) for p in variant.split("_") if p.startswith("split")]
    if split:
        labels = _split_clusters(vectors, labels, split[0])
    return key, labels, time.perf_counter() - t


def _split_clusters(vectors: np.ndarray, labels: np.ndarray, divisor: float) -> np.ndarray:
    """Probe (``splitX``): HDBSCAN again inside each cluster, on its pages' own vectors (no UMAP),
    with ``min_cluster_size = max(3, round(sqrt(m) / X))`` and a third of it as ``min_samples``;
    a cluster with two or more parts is split, its inner noise going to the nearest part's centre."""
    import hdbscan

    out = labels.copy()
    fresh = int(labels.max()) + 1
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        mcs = max(3, int(round(np.sqrt(len(idx)) / divisor)))
        if len(idx) < 2 * mcs:
            continue
        inner = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=max(1, mcs // 3)).fit_predict(vectors[idx])
        parts = np.unique(inner[inner >= 0])
        if len(parts) < 2:
            continue
        centres = np.stack([vectors[idx][inner == q].mean(axis=0) for q in parts])
        near = parts[np.argmax(vectors[idx] @ centres.T, axis=1)]
        inner = np.where(inner >= 0, inner, near)
        for q in parts[1:]:
            out[idx[inner == q]] = fresh
            fresh += 1
    return out


def load(collection: Path, corpus: Path, modes: list[str]):
    """``{mode: (vectors of the labelled pages, categories, styles)}`` for each of ``modes``
    (``visual``, ``fused``); styles ``None`` where labels.csv has no style column."""
    from docsort.config.settings import load_pipeline
    from docsort.queries.evaluate import match_label_rows, read_labels
    from docsort.queries.vectors import page_vectors
    from docsort.store.storage import Collection

    base = load_pipeline("default").with_overrides(weights="bundled")
    out = {}
    with Collection(collection) as col:
        ids, rows, _ = match_label_rows(col, read_labels(corpus / "labels.csv"))
        for mode in modes:
            settings, kind = base, mode
            if mode.startswith("fused") and mode != "fused":  # fusedW: text.fusion_weight = W
                settings = base.model_copy(update={"text": base.text.model_copy(update={"fusion_weight": float(mode[5:])})})
                kind = "fused"
            pv = page_vectors(col, settings, kind, page_ids=ids)
            if pv.mode != kind:
                raise SystemExit(f"{collection}: no {mode} vectors (run docsort ocr and docsort cluster first)")
            out[mode] = (np.ascontiguousarray(pv.vectors, np.float32),
                         np.array([rows[int(i)].category for i in pv.ids]), np.array([rows[int(i)].style for i in pv.ids], dtype=object))
    return out


def main() -> None:
    from sklearn.metrics import adjusted_rand_score

    from docsort.queries.evaluate import cluster_scores, style_leakage

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", help="COLLECTION=CORPUS (the corpus folder holds labels.csv with a style column)")
    ap.add_argument("--variants", default="default,cons5")
    ap.add_argument("--seeds", default="0-9", help="A-B or comma-separated UMAP random_state values")
    ap.add_argument("--modes", default="visual,fused", help="visual, fused (text.fusion_weight as in the pipeline) or fusedW (weight W, e.g. fused0.5)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "consensus_study")
    a = ap.parse_args()
    seeds = list(range(int(a.seeds.split("-")[0]), int(a.seeds.split("-")[1]) + 1)) if "-" in a.seeds else [int(s) for s in a.seeds.split(",")]
    variants, modes = a.variants.split(","), a.modes.split(",")
    data = {}
    for pair in a.pairs:
        col, corpus = (Path(p) for p in pair.split("="))
        data[corpus.name] = load(col, corpus, modes)
    jobs = [((c, m, v, s), data[c][m][0], v, s) for c in data for m in modes for v in variants for s in seeds]
    load_before = open("/proc/loadavg").read().split()[0]
    labels, seconds = {}, {}
    with ProcessPoolExecutor(a.workers) as pool:
        for key, lab, took in pool.map(_one, jobs):
            labels[key], seconds[key] = lab, took
            print(f"  {key}: {len(set(lab.tolist()) - {-1})} clusters, {took:.1f} s", file=sys.stderr, flush=True)
    results = []
    for c, m, v in itertools.product(data, modes, variants):
        _, cats, styles = data[c][m]
        runs = [labels[(c, m, v, s)] for s in seeds]
        scores = [cluster_scores(cats, r) for r in runs]
        leak = [style_leakage(styles, r)["style_nmi"] if None not in styles else float("nan") for r in runs]
        single = [np.where(r < 0, 10_000 + np.arange(len(r)), r) for r in runs]
        pair = [adjusted_rand_score(x, y) for x, y in itertools.combinations(single, 2)]
        results.append({"corpus": c, "mode": m, "variant": v, "pages": len(cats), "seeds": seeds,
                        "ari": [s["ari"] for s in scores], "noise": [s["noise_share"] for s in scores],
                        "clusters": [s["n_clusters"] for s in scores], "style_nmi": leak,
                        "seed_to_seed": {"mean": float(np.mean(pair)), "min": float(np.min(pair))} if pair else None,
                        "seconds": float(np.mean([seconds[(c, m, v, s)] for s in seeds]))})
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"load average {load_before} -> {open('/proc/loadavg').read().split()[0]}")
    print("| corpus | vectors | variant | ARI (mean ± sd) | seed-to-seed ARI mean (min) | style leakage | noise | clusters | s a clustering |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s2s = r["seed_to_seed"] or {"mean": float("nan"), "min": float("nan")}
        print(f"| {r['corpus']} ({r['pages']}) | {r['mode']} | {r['variant']} | {np.mean(r['ari']):.3f} ± {np.std(r['ari'], ddof=1):.3f} | "
              f"{s2s['mean']:.3f} ({s2s['min']:.3f}) | {np.mean(r['style_nmi']):.3f} | {np.mean(r['noise']):.1%} | "
              f"{np.mean(r['clusters']):.1f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
