"""Engines and precisions against TensorFlow float32: speed, per-page cosine, kNN@5, ARI (issue 16).

    python benchmarks/engine_study.py sample_docs/labels.csv benchmarks/out/dev_corpus/labels.csv

For each labelled corpus (a ``labels.csv`` whose files are relative to its folder) and each
engine x precision (TensorFlow float32, OpenVINO float32, OpenVINO bfloat16, and Keras'
``mixed_bfloat16`` on TensorFlow), the corpus is ingested into its own collection with the
default pipeline and the bundled weights, clustered (UMAP + HDBSCAN, default settings), and
measured with ``docsort.queries.evaluate.evaluate``: kNN precision@5 and ARI. Each page's vector is
compared with its TensorFlow float32 vector (cosine, min and mean), as are the
:func:`docsort.core.features.probe_pages` vectors (what a collection's engine check compares). A
last row perturbs the TensorFlow float32 vectors with seeded noise scaled so that their cosine to
the originals is the engine check's threshold, to see what that threshold would let through.

Model-only speed: img/s of ``FeatureExtractor.embed`` on 96 real pages (3 batches of 32, after one
warm-up batch), the same process for every engine. Prints a Markdown table; with ``--json``
writes the figures. Not a test: run by hand and record the load average (``/proc/loadavg``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("DOCSORT_OFFLINE", "1")

import numpy as np  # noqa: E402

CONFIGS = [("tensorflow", "float32"), ("openvino", "float32"), ("openvino", "bfloat16"), ("tensorflow", "bfloat16")]


def _settings(engine: str, precision: str):
    from docsort.config.settings import load_pipeline

    s = load_pipeline("default").with_overrides(weights="bundled")
    return s.model_copy(update={"features": s.features.model_copy(update={"engine": engine, "precision": precision})})


def _aligned_vectors(col) -> tuple[list[tuple[str, int]], np.ndarray]:
    """The collection's vectors ordered by (path, page), with those keys."""
    table = col.page_table().set_index("page_id")
    ids, vecs = col.vectors()
    keys = [(str(table.at[int(i), "path"]), int(table.at[int(i), "page"])) for i in ids]
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return [keys[i] for i in order], vecs[order]


def study(labels: Path, workdir: Path, threshold: float) -> list[dict]:
    from docsort.queries.evaluate import evaluate, knn_precision
    from docsort.jobs.cluster import cluster
    from docsort.jobs.ingest import ingest
    from docsort.store.manifest import make_extractor
    from docsort.store.storage import Collection

    rows, ref = [], None
    for engine, precision in CONFIGS:
        settings = _settings(engine, precision)
        ex = make_extractor(settings, announce=False)
        root = workdir / f"{labels.parent.name}-{engine}-{precision}"
        with Collection(root, create=True) as col:
            rep = ingest(col, [labels.parent], settings, extractor=ex, progress=False, log=lambda m: None)
            cluster(col, settings, log=lambda m: None)
            ev = evaluate(col, labels, [5])
            keys, vecs = _aligned_vectors(col)
        probe = ex.probe_vectors()
        row = {"corpus": labels.parent.name, "engine": engine, "precision": precision, "pages": rep.pages_added,
               "knn5": ev.knn_precision[5], "ari": ev.ari, "probe": probe}
        if ref is None:
            ref = {"keys": keys, "vecs": vecs, "probe": probe, "ev": ev}
        assert keys == ref["keys"], "collections hold different pages"
        cos = (vecs * ref["vecs"]).sum(axis=1)
        pcos = (probe * ref["probe"]).sum(axis=1)
        row.update(cos_min=float(cos.min()), cos_mean=float(cos.mean()), probe_cos_min=float(pcos.min()),
                   dknn5=ev.knn_precision[5] - ref["ev"].knn_precision[5],
                   dari=(ev.ari - ref["ev"].ari) if ev.ari is not None and ref["ev"].ari is not None else None)
        rows.append(row)
        print(f"  {row['corpus']} {engine} {precision}: kNN@5 {row['knn5']:.4f} cos min {row['cos_min']:.6f}", file=sys.stderr)
    # What the engine check's threshold lets through: noise with cosine = threshold to the originals.
    from docsort.queries.evaluate import match_labels, read_labels

    with Collection(workdir / f"{labels.parent.name}-tensorflow-float32") as col:
        ids, cats, _ = match_labels(col, read_labels(labels))
        _, v = col.vectors(ids)
    base, _ = knn_precision(v, cats, [5])
    deltas = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(v.shape).astype(np.float32)
        noise -= (noise * v).sum(axis=1, keepdims=True) * v  # orthogonal to each vector
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        angle = np.arccos(threshold)
        w = np.cos(angle) * v + np.sin(angle) * noise
        got, _ = knn_precision(w, cats, [5])
        deltas.append(got[5] - base[5])
    rows.append({"corpus": labels.parent.name, "engine": f"TF float32 + noise at cosine {threshold}", "precision": "-",
                 "pages": len(v), "knn5": base[5] + float(np.mean(deltas)), "ari": None, "cos_min": threshold,
                 "cos_mean": threshold, "probe_cos_min": None, "dknn5": float(np.mean(deltas)),
                 "dknn5_worst": float(max(deltas, key=abs)), "dari": None})
    return rows


