"""Text fusion re-measured on the two style-balanced corpora (issue 13, item 3).

    python benchmarks/text_fusion_study.py prepare   # copy the collections, refit the invariance
    python benchmarks/text_fusion_study.py run --seeds 0,1,2,3,4,5,6,7,8,9 [--variants V1,V2,...]
    python benchmarks/text_fusion_study.py table [--variants ...]   # Markdown tables
    python benchmarks/text_fusion_study.py select                    # label-free weight choices

``prepare`` copies the two OCR'd collections of ``style_study.py --ocr`` (never changed; paths in
``SOURCES``, or ``--source NAME=COLLECTION,LABELS``) into ``benchmarks/out/text_fusion/NAME`` and
refits their scan-style-invariant projection with today's ``[invariance]`` defaults
(``docsort.jobs.invariance.fit_invariance``), then caches per corpus the labelled page ids, projected and
raw visual vectors, categories and styles (``NAME.npz``) and the stored OCR results
(``NAME_texts.json``). ``run`` works on those in memory: text vectors by docsort
(``docsort.core.text.fit_text_model``) or the plain ``TfidfVectorizer(sublinear_tf=True) ->
TruncatedSVD -> L2``, fusions by ``docsort.core.text.fuse`` with three ways of filling the text part of
pages without usable text, each embedded by UMAP as ``docsort.core.clustering.cluster_vectors`` does
(same settings, the UMAP seeds given; without the 2-D map) and clustered by
``docsort.core.clustering.cluster_embedding``; figures from ``docsort.queries.evaluate``: kNN@5, cross-style
kNN@5, ARI / NMI (noise pages as singletons), style leakage, noise, seed-to-seed ARI, and
HDBSCAN's DBCV (label-free). Results: ``benchmarks/out/text_fusion/results.json``.

Variants: ``visual`` | ``rawvisual`` (no invariance) | ``text:KIND`` (text alone, pages with usable
text) | ``textall:KIND`` (every page) | ``fuse:KIND:FILL:W`` | ``rawfuse:KIND:FILL:W``, with KIND
``dsN`` (docsort LSA, N dims), ``plainN``, either with ``-c`` (text vectors centred); FILL ``zero``
(docsort), ``mean`` or ``knn``; then optionally ``@min_confidence=X``, ``@min_words=N``,
``@or_words=N`` (also usable: at least N words, whatever the confidence).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out" / "text_fusion"
SOURCES = {
    "corpus1": (Path("/work/wt13e/benchmarks/out/style_study/collections/dev_styles-ocr"), Path("/work/wt13e/benchmarks/out/dev_styles/labels.csv")),
    "corpus2": (Path("/work/wt13e/benchmarks/out/style_study2/collections/dev_corpus2-ocr"), Path("/work/wt13e/benchmarks/out/dev_corpus2/labels.csv")),
}


def prepare(names) -> None:
    """Copy each corpus's collection, refit its invariance with the default settings, write the caches."""
    from docsort.queries.evaluate import match_label_rows, read_labels
    from docsort.queries.vectors import _visual_vectors
    from docsort.jobs.invariance import fit_invariance
    from docsort.config.settings import load_pipeline
    from docsort.store.storage import Collection

    settings = load_pipeline("default").with_overrides(weights="bundled")
    for name in names:
        src, labels = SOURCES[name]
        dst = OUT / name
        if not dst.exists():
            shutil.copytree(src, dst)
        with Collection(dst) as col:
            t = time.perf_counter()
            with col.write_lock(600):
                rep = fit_invariance(col, settings, progress=False, log=lambda m: print(m, file=sys.stderr))
            print(f"{name}: invariance {rep.action} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            ids, matched, missing = match_label_rows(col, read_labels(labels))
            _, visual = _visual_vectors(col, settings, ids)
            _, raw = col.vectors(ids)
            texts = col.page_texts(ids)
        cats = np.array([matched[int(i)].category for i in ids])
        styles = np.array([matched[int(i)].style for i in ids])
        docs = np.array([matched[int(i)].file for i in ids])
        np.savez(OUT / f"{name}.npz", ids=ids, visual=visual, raw=raw, cats=cats, styles=styles, docs=docs)
        (OUT / f"{name}_texts.json").write_text(json.dumps({str(k): v for k, v in texts.items()}))
        print(f"{name}: {len(ids)} labelled pages, {len(missing)} label rows unmatched", file=sys.stderr)


def load(name, text_overrides=None):
    """``(settings, arrays, OCR texts, usable)`` of a prepared corpus: the default pipeline settings
    with ``text_overrides`` applied, the ``NAME.npz`` arrays, the OCR text of each page ("" for
    none) and bool (n,) whether it is usable (``docsort.core.text.usable_text``, plus ``or_words``)."""
    from docsort.config.settings import load_pipeline
    from docsort.core.text import usable_text

    settings = load_pipeline("default")
    text_overrides = dict(text_overrides or {})
    or_words = text_overrides.pop("or_words", None)  # also usable: >= this many words, whatever the confidence
    if text_overrides:
        settings = settings.model_copy(update={"text": settings.text.model_copy(update=text_overrides)})
    z = np.load(OUT / f"{name}.npz")
    texts = json.loads((OUT / f"{name}_texts.json").read_text())
    ids = z["ids"]
    rows = [texts.get(str(int(i))) for i in ids]
    usable = np.array([r is not None and usable_text(r["text"], r["n_words"], r["error"], settings.text, r["confidence"]) for r in rows])
    if or_words:
        usable |= np.array([r is not None and r["error"] is None and bool(r["text"]) and int(r["n_words"] or 0) >= or_words for r in rows])
    raw_text = [(r["text"] or "") if r else "" for r in rows]
    return settings, z, raw_text, usable


def l2(x):
    """Rows L2-normalised (float32; zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 1e-12, x / np.maximum(n, 1e-12), 0.0).astype(np.float32)


def text_vectors(kind, texts, usable, settings):
    """float32 (n, D) text vectors, zero rows for pages without usable text."""
    from docsort.core.text import fit_text_model

    fit = [t for t, u in zip(texts, usable) if u]
    if kind.startswith("ds"):  # docsort's own LSA, lsa_components from the name
        parts = kind.split("-")
        upd = {"lsa_components": int(parts[0][2:])}
        model = fit_text_model(fit, settings.text.model_copy(update=upd))
        t = model.transform(fit)
    else:  # plainN: the plain recipe
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        x = TfidfVectorizer(sublinear_tf=True).fit_transform(fit)
        t = l2(TruncatedSVD(int(kind.split("-")[0][5:]), random_state=0).fit_transform(x))
    if kind.endswith("-c"):  # centred on the mean text vector
        t = l2(t - t.mean(axis=0))
    out = np.zeros((len(texts), t.shape[1]), np.float32)
    out[usable] = t
    return out


def fill_textless(mode, visual, text, usable, k=5):
    """Text part of pages without usable text: zero (docsort today), the mean text vector, or the
    mean text vector of the page's k nearest visual neighbours among pages with text."""
    text = text.copy()
    if mode == "zero" or usable.all():
        return text
    if mode == "mean":
        text[~usable] = l2(text[usable].mean(axis=0, keepdims=True))
        return text
    v = l2(visual - visual.mean(axis=0))
    sims = v[~usable] @ v[usable].T
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    text[~usable] = l2(text[usable][nn].mean(axis=1))
    return text


def cluster_runs(vectors, settings, seeds):
    """Labels per UMAP seed: UMAP as docsort.core.clustering.cluster_vectors (without the 2-D map) +
    docsort.core.clustering.cluster_embedding; also HDBSCAN's DBCV on the embedding."""
    from docsort.core.clustering import cluster_embedding
    from docsort.core.runtime import quiet_native_stderr

    with quiet_native_stderr():
        import umap
    from hdbscan.validity import validity_index

    out = []
    n = len(vectors)
    for seed in seeds:
        u = settings.umap
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emb = umap.UMAP(n_components=min(u.n_components, n - 2), min_dist=u.min_dist, n_neighbors=min(u.n_neighbors, n - 1),
                            metric=u.metric, random_state=seed).fit_transform(vectors).astype(np.float32)
        r = cluster_embedding(emb, settings.hdbscan)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dbcv = float(validity_index(emb.astype(np.float64), r.labels)) if len(set(r.labels.tolist()) - {-1}) > 1 else -1.0
        except Exception:
            dbcv = float("nan")
        out.append((r.labels, dbcv))
    return out


def figures(vectors, cats, styles, runs):
    """The study's figures of one set of vectors and its clusterings (one per UMAP seed)."""
    from sklearn.metrics import adjusted_rand_score

    from docsort.queries.evaluate import cluster_scores, cross_style_knn_precision, knn_precision, style_leakage

    knn, _ = knn_precision(vectors, cats, (5,))
    cross, _ = cross_style_knn_precision(vectors, cats, styles, (5,))
    sc = [cluster_scores(cats, lab) for lab, _ in runs]
    leak = [style_leakage(styles, lab)["style_nmi"] for lab, _ in runs]
    single = [np.where(lab < 0, 10_000 + np.arange(len(lab)), lab) for lab, _ in runs]
    pair = [adjusted_rand_score(a, b) for a, b in itertools.combinations(single, 2)]
    ari = np.array([s["ari"] for s in sc])
    return {"knn5": knn[5], "cross5": cross[5], "ari": float(ari.mean()), "ari_sd": float(ari.std(ddof=1)) if len(ari) > 1 else 0.0,
            "nmi": float(np.mean([s["nmi"] for s in sc])), "leak": float(np.mean(leak)),
            "noise": float(np.mean([s["noise_share"] for s in sc])), "clusters": float(np.mean([s["n_clusters"] for s in sc])),
            "s2s": float(np.mean(pair)) if pair else None, "s2s_min": float(np.min(pair)) if pair else None,
            "dbcv": float(np.nanmean([d for _, d in runs]))}


def run(names, seeds, variants):
    """Measure each variant on each corpus; results merged into results.json (by corpus and variant)."""
    from docsort.core.text import fuse

    results_file = OUT / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    for name in names:
        settings, z, texts, usable = load(name)
        visual, cats, styles = z["visual"], z["cats"], z["styles"]
        print(f"{name}: {len(cats)} pages, {int(usable.sum())} with usable text; load {open('/proc/loadavg').read().split()[0]}", file=sys.stderr)
        caches = {}
        for var in variants:
            t0 = time.perf_counter()
            # "@min_confidence=30@min_words=20": text settings changed for this variant (the usable-text rule)
            spec, *over = var.split("@")
            over = {k: float(v) if k == "min_confidence" else int(v) for k, v in (o.split("=") for o in over)}
            settings, z, texts, usable = load(name, over)
            cache = caches.setdefault(tuple(sorted(over.items())), {})
            part, *rest = spec.split(":")
            if part == "visual":
                vecs, sel = visual, slice(None)
            elif part == "rawvisual":  # the stored vectors, no invariance projection (docsort before issue 13)
                vecs, sel = l2(z["raw"]), slice(None)
            elif part == "text":  # text alone, on the pages with usable text
                kind = rest[0]
                cache.setdefault(kind, text_vectors(kind, texts, usable, settings))
                vecs, sel = cache[kind][usable], usable
            elif part == "textall":  # text alone, every page (zero rows for those without text)
                kind = rest[0]
                cache.setdefault(kind, text_vectors(kind, texts, usable, settings))
                vecs, sel = cache[kind] + 0.0, slice(None)
                vecs[~usable] = 1e-3 * l2(np.ones((1, vecs.shape[1])))  # a zero row cannot be UMAP'd with cosine
            else:  # fuse:KIND:MODE:W (invariant visual) or rawfuse:KIND:MODE:W (stored raw visual)
                kind, mode, w = rest[0], rest[1], float(rest[2])
                vis = l2(z["raw"]) if part == "rawfuse" else visual
                cache.setdefault(kind, text_vectors(kind, texts, usable, settings))
                t = fill_textless(mode, vis, cache[kind], usable)
                vecs, sel = fuse(vis, t, w, vis.mean(axis=0)), slice(None)
            runs = cluster_runs(vecs, settings, seeds)
            f = figures(vecs, cats[sel], styles[sel], runs)
            f |= {"corpus": name, "variant": var, "pages": int(len(vecs)), "seeds": seeds, "seconds": round(time.perf_counter() - t0, 1),
                  "load": open("/proc/loadavg").read().split()[0], "text_share": float(usable.mean()),
                  "text_pages": int(usable.sum())}
            print(f"  {var} ({int(usable.sum())} text pages): kNN@5 {f['knn5']:.3f} cross {f['cross5']:.3f} ARI {f['ari']:.3f}±{f['ari_sd']:.3f} leak {f['leak']:.3f} "
                  f"noise {f['noise']:.1%} cl {f['clusters']:.1f} s2s {f['s2s'] or 0:.3f} dbcv {f['dbcv']:.3f} ({f['seconds']} s)", file=sys.stderr, flush=True)
            results = [r for r in results if (r["corpus"], r["variant"]) != (name, var)] + [f]
            results_file.write_text(json.dumps(results, indent=1) + "\n")


DEFAULT_VARIANTS = (["visual"] + [f"text:{k}" for k in ("ds32", "plain32", "ds100", "plain100", "ds32-c")] + ["textall:ds32"]
                    + [f"fuse:{k}:{m}:{w}" for k in ("ds32", "plain32") for m in ("zero", "mean", "knn") for w in (0.3, 0.5, 0.7)]
                    + [f"fuse:{k}:{m}:{w}" for k in ("ds100", "ds32-c") for m in ("zero", "knn") for w in (0.3, 0.5, 0.7)])


def table(variants=None) -> str:
    """results.json as one Markdown table per corpus (rows in ``variants`` order, else as stored)."""
    results = json.loads((OUT / "results.json").read_text())
    lines = []
    for name in dict.fromkeys(r["corpus"] for r in results):
        rows = {r["variant"]: r for r in results if r["corpus"] == name}
        lines += [f"**{name}**", "", "| vectors | pages | text pages | seeds | kNN@5 | cross-style kNN@5 | ARI | NMI | style leakage | noise | clusters | "
                  "seed-to-seed ARI (min) | DBCV |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for v in (variants or rows):
            if v not in rows:
                continue
            r = rows[v]
            lines.append(f"| {v} | {r['pages']} | {r.get('text_pages', '')} | {len(r['seeds'])} | {r['knn5']:.3f} | {r['cross5']:.3f} | "
                         f"{r['ari']:.3f} ± {r['ari_sd']:.3f} | {r['nmi']:.3f} | {r['leak']:.3f} | {r['noise']:.1%} | {r['clusters']:.1f} | "
                         f"{r['s2s']:.3f} ({r['s2s_min']:.3f}) | {r['dbcv']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def select(weights=(0.3, 0.5, 0.7)) -> str:
    """Label-free choices of the fusion weight per corpus from results.json (fuse:ds32:zero:W rows),
    and the ARI each choice gets: the w with the best mean DBCV (HDBSCAN's density-based cluster
    validity, Moulavi et al. 2014, ``hdbscan.validity.validity_index``) of the fused clustering;
    the w with the best seed-to-seed ARI; and w = DBCV(text) / (DBCV(text) + DBCV(visual)), each
    part clustered alone (rounded to the nearest w measured)."""
    results = json.loads((OUT / "results.json").read_text())
    out = []
    for name in dict.fromkeys(r["corpus"] for r in results):
        rows = {r["variant"]: r for r in results if r["corpus"] == name}
        fused = {w: rows[f"fuse:ds32:zero:{w}"] for w in (0.2, 0.3, 0.4, 0.45, 0.5, 0.7) if f"fuse:ds32:zero:{w}" in rows}
        cand = {w: fused[w] for w in weights if w in fused}
        by_dbcv = max(cand, key=lambda w: cand[w]["dbcv"])
        by_s2s = max(cand, key=lambda w: cand[w]["s2s"])
        ratio = rows["text:ds32"]["dbcv"] / (rows["text:ds32"]["dbcv"] + rows["visual"]["dbcv"])
        near = min(fused, key=lambda w: abs(w - ratio))
        out.append(f"{name}: fixed 0.3 ARI {fused[0.3]['ari']:.3f}; best DBCV -> w {by_dbcv} ARI {cand[by_dbcv]['ari']:.3f}; "
                   f"best seed-to-seed -> w {by_s2s} ARI {cand[by_s2s]['ari']:.3f}; DBCV ratio {ratio:.3f} -> w {near} ARI {fused[near]['ari']:.3f}; "
                   f"text share {rows['visual']['text_share']:.2f}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["prepare", "run", "table", "select"])
    ap.add_argument("--corpora", default="corpus1,corpus2")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--variants", default="")
    ap.add_argument("--source", action="append", default=[], help="NAME=COLLECTION,LABELS (prepare): another source collection")
    a = ap.parse_args()
    os.environ.setdefault("DOCSORT_OFFLINE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    OUT.mkdir(parents=True, exist_ok=True)
    for spec in a.source:
        name, paths = spec.split("=", 1)
        coll, labels = paths.split(",", 1)
        SOURCES[name] = (Path(coll), Path(labels))
    if a.what == "prepare":
        prepare(a.corpora.split(","))
    elif a.what == "table":
        print(table(a.variants.split(",") if a.variants else None))
    elif a.what == "select":
        print(select())
    else:
        run(a.corpora.split(","), [int(x) for x in a.seeds.split(",")], a.variants.split(",") if a.variants else DEFAULT_VARIANTS)


if __name__ == "__main__":
    main()
