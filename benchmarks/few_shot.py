"""Few-shot accuracy of docsort's document-type classifier: n labelled pages per type, the rest typed.

    python benchmarks/few_shot.py                                   # fresh collection of sample_docs/
    python benchmarks/few_shot.py --collection COL --labels OUT/labels.csv --shots 1 3 10 --repeats 50

For each n in ``--shots`` and each of ``--repeats`` random draws (seeded): pick n labelled pages of
every type that has at least n + 1 pages (types with fewer are skipped and reported: they would
leave nothing to test), train :func:`docsort.jobs.classify.train` exactly as ``docsort classify`` does
(standardised vectors, balanced multinomial logistic regression, temperature scaling from 3 labels
per type), and predict every other page of those types. Reported per n, mean ± sd over draws:

* accuracy: share of test pages whose best type is right (the "unsure" route ignored);
* balanced accuracy: mean over types of the share of their pages typed right;
* unsure: share of test pages routed to "unsure" at the pipeline's threshold (and similarity rule);
* sure accuracy: accuracy on the pages not routed to "unsure";
* ECE: expected calibration error of the best type's probability (10 equal-width bins; Guo et al.
  2017): the mean gap between confidence and accuracy, weighted by the pages in each bin;
* chance: the share of the most common type among the test pages (always answering it).

The labels CSV has either ``file,page,category`` (``file`` relative to the CSV's folder, or
absolute; matched against every path a stored document was seen under), as in
``sample_docs/labels.csv``, or ``page_id,type`` as ``docsort labels --export`` writes. Without
``--collection`` a fresh collection of ``sample_docs/`` is built in a temporary folder with the
pipeline (``--pipeline``) and weights (``--weights``, default ``bundled``): about 15 s.

``--compare-calibration`` adds a second table with temperature scaling forced from 2 labels per
type (``calibrate_min_per_type = 2``), the measurement behind that setting's default.

Writes ``--out FILE.json`` (and ``FILE.md``) when asked; prints the Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def read_labels(collection, labels_csv: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Page ids and types from a labels CSV (see the module docstring for the two formats).

    Returns:
        ``(page_ids int64 (n,), types str (n,), unmatched)``: ``unmatched`` lists the CSV rows
        (``file:page``) with no stored page.

    Raises:
        ValueError: the CSV has neither ``file,page,category`` nor ``page_id,type`` columns.
    """
    with open(labels_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = set(rows[0]) if rows else set()
    if {"page_id", "type"} <= cols:
        stored = set(collection.page_ids().tolist())
        pairs = [(int(r["page_id"]), r["type"]) for r in rows]
        unmatched = [str(p) for p, _ in pairs if p not in stored]
        pairs = [(p, t) for p, t in pairs if p in stored]
    elif {"file", "page", "category"} <= cols:
        doc_of = {}
        for doc_id, path in collection.query("SELECT document_id, path FROM document_paths"):
            doc_of[os.path.realpath(path)] = doc_id
        page_of = {(d, n): pid for pid, d, n in collection.query("SELECT id, document_id, page_no FROM pages")}
        pairs, unmatched = [], []
        for r in rows:
            f = Path(r["file"])
            path = os.path.realpath(f if f.is_absolute() else labels_csv.parent / f)
            pid = page_of.get((doc_of.get(path), int(r["page"])))
            if pid is None:
                unmatched.append(f"{r['file']}:{r['page']}")
            else:
                pairs.append((pid, r["category"]))
    else:
        raise ValueError(f"{labels_csv}: expected columns file,page,category or page_id,type; found {sorted(cols)}")
    ids = np.array([p for p, _ in pairs], dtype=np.int64)
    types = np.array([t for _, t in pairs], dtype=object)
    return ids, types, unmatched


def few_shot(X: np.ndarray, y: np.ndarray, centre: np.ndarray, settings, shots: list[int], repeats: int, seed: int) -> list[dict]:
    """The measurement: see the module docstring.

    Args:
        X: float32 (n, D) labelled pages' vectors; y: str (n,) their types; centre: float32 (D,)
        the collection's mean vector; settings: :class:`docsort.config.settings.ClassifierSettings`;
        shots: labelled pages per type; repeats: random draws per n; seed: for the draws.

    Returns:
        One dict per n: shots, types (list), skipped ({type: pages}), test_pages, and mean/sd of
        accuracy, balanced_accuracy, unsure, sure_accuracy, chance; plus train_seconds (mean).
    """
    from docsort.jobs.classify import train

    rng = np.random.default_rng(seed)
    types, counts = np.unique(y, return_counts=True)
    out = []
    for n in shots:
        keep = [t for t, c in zip(types, counts) if c >= n + 1]
        skipped = {str(t): int(c) for t, c in zip(types, counts) if c < n + 1}
        if len(keep) < 2:
            out.append({"shots": n, "types": [str(t) for t in keep], "skipped": skipped, "note": "fewer than two types have n + 1 pages"})
            continue
        m = {k: [] for k in ("accuracy", "balanced_accuracy", "unsure", "sure_accuracy", "ece", "chance", "train_seconds")}
        n_test = 0
        for _ in range(repeats):
            train_idx = np.concatenate([rng.choice(np.flatnonzero(y == t), n, replace=False) for t in keep])
            test_idx = np.setdiff1d(np.flatnonzero(np.isin(y, keep)), train_idx)
            t0 = time.perf_counter()
            clf = train(X[train_idx], y[train_idx], settings, centre=centre, cross_validate=False)
            m["train_seconds"].append(time.perf_counter() - t0)
            pred, prob, sim = clf.predict(X[test_idx])
            truth = y[test_idx]
            right = pred == truth
            unsure = clf.unsure(prob, sim, settings.threshold, settings.reject_unlike)
            m["accuracy"].append(right.mean())
            m["balanced_accuracy"].append(np.mean([right[truth == t].mean() for t in keep]))
            m["unsure"].append(unsure.mean())
            if (~unsure).any():
                m["sure_accuracy"].append(right[~unsure].mean())
            m["ece"].append(expected_calibration_error(prob, right))
            _, tc = np.unique(truth, return_counts=True)
            m["chance"].append(tc.max() / len(truth))
            n_test = len(test_idx)
        row = {"shots": n, "types": [str(t) for t in keep], "skipped": skipped, "test_pages": n_test, "repeats": repeats}
        for k, v in m.items():
            row[k] = float(np.mean(v)) if v else None
            row[k + "_sd"] = float(np.std(v)) if v else None
        out.append(row)
    return out


def expected_calibration_error(confidence: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """ECE (Naeini et al. 2015; Guo et al. 2017): sum over equal-width confidence bins of
    (share of pages in the bin) x |accuracy - mean confidence| in it.

    Args:
        confidence: float (n,) probability of the predicted type; right: bool (n,).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(right[sel].mean() - confidence[sel].mean())
    return float(total)


def markdown(rows: list[dict], title: str) -> str:
    """The results as a Markdown table."""
    lines = [f"**{title}**", "", "| labels per type | types | test pages | accuracy | balanced acc. | unsure | accuracy when sure | ECE | chance (majority) | skipped types |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        skipped = ", ".join(f"{t} ({c})" for t, c in r["skipped"].items()) or "-"
        if "accuracy" not in r:
            lines.append(f"| {r['shots']} | {len(r['types'])} | - | {r['note']} | | | | | | {skipped} |")
            continue

        def f(k):
            return "-" if r[k] is None else f"{r[k]:.2f} ± {r[k + '_sd']:.2f}"

        lines.append(f"| {r['shots']} | {len(r['types'])} | {r['test_pages']} | {f('accuracy')} | {f('balanced_accuracy')} | "
                     f"{f('unsure')} | {f('sure_accuracy')} | {f('ece')} | {r['chance']:.2f} | {skipped} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collection", type=Path, help="an existing collection (default: a fresh one of sample_docs/)")
    ap.add_argument("--labels", type=Path, default=REPO / "sample_docs" / "labels.csv")
    ap.add_argument("--pipeline", default="default", help="pipeline for the fresh collection and the classifier settings")
    ap.add_argument("--weights", default="bundled", help="weights for the fresh collection")
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 3, 10])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write FILE.json and FILE.md")
    ap.add_argument("--compare-calibration", action="store_true", help="also measure with temperature scaling from 2 labels per type")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from docsort.config.settings import load_pipeline
    from docsort.store.storage import Collection

    settings = load_pipeline(args.pipeline)
    tmp = None
    if args.collection is None:
        from docsort.jobs.ingest import ingest

        tmp = tempfile.TemporaryDirectory(prefix="docsort-few-shot-")
        root = Path(tmp.name) / "collection"
        col = Collection(root, create=True)
        settings = settings.with_overrides(weights=args.weights)
        ingest(col, [REPO / "sample_docs"], settings, progress=False, log=lambda m: None)
    else:
        col = Collection(args.collection)
    try:
        ids, y, unmatched = read_labels(col, args.labels)
        if unmatched:
            print(f"{len(unmatched)} labelled pages not in the collection, e.g. {unmatched[:3]}", file=sys.stderr)
        _, X = col.vectors(ids)
        _, allX = col.vectors()
        feats = (col.manifest() or {}).get("features", {})
        rows = few_shot(X, y, allX.mean(axis=0), settings.classifier, args.shots, args.repeats, args.seed)
        forced = settings.classifier.model_copy(update={"calibrate_min_per_type": 2})
        rows_t = few_shot(X, y, allX.mean(axis=0), forced, args.shots, args.repeats, args.seed) if args.compare_calibration else None
    finally:
        col.close()
        if tmp is not None:
            tmp.cleanup()
    title = (f"{len(ids)} labelled pages, {len(set(y))} types; {feats.get('backbone')} {feats.get('layer')} "
             f"{feats.get('pooling')} ({feats.get('dim')}-d), weights {feats.get('weights', {}).get('source')}; "
             f"{args.repeats} draws per row, threshold {settings.classifier.threshold}")
    md = markdown(rows, title)
    if rows_t is not None:
        md += "\n\n" + markdown(rows_t, "the same draws, temperature scaling from 2 labels per type")
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"title": title, "features": feats, "rows": rows, "rows_temperature": rows_t},
                                                            indent=2, default=str))
        args.out.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
