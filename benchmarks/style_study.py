"""Scan style vs document type on the two style-balanced development corpora (issue 13).

    python benchmarks/dev_corpus.py --styles benchmarks/out/dev_styles
    python benchmarks/dev_corpus2.py benchmarks/out/dev_corpus2
    python benchmarks/style_study.py benchmarks/out/dev_styles benchmarks/out/dev_corpus2 \\
        --variants baseline,binarised,inv16,inv32,inv64 --seeds 0,1,2,3,4

Per corpus, the pages are ingested once with the real CLI (``docsort ingest --weights bundled``;
the binarised variant ingests an Otsu-binarised copy), then every variant is clustered through
the API (``docsort.jobs.cluster.cluster``, the function ``docsort cluster`` runs) with UMAP seeds
0..4 and evaluated with ``docsort.queries.evaluate.evaluate`` on the vectors the index and clustering
use. Reported per corpus and variant: kNN@5, cross-style kNN@5 (neighbours among other scan
styles only), ARI and NMI with the type (mean +- sd over the seeds), style leakage (NMI of
clusters vs scan style), noise share, clusters, and seed-to-seed ARI (mean and min over the 10
pairs of seeds, noise pages as singletons). Writes ``OUT/results.json`` and ``OUT/results.md``.

Variants: ``baseline`` (the defaults before issue 13: raw visual vectors, no invariance);
``binarised`` (every page Otsu-thresholded before docsort sees it, raw vectors); ``invN`` (the
scan-style-invariant projection of ``docsort.core.invariance`` with N dims, when the installed docsort
has it); ``bin_invN`` (both).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def otsu_threshold(grey: np.ndarray) -> float:
    """Otsu's threshold (Otsu 1979) of a uint8 (H, W) image: the grey level maximising between-class variance."""
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    p = hist / max(1.0, hist.sum())
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(np.argmax(between))


