"""Probe: would a "photographed page" rendering in the invariance fit help photographed pages? (issue 13)

    python benchmarks/photo_view_probe.py COLLECTION LABELS [--seeds 0,1,2,3,4]

On a collection ingested by ``style_study.py``, the pages' renderings of docsort's invariance fit
(``docsort.jobs.invariance.style_views``: as is, bilevel, bilevel + blur, grey paper, low JPEG) are
computed once; then two projections are fitted with ``docsort.core.invariance.fit_projection`` (32-d,
shrinkage 0.1): on those 5 views (docsort's default; a control that must match the ``inv32``
row of ``style_study.py``), and on those plus a sixth view, the page photographed on a desk by
``scan_styles._photograph`` (perspective, desk border, light fall-off). Each is judged by kNN@5,
cross-style kNN@5 (overall and for the photo pages), and UMAP + HDBSCAN as docsort runs them
(``docsort.core.clustering.cluster_vectors``, default settings) over the UMAP seeds: ARI, style
leakage NMI, seed-to-seed ARI.

Caveat printed with the results: the sixth view comes from the same generator as the corpus's
``photo`` style (other random draws), so its gain is an optimistic bound for real phone photos.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def generic_photo(image, rng: np.random.Generator):
    """A plainer "page on a surface" rendering, unlike ``scan_styles._photograph``: grey ``L`` image,
    a flat grey border of 3-12 % on each side, each corner moved by up to 4 % (Pillow ``QUAD``),
    no light fall-off, no colour, no rescaling."""
    from PIL import Image

    w, h = image.size
    m = float(rng.uniform(0.03, 0.12))
    bw, bh = int(w * m), int(h * m)
    canvas = Image.new("L", (w + 2 * bw, h + 2 * bh), int(rng.integers(60, 161)))
    canvas.paste(image.convert("L"), (bw, bh))
    W, H = canvas.size
    j = rng.uniform(-0.04, 0.04, size=8) * np.array([W, H] * 4)
    quad = (0 + j[0], 0 + j[1], 0 + j[2], H + j[3], W + j[4], H + j[5], W + j[6], 0 + j[7])
    return canvas.transform((W, H), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR, fillcolor=int(rng.integers(60, 161)))


def photo_views(collection, settings, ids: np.ndarray, extractor, generic: bool = False) -> np.ndarray:
    """float32 (n, D): each page re-read, photographed (``scan_styles._photograph``, or
    :func:`generic_photo`), embedded."""
    from docsort.jobs.ocr import _find_source
    from docsort.core.pages import iter_pages, to_network_input
    from scan_styles import _photograph, rng_for

    want = {int(i) for i in ids}
    out: dict[int, np.ndarray] = {}
    by_doc: dict[int, dict[int, int]] = {}
    for rec in collection.pages(ids):
        by_doc.setdefault(rec.document_id, {})[rec.page_no] = rec.page_id
    batch, owners = [], []
    for doc_id in sorted(by_doc):
        wanted = by_doc[doc_id]
        src, _, _ = _find_source(collection, doc_id)
        for page in iter_pages(src, settings.render, min(wanted), max(wanted)):
            pid = wanted.get(page.page_no)
            if pid is None or pid not in want:
                continue
            if generic:
                im = generic_photo(page.image, rng_for("probe-generic", pid))
            else:
                im = _photograph(page.image.convert("L"), rng_for("probe-photo", pid)).convert("L")
            im.thumbnail(page.image.size)
            batch.append(to_network_input(im, extractor.input_size))
            owners.append(pid)
    vecs = extractor.embed(np.stack(batch))
    for pid, v in zip(owners, vecs):
        out[pid] = v
    return np.stack([out[int(i)] for i in ids])


def judge(name, vecs, cats, styles, settings, seeds):
    """Print kNN, cross-style kNN (all / photo pages) and clustering figures of one set of vectors."""
    from sklearn.metrics import adjusted_rand_score

    from docsort.core.clustering import cluster_vectors
    from docsort.queries.evaluate import cluster_scores, cross_style_knn_precision, knn_precision, style_leakage

    knn, _ = knn_precision(vecs, cats, (5,))
    cross, per = cross_style_knn_precision(vecs, cats, styles, (5,))
    photo = float(per[5][styles == "photo"].mean())
    aris, leaks, labelings = [], [], []
    for seed in seeds:
        umap = settings.umap.model_copy(update={"random_state": seed})
        labels = cluster_vectors(vecs, umap, settings.hdbscan).labels
        aris.append(cluster_scores(cats, labels)["ari"])
        leaks.append(style_leakage(styles, labels)["style_nmi"])
        labelings.append(np.where(labels < 0, 10_000 + np.arange(len(labels)), labels))
    s2s = [adjusted_rand_score(a, b) for a, b in itertools.combinations(labelings, 2)]
    print(f"| {name} | {knn[5]:.3f} | {cross[5]:.3f} | {photo:.3f} | {np.mean(aris):.3f} ± {np.std(aris, ddof=1):.3f} | "
          f"{np.mean(leaks):.3f} | {np.mean(s2s):.3f} ({np.min(s2s):.3f}) |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", type=Path)
    ap.add_argument("labels", type=Path)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--generic", action="store_true", help="also fit with generic_photo as the sixth view (a generator unlike the corpus's)")
    a = ap.parse_args()
    os.environ.setdefault("DOCSORT_OFFLINE", "1")
    from docsort.queries.evaluate import match_label_rows, read_labels
    from docsort.core.invariance import fit_projection
    from docsort.store.manifest import effective_settings, make_extractor
    from docsort.jobs.invariance import style_views
    from docsort.config.settings import load_pipeline
    from docsort.store.storage import Collection

    seeds = [int(s) for s in a.seeds.split(",")]
    with Collection(a.collection) as col:
        settings = effective_settings(col, load_pipeline("default"))
        extractor = make_extractor(settings, announce=False)
        ids, matched, _ = match_label_rows(col, read_labels(a.labels))
        fitted, views, skipped = style_views(col, settings, ids, extractor=extractor)
        assert skipped == 0 and np.array_equal(fitted, ids), (skipped, len(fitted), len(ids))
        photo = photo_views(col, settings, ids, extractor)
        _, raw = col.vectors(ids)
    cats = np.array([matched[int(i)].category for i in ids])
    styles = np.array([matched[int(i)].style for i in ids])
    print(f"{a.collection.name}: {len(ids)} pages; load average {open('/proc/loadavg').read().split()[0]}")
    print("| vectors | kNN@5 | cross-style kNN@5 | photo pages' cross-style kNN@5 | ARI | style leakage | seed-to-seed ARI (min) |")
    print("|---|---|---|---|---|---|---|")
    judge("raw", raw, cats, styles, settings, seeds)
    inv = settings.invariance
    five = fit_projection(views, 32, inv.shrinkage)
    judge("inv32, 5 views (docsort)", five.transform(raw), cats, styles, settings, seeds)
    six = fit_projection(np.concatenate([views, photo[:, None, :]], axis=1), 32, inv.shrinkage)
    judge("inv32, 5 views + photo", six.transform(raw), cats, styles, settings, seeds)
    print("(the photo view is drawn by the generator that made the corpus's photo pages: an optimistic bound)")
    if a.generic:
        with Collection(a.collection) as col:
            plain = photo_views(col, settings, ids, extractor, generic=True)
        six = fit_projection(np.concatenate([views, plain[:, None, :]], axis=1), 32, inv.shrinkage)
        judge("inv32, 5 views + generic page-on-surface", six.transform(raw), cats, styles, settings, seeds)


if __name__ == "__main__":
    main()
