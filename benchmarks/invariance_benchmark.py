"""Scan-style invariance (issue 13): what it costs and what it changes on a labelled folder.

Builds a collection of FOLDER (default sample_docs/, bundled weights), then measures

* ingest: wall seconds per page, and the cost of applying the projection to a page's vector
  (the (1, D) x (D, dims) product; timed over many vectors) as a share of it;
* the fit (:func:`docsort.jobs.invariance.fit_invariance`, forced): wall seconds, and per 1,000 pages;
* sorting quality before (raw vectors) and after (projected): kNN precision@5 against
  labels.csv (leave-one-out, cosine), and ARI of UMAP + HDBSCAN with the pipeline's settings over
  several UMAP seeds.

Usage::

    python benchmarks/invariance_benchmark.py [--docs sample_docs] [--seeds 5] [--dims 32]

Prints one JSON object; write the figures with the load average into benchmarks/RESULTS.md.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from sklearn.metrics import adjusted_rand_score

    from docsort.core.clustering import cluster_vectors
    from docsort.queries.evaluate import knn_precision, match_labels, read_labels
    from docsort.jobs.invariance import fit_invariance
    from docsort.jobs.ingest import ingest
    from docsort.store.manifest import make_extractor
    from docsort.config.settings import load_pipeline
    from docsort.store.storage import Collection

    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", default=str(REPO / "sample_docs"))
    ap.add_argument("--labels", default=None, help="labels.csv (default DOCS/labels.csv)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--dims", type=int, default=32)
    ap.add_argument("--shrinkage", type=float, default=None)
    args = ap.parse_args()
    labels = args.labels or str(Path(args.docs) / "labels.csv")

    settings = load_pipeline("default").with_overrides(weights="bundled")
    inv = settings.invariance.model_copy(update={"dims": args.dims, **({"shrinkage": args.shrinkage} if args.shrinkage else {})})
    settings = settings.model_copy(update={"invariance": inv})
    out: dict = {"loadavg_start": open("/proc/loadavg").read().split()[:3], "docs": args.docs, "dims": args.dims,
                 "shrinkage": inv.shrinkage}
    extractor = make_extractor(settings, announce=False)
    extractor.embed(np.zeros((1, *extractor.input_size, extractor.channels), np.uint8))  # build the graph first
    with tempfile.TemporaryDirectory() as tmp, Collection(Path(tmp) / "c", create=True) as col:
        t = time.perf_counter()
        rep = ingest(col, [args.docs], settings, extractor=extractor, progress=False, log=lambda m: None)
        ingest_s = time.perf_counter() - t
        n = rep.pages_added
        out["pages"] = n
        out["ingest_s_per_page"] = ingest_s / n
        with col.write_lock():
            t = time.perf_counter()
            fit = fit_invariance(col, settings, extractor=extractor, force=True, progress=False, log=lambda m: None)
            fit_s = time.perf_counter() - t
        proj = fit.projection
        out["fit_s"] = fit_s
        out["fit_s_per_1000_pages"] = 1000 * fit_s / max(fit.pages_fitted, 1)
        ids, raw = col.vectors()
        big = np.repeat(raw, max(1, 20000 // len(raw)), axis=0)
        t = time.perf_counter()
        proj.transform(big)
        per_vec = (time.perf_counter() - t) / len(big)
        out["transform_s_per_page"] = per_vec
        out["transform_share_of_ingest"] = per_vec / out["ingest_s_per_page"]

        lab_ids, cats, _ = match_labels(col, read_labels(labels))
        pos = np.searchsorted(ids, lab_ids)
        kinds = {"raw": raw[pos], "invariant": proj.transform(raw)[pos]}
        for name, vecs in kinds.items():
            knn, _ = knn_precision(vecs, cats, [5])
            aris = []
            for seed in range(args.seeds):
                um = settings.umap.model_copy(update={"random_state": 42 + seed})
                res = cluster_vectors(vecs, um, settings.hdbscan)
                aris.append(float(adjusted_rand_score(cats, res.labels)))
            out[name] = {"knn5": float(knn[5]), "ari_mean": float(np.mean(aris)), "ari_min": float(np.min(aris)),
                         "ari_max": float(np.max(aris)), "aris": [round(a, 3) for a in aris]}
    out["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
