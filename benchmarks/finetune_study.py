"""``docsort classify --fine-tune`` against the frozen-feature classifier (issue 14, item 3).

Ingests a labelled corpus (default pipeline, bundled weights) and clusters it once (which fits
the issue-13 invariance projection the frozen classifier then uses), then for each label draw:
labels ``--per-type`` pages of every type (a seeded draw), and

* the frozen classifier (``docsort classify``) types the other pages;
* ``docsort classify --fine-tune`` (:func:`docsort.jobs.finetuning.fine_tune`, forced to keep the
  fine-tuned model with ``baseline=-1`` so that it also types them) reports both cross-validated
  accuracies on the same stratified folds of the labelled pages.

Accuracy on the unlabelled pages is the best type against ``labels.csv``'s ``category`` (the
"unsure" flag ignored).

Usage::

    python benchmarks/finetune_study.py --docs DIR --work DIR [--per-type 5] [--draws 0 1] \
        [--epochs 10] [--layers mixed1] [--seed 0]

Prints one JSON object per draw (with the load average); the figures go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("DOCSORT_OFFLINE", "1")

import numpy as np  # noqa: E402

from docsort.jobs.finetuning import fine_tune  # noqa: E402  (docsort.store.storage before TensorFlow)
from docsort.jobs import classify as cl  # noqa: E402
from docsort.jobs.cluster import cluster
from docsort.store.manifest import effective_settings
from docsort.jobs.ingest import ingest  # noqa: E402
from docsort.config.settings import load_pipeline  # noqa: E402
from docsort.store.storage import Collection  # noqa: E402


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--per-type", type=int, default=5)
    ap.add_argument("--draws", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--layers", default="mixed1")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    docs = a.docs.resolve()
    with open(docs / "labels.csv", newline="") as f:
        truth = {(str(docs / r["file"]), int(r["page"])): r["category"] for r in csv.DictReader(f)}
    settings = load_pipeline("default").with_overrides(weights="bundled")
    base = a.work / "base"
    if not base.exists():
        t0 = time.perf_counter()
        with Collection(base, create=True) as col:
            ingest(col, [docs], settings, progress=False, log=lambda m: None)
            cluster(col, settings, progress=False, log=lambda m: None)
        print(json.dumps({"built_base_s": round(time.perf_counter() - t0, 1), "load": load()}), flush=True)
    for draw in a.draws:
        root = a.work / f"draw{draw}"
        if root.exists():
            shutil.rmtree(root)
        shutil.copytree(base, root, ignore=shutil.ignore_patterns(".lock"))
        with Collection(root) as col:
            pages = col.pages()
            kind = {r.page_id: truth[(r.path, r.page_no)] for r in pages}
            rng = np.random.default_rng(draw)
            chosen = {}
            for t in sorted(set(kind.values())):
                ids = sorted(p for p, k in kind.items() if k == t)
                chosen[t] = [int(i) for i in rng.choice(ids, a.per_type, replace=False)]
            for t, ids in chosen.items():
                cl.label_pages(col, ids, t, who="benchmark")
            labelled = {i for ids in chosen.values() for i in ids}
            s = effective_settings(col, settings)
            cl.classify_collection(col, s.classifier)
            pred = dict(col.query("SELECT page_id, type FROM page_predictions"))
            frozen_test = float(np.mean([pred.get(p) == k for p, k in kind.items() if p not in labelled]))
            load0 = load()
            t0 = time.perf_counter()
            rep = fine_tune(col, s, epochs=a.epochs, layers=a.layers, seed=a.seed, baseline=-1.0, progress=False,
                            log=lambda m: None)
            wall = time.perf_counter() - t0
            pred = dict(col.query("SELECT page_id, type FROM page_predictions"))
            ft_test = float(np.mean([pred.get(p) == k for p, k in kind.items() if p not in labelled]))
        print(json.dumps({
            "corpus": docs.name, "draw": draw, "per_type": a.per_type, "epochs": a.epochs, "layers": a.layers,
            "seed": a.seed, "cv_method": rep.cv_method, "cv_frozen": round(rep.frozen_accuracy, 3),
            "cv_fine_tuned": round(rep.fine_tuned_accuracy, 3), "test_pages": len(kind) - len(labelled),
            "test_frozen": round(frozen_test, 3), "test_fine_tuned": round(ft_test, 3),
            "train_s": round(rep.train_seconds, 1), "wall_s": round(wall, 1), "load_start": load0, "load_end": load(),
        }), flush=True)


if __name__ == "__main__":
    main()
