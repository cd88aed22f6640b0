"""Near-duplicate families on re-scan corpora (issue 18): thresholds, pair recall and wrong families.

Each ``--corpus OUT`` is a corpus of ``benchmarks/duplicates_corpus.py`` whose ``--source``
folders and ``OUT/rescans`` were ingested (and OCR'd) into ``OUT/collection``::

    docsort ingest $(cat OUT/sources.txt) OUT/rescans -c OUT/collection --weights bundled --ocr
    python benchmarks/duplicates_study.py --corpus OUT [--corpus OUT2]

It runs :func:`docsort.jobs.duplicates.find_duplicates` once (which makes and stores the page
maps and keypoints), then, from the stored keypoints and OCR text, scores *all* pairs of pages
(no candidate generation) and prints:

* the coverage (:func:`docsort.core.duplicates.verify_pairs`) and word-Jaccard distributions of
  true pairs (a re-scan and its page, two re-scans of one page), of *hard negatives* (different
  pages of one document) and of the rest;
* the conflict cells (:func:`docsort.core.duplicates.pair_conflicts`) of the pairs that coverage
  >= 0.3 or the words accept, by kind of pair;
* a grid over ``min_coverage`` x ``min_text_jaccard``: pair recall (true pairs that end up in one
  family) and *wrong families* (families holding pages of two or more different originals), with
  the conflict check (``max_conflict_cells``) on and off;
* the default settings' result through the job itself (candidate pairs included), with the
  conflict check and without it, and how many of the true pairs were among the candidates.

A page's original is ``(source file, page)``; documents are files, with ``NAME-pK.ext`` files of one
``NAME`` taken as one document. Writes ``OUT/study.json``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def doc_key(path: str) -> str:
    """The document of a file: ``tar-p2.jpg`` and ``tar-p1.jpg`` are one document."""
    p = Path(path)
    return str(p.parent / re.sub(r"-p\d+$", "", p.stem))


def truth(corpus: Path, table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(page_ids, original key, document key)`` of every page of the corpus's collection."""
    rescan = {}
    with open(corpus / "truth.csv") as fh:
        for row in csv.DictReader(fh):
            rescan[row["rescan"]] = (row["source"], int(row["page"]))
    ids, orig, doc = [], [], []
    for pid, path, page in zip(table["page_id"], table["path"], table["page"]):
        p = Path(path)
        src, no = rescan.get(p.name, (str(p.resolve()), int(page))) if p.parent.name == "rescans" else (str(p.resolve()), int(page))
        ids.append(int(pid))
        orig.append(f"{src}#{no}")
        doc.append(doc_key(src))
    return np.array(ids), np.array(orig), np.array(doc)


def evaluate(original: np.ndarray, rows: np.ndarray, family: np.ndarray) -> dict:
    """Pair recall and wrong families of a family assignment against the ground truth."""
    fam = np.full(len(original), -1, np.int64)
    fam[rows] = family
    true_pairs = found = 0
    _, inv, counts = np.unique(original, return_inverse=True, return_counts=True)
    for g in np.flatnonzero(counts > 1):
        members = np.flatnonzero(inv == g)
        true_pairs += len(members) * (len(members) - 1) // 2
        f = fam[members]
        for v in np.unique(f[f >= 0]):
            c = int(np.sum(f == v))
            found += c * (c - 1) // 2
    wrong = sum(1 for v in np.unique(family) if len(np.unique(original[rows[family == v]])) > 1)
    return {"true_pairs": int(true_pairs), "found_pairs": int(found), "pair_recall": found / max(1, true_pairs),
            "families": int(len(np.unique(family))), "wrong_families": int(wrong)}