def speed(pages: np.ndarray) -> list[dict]:
    from docsort.store.manifest import make_extractor

    out = []
    for engine, precision in CONFIGS:
        ex = make_extractor(_settings(engine, precision), announce=False)
        ex.embed(pages[:32])
        t = time.perf_counter()
        ex.embed(pages)
        out.append({"engine": engine, "precision": precision, "img_per_s": len(pages) / (time.perf_counter() - t),
                    "actual": ex.description["engine"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels", type=Path, nargs="+")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--skip-speed", action="store_true")
    a = ap.parse_args()

    from docsort.core.pages import discover_files, iter_pages, to_network_input
    from docsort.store.manifest import ENGINE_PROBE_MIN_COSINE
    from docsort.config.settings import RenderSettings

    load = open("/proc/loadavg").read().split()[:3]
    result: dict = {"loadavg_start": load, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not a.skip_speed:
        imgs = []
        for f in discover_files([a.labels[0].parent]):
            if hasattr(f, "format"):
                imgs += [to_network_input(p.image, (299, 299)) for p in iter_pages(f, RenderSettings())]
        pages = np.stack((imgs * 3)[:96])
        result["speed"] = speed(pages)
    with tempfile.TemporaryDirectory() as tmp:
        result["quality"] = [r for lab in a.labels for r in study(lab, Path(tmp), ENGINE_PROBE_MIN_COSINE)]
    result["loadavg_end"] = open("/proc/loadavg").read().split()[:3]

    print(f"load average at start {' '.join(load)}, at end {' '.join(result['loadavg_end'])}\n")
    if "speed" in result:
        print("| engine | precision | img/s (batch 32, 96 real pages) |\n|---|---|---|")
        for r in result["speed"]:
            print(f"| {r['engine']} | {r['precision']} | {r['img_per_s']:.1f} |")
        print()

    def f(v, fmt=".4f"):
        return "-" if v is None else format(v, fmt)

    print("| corpus | engine | precision | pages | cosine to TF f32 min / mean | probe cosine min | kNN@5 | Δ kNN@5 | ARI | Δ ARI |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in result["quality"]:
        print(f"| {r['corpus']} | {r['engine']} | {r['precision']} | {r['pages']} | {f(r['cos_min'], '.6f')} / {f(r['cos_mean'], '.6f')} "
              f"| {f(r['probe_cos_min'], '.6f')} | {f(r['knn5'])} | {f(r['dknn5'], '+.4f')} | {f(r['ari'], '.3f')} | {f(r['dari'], '+.3f')} |")
    if a.json:
        for r in result["quality"]:
            r.pop("probe", None)
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
