"""How far apart are the same pages' vectors when computed another way (issue 12)?

Same files, settings, library versions and machine give bit-identical vectors and clusters. On
another CPU, TensorFlow's oneDNN picks other kernels (AVX2 instead of AVX-512/AMX) and numba's
UMAP other code paths, so vectors agree only within a float tolerance and clusters may differ.
This script measures that on one machine by computing the sample_docs vectors in subprocesses
that force other kernels:

* ``default``: this machine as it is;
* ``avx2``: ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN restricted to the kernels of an AVX2-only CPU);
* ``eigen``: ``TF_ENABLE_ONEDNN_OPTS=0`` (TensorFlow's own Eigen kernels, no oneDNN);
* ``default-again``: the default once more (must be bit-identical);
* the default vectors clustered with numba compiling UMAP for a generic x86-64 CPU
  (``NUMBA_CPU_NAME=generic``): same vectors, other machine code.

For each it reports max |difference| and min cosine of every page's vector against ``default``,
the kNN@5 of sample_docs' labels, and the ARI between the clusterings (UMAP seed 42) of the
vectors, so the README's statement of what is reproducible rests on a measurement.

    python benchmarks/reproducibility.py [--out benchmarks/out/reproducibility]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "default": {},
    "default-again": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"},
}

CHILD = r"""
import sys, numpy as np
from docsort.jobs.ingest import ingest
from docsort.store.manifest import make_extractor
from docsort.config.settings import load_pipeline
from docsort.store.storage import Collection
s = load_pipeline("default").with_overrides(weights="bundled")
s = s.model_copy(update={"render": s.render.model_copy(update={"workers": 1})})
with Collection(sys.argv[1], create=True) as col:
    ingest(col, [sys.argv[2]], s, extractor=make_extractor(s, announce=False), progress=False, log=lambda m: None)
    t = col.page_table()
    ids, v = col.vectors()
    np.savez(sys.argv[3], ids=ids, vectors=v, path=t["path"].to_numpy(str), page=t["page"].to_numpy())
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "reproducibility")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    got = {}
    for name, extra in VARIANTS.items():
        col = args.out / f"collection-{name}"
        if col.exists():
            import shutil

            shutil.rmtree(col)
        npz = args.out / f"{name}.npz"
        env = {**os.environ, "DOCSORT_OFFLINE": "1", **extra}
        res = subprocess.run([sys.executable, "-c", CHILD, str(col), str(REPO / "sample_docs"), str(npz)], env=env,
                             capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"{name}: {res.stderr[-2000:]}")
        got[name] = np.load(npz)

    import csv

    from sklearn.metrics import adjusted_rand_score

    from docsort.core.clustering import cluster_vectors
    from docsort.queries.evaluate import knn_precision
    from docsort.config.settings import load_pipeline

    labels = {}
    with open(REPO / "sample_docs" / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            labels[(str((REPO / "sample_docs" / r["file"]).resolve()), int(r["page"]))] = r["category"]
    base = got["default"]
    cats = np.array([labels[(p, int(n))] for p, n in zip(base["path"], base["page"])])
    docs = np.array([p for p in base["path"]])
    s = load_pipeline("default")
    base_labels = cluster_vectors(base["vectors"], s.umap, s.hdbscan).labels
    rows = []
    for name, d in got.items():
        assert (d["path"] == base["path"]).all() and (d["page"] == base["page"]).all()
        v, b = d["vectors"].astype(np.float64), base["vectors"].astype(np.float64)
        cos = (v * b).sum(1) / np.linalg.norm(v, axis=1) / np.linalg.norm(b, axis=1)
        knn = knn_precision(d["vectors"], cats, (5,))[0][5]
        lab = cluster_vectors(d["vectors"], s.umap, s.hdbscan).labels
        rows.append({"variant": name, "max_abs_diff": float(np.abs(v - b).max()), "min_cosine": float(cos.min()),
                     "bit_identical": bool(np.array_equal(d["vectors"], base["vectors"])),
                     "knn5": knn, "ari_vs_default_clusters": float(adjusted_rand_score(base_labels, lab)),
                     "n_clusters": int(len(set(lab.tolist()) - {-1}))})
    # The same vectors, UMAP compiled by numba for a generic x86-64 CPU (no AVX-512): clusters only.
    code = ("import sys, numpy as np; from docsort.core.clustering import cluster_vectors; from docsort.config.settings import load_pipeline; "
            "s = load_pipeline('default'); d = np.load(sys.argv[1]); "
            "np.save(sys.argv[2], cluster_vectors(d['vectors'], s.umap, s.hdbscan).labels)")
    out = args.out / "labels-numba-generic.npy"
    res = subprocess.run([sys.executable, "-c", code, str(args.out / "default.npz"), str(out)],
                         env={**os.environ, "NUMBA_CPU_NAME": "generic"}, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"numba generic: {res.stderr[-2000:]}")
    lab = np.load(out)
    rows.append({"variant": "default vectors, UMAP with NUMBA_CPU_NAME=generic", "max_abs_diff": 0.0, "min_cosine": 1.0,
                 "bit_identical": True, "knn5": rows[0]["knn5"],
                 "ari_vs_default_clusters": float(adjusted_rand_score(base_labels, lab)),
                 "n_clusters": int(len(set(lab.tolist()) - {-1}))})
    print(json.dumps(rows, indent=1, default=str))
    (args.out / "reproducibility.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
