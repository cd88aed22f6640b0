"""Visual vs OCR-text vs fused page vectors, measured on a labelled corpus (issue 6).

    python benchmarks/dev_corpus.py benchmarks/out/dev_corpus        # once (see its docstring)
    python benchmarks/text_study.py                                   # ingest + OCR + study, ~6 min on 2 cores
    python benchmarks/text_study.py --collection C --labels L.csv     # an existing collection with OCR text

For the labelled pages it reports leave-one-out kNN precision@1/@5 (cosine;
:func:`docsort.queries.evaluate.knn_precision`) and UMAP + HDBSCAN ARI / NMI / noise share
(:func:`docsort.core.clustering.cluster_vectors` with the pipeline's settings, mean over three UMAP
seeds; :func:`docsort.queries.evaluate.cluster_scores`) for

* ``visual``: the stored backbone vectors (what docsort used before issue 6);
* ``text``: the OCR text's LSA vectors (pages without usable text are all-zero rows, so they find
  arbitrary neighbours: the price of text alone), and kNN among the pages with text only;
* ``fused``: :func:`docsort.queries.vectors.page_vectors` in ``fused`` mode for each fusion weight w,
  plus the uncentred variant (visual vectors not centred on the collection mean) to show why
  docsort centres them.

Every vector comes from docsort's own code (``page_vectors``, ``fit_text``), so the numbers are
those of the shipped pipeline. Writes ``text_study.json`` and ``text_study.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / "benchmarks/out/dev_corpus"), help="folder to ingest (with labels.csv)")
    ap.add_argument("--collection", default=None, help="use this collection (default: OUT/collection, built if missing)")
    ap.add_argument("--labels", default=None, help="labels CSV (default: CORPUS/labels.csv)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/text_study"))
    ap.add_argument("--weights", default="0.1,0.2,0.3,0.4,0.5,0.7", help="fusion weights to try")
    ap.add_argument("--seeds", type=int, default=3, help="UMAP random_state values per clustering")
    ap.add_argument("--pipeline", default="default", help="pipeline name or .toml (its [text] settings are studied)")
    ap.add_argument("--no-cluster", action="store_true", help="kNN only (fast)")
    args = ap.parse_args(argv)
    os.environ.setdefault("DOCSORT_OFFLINE", "1")

    from docsort.jobs import pipeline
    from docsort.core.clustering import cluster_vectors
    from docsort.queries.evaluate import cluster_scores, knn_precision, match_labels, read_labels
    from docsort.config.settings import load_pipeline
    from docsort.store.storage import Collection
    from docsort.core.text import fuse

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = Path(args.labels or Path(args.corpus) / "labels.csv")
    coll_path = Path(args.collection or out / "collection")
    col = Collection(coll_path, create=True)
    settings = pipeline.effective_settings(col, load_pipeline(args.pipeline), explicit=True)
    timing = {}
    if col.counts()["pages"] == 0:
        t = time.perf_counter()
        rep = pipeline.ingest(col, [args.corpus], settings)
        timing["ingest_s"] = round(time.perf_counter() - t, 1)
        print(f"ingested {rep.pages_added} pages in {rep.seconds:.1f} s", file=sys.stderr)
    if col.pages_needing_text(settings.ocr.lang):
        from docsort.jobs import ocr

        rep = ocr.backfill(col, settings)
        timing["ocr"] = {"pages": rep.pages_done, "seconds": round(rep.seconds, 1), "pages_per_s": round(rep.pages_per_s, 3),
                         "mean_confidence": rep.mean_confidence}
        print(f"OCR: {rep.pages_done} pages, {rep.pages_per_s:.2f} pages/s", file=sys.stderr)

    ids, cats, _ = match_labels(col, read_labels(labels))
    model = pipeline.fit_text(col, settings, persist=False)
    if model is None:
        print("no usable OCR text in the collection", file=sys.stderr)
        return 1
    visual = pipeline.page_vectors(col, settings, "visual", ids)
    text = pipeline.page_vectors(col, settings, "text", ids, text_model=model)
    has = text.has_text

    def scores(x: np.ndarray, name: str, cluster: bool = True) -> dict:
        p, _ = knn_precision(x, cats, [1, 5])
        row = {"vectors": name, "knn1": p[1], "knn5": p[5]}
        if cluster and not args.no_cluster:
            runs = []
            for seed in range(args.seeds):
                umap = settings.umap.model_copy(update={"random_state": settings.umap.random_state + seed})
                r = cluster_vectors(x, umap, settings.hdbscan)
                runs.append(cluster_scores(cats, r.labels))
            for key in ("ari", "nmi", "noise_share", "n_clusters"):
                row[key] = float(np.mean([s[key] for s in runs]))
            row["ari_sd"] = float(np.std([s["ari"] for s in runs]))
        print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, file=sys.stderr, flush=True)
        return row

    rows = [scores(visual.vectors, "visual"), scores(text.vectors, "text (LSA; pages without text = 0)")]
    p_text, _ = knn_precision(text.vectors[has], cats[has], [1, 5])
    p_vis, _ = knn_precision(visual.vectors[has], cats[has], [1, 5])
    among = {"pages_with_text": int(has.sum()), "text_knn5": p_text[5], "visual_knn5": p_vis[5]}
    for w in [float(x) for x in args.weights.split(",")]:
        s_w = settings.model_copy(update={"text": settings.text.model_copy(update={"fusion_weight": w})})
        fused = pipeline.page_vectors(col, s_w, "fused", ids, text_model=model)
        rows.append(scores(fused.vectors, f"fused w={w}"))
        rows.append(scores(fuse(visual.vectors, text.vectors, w), f"fused w={w}, visual not centred", cluster=w == settings.text.fusion_weight))

    result = {"collection": str(coll_path), "labels": str(labels), "labelled_pages": int(len(ids)), "types": int(len(set(cats.tolist()))),
              "text_model": model.info, "min_words": settings.text.min_words, "min_confidence": settings.text.min_confidence,
              "among_pages_with_text": among, "rows": rows, "timing": timing, "umap_seeds": args.seeds}
    (out / "text_study.json").write_text(json.dumps(result, indent=2))
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"{len(ids)} labelled pages, {result['types']} types; {among['pages_with_text']} with usable OCR text "
             f"(>= {settings.text.min_words} words, mean confidence >= {settings.text.min_confidence}); "
             f"LSA {model.info.get('components')} dims over {model.info.get('vocabulary')} words.", "",
             "| vectors | kNN@1 | kNN@5 | ARI | NMI | noise | clusters |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['vectors']} | {f(r['knn1'])} | {f(r['knn5'])} | {f(r.get('ari'))}"
                     + (f" ± {r['ari_sd']:.2f}" if "ari_sd" in r else "")
                     + f" | {f(r.get('nmi'))} | {f(r.get('noise_share'))} | {r.get('n_clusters', '–') if 'n_clusters' not in r else round(r['n_clusters'], 1)} |")
    lines += ["", f"Among the {among['pages_with_text']} pages with text only: kNN@5 text {among['text_knn5']:.3f}, "
              f"visual {among['visual_knn5']:.3f}."]
    (out / "text_study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