def binarised_copy(corpus: Path, out: Path) -> Path:
    """Every labelled page of ``corpus`` Otsu-binarised into a one-page G4 TIFF; returns the new labels.csv."""
    from pdf2image import convert_from_path
    from PIL import Image

    labels = out / "labels.csv"
    if labels.exists():
        return labels
    out.mkdir(parents=True, exist_ok=True)
    with open(corpus / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    new = []
    for i, r in enumerate(rows):
        src = corpus / r["file"]
        page = int(r["page"])
        if src.suffix.lower() == ".pdf":
            im = convert_from_path(src, dpi=150, first_page=page, last_page=page, grayscale=True)[0]
        else:
            im = Image.open(src)
            im.seek(page - 1)
            im = im.convert("L")
        a = np.asarray(im.convert("L"))
        bw = Image.fromarray(np.where(a > otsu_threshold(a), 255, 0).astype(np.uint8)).convert("1")
        dst = out / "pages" / f"{i:04d}.tif"
        dst.parent.mkdir(parents=True, exist_ok=True)
        bw.save(dst, compression="group4", dpi=im.info.get("dpi", (150, 150)))
        new.append({**r, "file": dst.relative_to(out).as_posix(), "page": 1})
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(new)
    return labels


def ingest_cli(folder: Path, collection: Path, ocr: bool = False) -> float:
    """``docsort ingest FOLDER --weights bundled`` in a subprocess (skipped if done), then with
    ``ocr`` ``docsort ocr`` (Tesseract, ~1.2 CPU-s a page); seconds taken."""
    if (collection / "manifest.json").exists():
        return 0.0
    t = time.perf_counter()
    env = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    plain = collection.parent / collection.name.removesuffix("-ocr")
    if ocr and (plain / "manifest.json").exists():
        shutil.copytree(plain, collection)  # the same vectors; OCR added to the copy
    else:
        subprocess.run([sys.executable, "-m", "docsort.faces.cli", "ingest", str(folder), "--collection", str(collection), "--weights", "bundled",
                        "--no-progress"], check=True, env=env, stdout=subprocess.DEVNULL)
    if ocr:
        subprocess.run([sys.executable, "-m", "docsort.faces.cli", "ocr", "--collection", str(collection), "--no-progress"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def variant_settings(base, name: str, seed: int):
    """The pipeline settings of one variant and UMAP seed.

    ``name``: ``baseline`` | ``binarised`` | ``invN`` | ``bin_invN``, optionally followed by
    HDBSCAN choices ``_leaf`` (``cluster_selection_method="leaf"``), ``_mcsN``
    (``min_cluster_size=N``) and ``_msN`` (``min_samples=N``), e.g. ``inv32_mcs8_leaf``, and the
    text weight ``_wX`` (``text.fusion_weight=X``; only matters with ``--ocr``).
    """
    s = base.model_copy(update={"umap": base.umap.model_copy(update={"random_state": seed})})
    parts = name.split("_")
    hdb = {}
    for part in parts[1:]:
        if part == "leaf":
            hdb["cluster_selection_method"] = "leaf"
        elif part.startswith("mcs"):
            hdb["min_cluster_size"] = int(part[3:])
        elif part.startswith("ms"):
            hdb["min_samples"] = int(part[2:])
        elif part == "photo":
            pass  # the "page photo" rendering added to the invariance fit (below)
        elif part.startswith("w"):
            s = s.model_copy(update={"text": s.text.model_copy(update={"fusion_weight": float(part[1:])})})
    if hdb:
        s = s.model_copy(update={"hdbscan": s.hdbscan.model_copy(update=hdb)})
    dims = None
    inv = [p for p in parts if p.startswith("inv")]
    if inv:
        dims = int(inv[0][3:])
    if hasattr(s, "invariance"):
        extra = {"styles": tuple(dict.fromkeys((*s.invariance.styles, "photo")))} if "photo" in parts else {}
        inv = s.invariance.model_copy(update={"enabled": dims is not None, **({"dims": dims} if dims else {}), **extra})
        s = s.model_copy(update={"invariance": inv})
    elif dims is not None:
        raise SystemExit(f"variant {name}: this docsort has no invariance settings (merge issue 13's branch)")
    return s


def clustering_vectors(col, settings):
    """(page ids, vectors) as the index and clustering use them (projected when the invariance is on)."""
    from docsort.jobs import pipeline

    if hasattr(pipeline, "page_vectors"):
        pv = pipeline.page_vectors(col, settings, "fused")
        return pv.ids, pv.vectors
    return col.vectors()


_CACHE: dict = {}


def run_variant(collection: Path, labels: Path, name: str, seeds: list[int], log) -> dict:
    """Cluster ``collection`` with each UMAP seed under variant ``name`` and evaluate; the summary dict."""
    from sklearn.metrics import adjusted_rand_score

    from docsort.queries.evaluate import evaluate
    from docsort.jobs.cluster import cluster
    from docsort.config.settings import load_pipeline
    from docsort.store.storage import Collection

    base = load_pipeline("default").with_overrides(weights="bundled")
    runs, labelings = [], []
    t0 = time.perf_counter()
    for seed in seeds:
        settings = variant_settings(base, name, seed)
        with Collection(collection) as col:
            kwargs = {}
            if "inv" in name:  # the invariance fit embeds renderings: one extractor for the process
                from docsort.store.manifest import make_extractor

                if "extractor" not in _CACHE:
                    _CACHE["extractor"] = make_extractor(settings, announce=False)
                kwargs = {"extractor": _CACHE["extractor"], "progress": False}
            cluster(col, settings, log=lambda m: None, **kwargs)
            vectors = clustering_vectors(col, settings)
            r = evaluate(col, labels, ks=(1, 5), vectors=vectors, vectors_note=f"clustering vectors of variant {name}")
            table = col.page_table().set_index("page_id")
        runs.append(r)
        ids = np.array(sorted(table.index))
        cl = table.loc[ids, "cluster"].to_numpy(dtype=np.int64)
        labelings.append(np.where(cl < 0, 10_000 + np.arange(len(cl)), cl))
        log(f"  {name} seed {seed}: ARI {r.ari:.3f} NMI {r.nmi:.3f} style NMI {r.style_nmi:.3f} noise {r.noise_share:.1%} "
            f"clusters {r.n_clusters} kNN@5 {r.knn_precision[5]:.3f} cross-style {r.cross_style_knn_precision[5]:.3f}")
    pair = [adjusted_rand_score(a, b) for a, b in itertools.combinations(labelings, 2)]

    def ms(values):
        v = np.array([x for x in values if x is not None], float)
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}

    r0 = runs[0]
    return {
        "variant": name, "pages": r0.labelled_pages, "categories": len(r0.categories), "styles": r0.styles,
        "vector_dim": int(vectors[1].shape[1]),
        "knn1": r0.knn_precision[1], "knn5": r0.knn_precision[5], "knn5_other_docs": r0.knn_precision_other_documents[5],
        "cross_style_knn5": r0.cross_style_knn_precision[5], "same_style_nn5": r0.style_knn_precision[5],
        "same_style_chance": r0.style_knn_chance,
        "ari": ms(r.ari for r in runs), "nmi": ms(r.nmi for r in runs), "style_nmi": ms(r.style_nmi for r in runs),
        "noise": ms(r.noise_share for r in runs), "clusters": ms(r.n_clusters for r in runs),
        "seed_to_seed_ari": {"mean": float(np.mean(pair)), "min": float(np.min(pair))} if pair else None,
        "per_seed": [{"seed": s, "ari": r.ari, "nmi": r.nmi, "style_nmi": r.style_nmi, "noise": r.noise_share, "clusters": r.n_clusters}
                     for s, r in zip(seeds, runs)],
        "per_style_cross_knn5": {st.style: st.cross_style_knn[5] for st in r0.per_style},
        "seconds": time.perf_counter() - t0,
    }


def markdown(results: list[dict]) -> str:
    """The results as one Markdown table per corpus."""
    lines = []
    for corpus in dict.fromkeys(r["corpus"] for r in results):
        rows = [r for r in results if r["corpus"] == corpus]
        r0 = rows[0]
        lines += [f"**{corpus}** ({r0['pages']} pages, {r0['categories']} types, {len(r0['styles'])} styles; "
                  f"load average {r0['loadavg_before']} → {rows[-1]['loadavg_after']})", "",
                  "| variant | dims | kNN@5 | cross-style kNN@5 | same-style NN@5 (chance) | ARI | NMI type | style leakage NMI | noise | clusters | seed-to-seed ARI (min) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            s2s = r["seed_to_seed_ari"]
            lines.append(
                f"| {r['variant']} | {r['vector_dim']} | {r['knn5']:.3f} | {r['cross_style_knn5']:.3f} | {r['same_style_nn5']:.3f} ({r['same_style_chance']:.3f}) | "
                f"{r['ari']['mean']:.3f} ± {r['ari']['sd']:.3f} | {r['nmi']['mean']:.3f} | {r['style_nmi']['mean']:.3f} | "
                f"{r['noise']['mean']:.1%} | {r['clusters']['mean']:.1f} | {s2s['mean']:.3f} ({s2s['min']:.3f}) |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpora", type=Path, nargs="+", help="corpus folders with labels.csv (with a style column)")
    ap.add_argument("--variants", default="baseline,binarised", help="comma-separated: baseline, binarised, invN, bin_invN")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="UMAP seeds")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "style_study")
    ap.add_argument("--ocr", action="store_true", help="OCR the pages (a copy of the collection) so clustering fuses text")
    a = ap.parse_args()
    os.environ.setdefault("DOCSORT_OFFLINE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    seeds = [int(s) for s in a.seeds.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    results_file = a.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    for corpus in a.corpora:
        corpus = corpus.resolve()
        for variant in a.variants.split(","):
            binarised = variant.startswith("bin")
            folder = a.out / "binarised" / corpus.name if binarised else corpus
            labels = binarised_copy(corpus, folder) if binarised else corpus / "labels.csv"
            collection = a.out / "collections" / f"{corpus.name}{'-bin' if binarised else ''}{'-ocr' if a.ocr else ''}"
            load_before = open("/proc/loadavg").read().split()[0]
            took = ingest_cli(folder, collection, a.ocr)
            if took:
                log(f"{corpus.name}{' (binarised)' if binarised else ''}: ingested in {took:.0f} s")
            summary = run_variant(collection, labels, variant, seeds, log)
            summary |= {"corpus": corpus.name, "loadavg_before": load_before, "loadavg_after": open("/proc/loadavg").read().split()[0],
                        "ingest_s": took}
            if a.ocr:
                summary["variant"] = variant = f"{variant}+ocr"
            results = [r for r in results if (r["corpus"], r["variant"]) != (corpus.name, variant)] + [summary]
            results_file.write_text(json.dumps(results, indent=2) + "\n")
            (a.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