def q(a: np.ndarray) -> dict:
    a = a[~np.isnan(a)]
    return {p: round(float(np.percentile(a, p)), 3) for p in (0, 1, 5, 50, 95, 99, 100)} if len(a) else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, action="append", required=True)
    ap.add_argument("--k", type=int, default=None, help="candidate neighbours (DuplicateSettings.k; default: the default)")
    args = ap.parse_args()

    from docsort.config.settings import DuplicateSettings
    from docsort.core.duplicates import KEYPOINT_DTYPE, candidate_pairs, pair_conflicts, score_pairs, settings_token, text_minhashes
    from docsort.jobs.duplicates import find_duplicates
    from docsort.store.storage import Collection

    base = DuplicateSettings() if args.k is None else DuplicateSettings(k=args.k)
    for corpus in args.corpus:
        col = Collection(corpus / "collection")
        t0 = time.perf_counter()
        rep = find_duplicates(col, base, log=lambda m: None)
        job_s = time.perf_counter() - t0
        off = base.model_copy(update={"max_conflict_cells": 0})
        rep_off = find_duplicates(col, off, log=lambda m: None)  # maps are stored: families only
        ids, maps = col.page_maps(settings_token(base), base.map_px)
        keypoints = [np.frombuffer(b, KEYPOINT_DTYPE) for b in col.page_keypoints(settings_token(base), ids)]
        table = col.page_table().set_index("page_id").loc[ids].reset_index()
        _, original, doc = truth(corpus, table)
        texts = col.page_texts(ids)
        sig, has = text_minhashes([(texts.get(int(i)) or {}).get("text") for i in ids], base)
        n = len(ids)
        i, j = np.triu_indices(n, 1)
        pairs = np.stack([i, j], 1)
        t1 = time.perf_counter()
        _, cov, jac = score_pairs(keypoints, pairs, sig, has, base)
        verify_ms = 1000 * (time.perf_counter() - t1) / max(1, len(pairs))
        same = original[i] == original[j]
        hard = ~same & (doc[i] == doc[j])
        other = ~same & ~hard
        report = {"corpus": str(corpus), "pages": int(n), "pages_with_text": int(has.sum()), "true_pairs": int(same.sum()),
                  "hard_pairs": int(hard.sum()), "map_s_per_page": rep.map_seconds / max(1, rep.mapped),
                  "verify_ms_per_pair": verify_ms, "job_seconds": job_s, "loadavg": Path("/proc/loadavg").read_text().split()[:3]}
        for name, m in (("true", same), ("hard_negative", hard), ("other", other)):
            report[f"coverage_{name}"] = q(cov[m])
            report[f"jaccard_{name}"] = q(jac[m])
        print(f"\n{corpus}: {n} pages, {int(has.sum())} with text, {int(same.sum())} true pairs, {int(hard.sum())} hard-negative pairs; "
              f"{report['map_s_per_page'] * 1000:.0f} ms/page to map, {verify_ms:.2f} ms/pair to verify; load {' '.join(report['loadavg'])}")
        for k in ("coverage_true", "coverage_hard_negative", "coverage_other", "jaccard_true", "jaccard_hard_negative", "jaccard_other"):
            print(f"  {k:24s} {report[k]}")
        with np.errstate(invalid="ignore"):
            loose = (cov >= 0.3) | (~np.isnan(jac) & (jac >= 0.4) & (cov >= base.min_coverage_text))
        conf = np.zeros(len(pairs), np.int32)
        t2 = time.perf_counter()
        conf[loose] = pair_conflicts(keypoints, pairs[loose], lambda rows: col.page_inks(settings_token(base), ids[rows]), base)
        report["conflict_ms_per_pair"] = 1000 * (time.perf_counter() - t2) / max(1, int(loose.sum()))
        for name, m in (("true", same), ("hard_negative", hard), ("other", other)):
            vals = np.sort(conf[loose & m])
            report[f"conflicts_{name}"] = {"pairs": int(len(vals)), "at_least_1": int((vals >= 1).sum()),
                                           f"at_least_{base.max_conflict_cells}": int((vals >= base.max_conflict_cells).sum()),
                                           "highest": vals[-5:].tolist(), "lowest": vals[:5].tolist()}
            print(f"  conflicts_{name:14s} {report[f'conflicts_{name}']}")
        print(f"  conflict check: {report['conflict_ms_per_pair']:.1f} ms a pair")
        grid = []
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        for c, jt, check in itertools.product((0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8), (0.4, 0.6, 1.01), (True, False)):
            with np.errstate(invalid="ignore"):
                ok = (cov >= c) | (~np.isnan(jac) & (jac >= jt) & (cov >= base.min_coverage_text))
            if check:
                ok &= conf < base.max_conflict_cells
            g = coo_matrix((np.ones(int(ok.sum())), (i[ok], j[ok])), shape=(n, n))
            _, comp = connected_components(g, directed=False)
            sizes = np.bincount(comp)
            rows = np.flatnonzero(sizes[comp] > 1)
            r = evaluate(original, rows, comp[rows]) | {"min_coverage": c, "min_text_jaccard": jt, "conflict_check": check}
            grid.append(r)
        report["grid"] = grid
        for r in grid:
            print(f"  coverage>={r['min_coverage']:.2f} jac>={r['min_text_jaccard']:.2f} conflict check {'on ' if r['conflict_check'] else 'off'}: "
                  f"recall {r['pair_recall']:.3f} ({r['found_pairs']}/{r['true_pairs']}), {r['families']} families, {r['wrong_families']} wrong")
        vec = col.vectors(ids)[1]
        vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
        cand = candidate_pairs(maps, vec, sig, has, base)
        report["candidates"] = int(len(cand))
        report["true_pairs_in_candidates"] = int((original[cand[:, 0]] == original[cand[:, 1]]).sum())
        pos = {int(p): r for r, p in enumerate(ids)}
        for name, r_ in (("job_default", rep), ("job_no_conflict_check", rep_off)):
            rows = np.array([pos[int(p)] for p in r_.table["page_id"]], np.int64)
            job = evaluate(original, rows, r_.table["family"].to_numpy())
            report[name] = job | {"families_job": r_.families, "family_seconds": r_.family_seconds}
            print(f"  {name} (candidates by k={base.k} neighbours: {len(cand)}, "
                  f"{report['true_pairs_in_candidates']}/{int(same.sum())} true pairs among them): recall {job['pair_recall']:.3f}, "
                  f"{job['families']} families, {job['wrong_families']} wrong; families in {r_.family_seconds:.1f} s")
        print(f"  first job run (maps made where missing) {job_s:.1f} s")
        (corpus / "study.json").write_text(json.dumps(report, indent=1))
        col.close()


if __name__ == "__main__":
    main()
