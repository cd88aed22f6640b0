"""Feature and clustering choices for docsort, measured on the labelled development corpus (issue 5).

    python benchmarks/dev_corpus.py benchmarks/out/dev_corpus        # once (see its docstring)
    python benchmarks/feature_study.py                                # ~10 min on 2 quiet cores
    python benchmarks/feature_study.py --stage cluster                # re-use cached vectors

Stages (each caches its output under ``--out``, default ``benchmarks/out/feature_study``):

1. **embed**: every labelled page is rendered by docsort's own pages stage
   (:func:`docsort.core.pages.iter_pages` at the render size the input needs), fitted to the network
   in each *input variant* (docsort's squash, :func:`docsort.core.pages.to_network_input`, or the
   aspect-keeping pad of :func:`fit_to_input`; several sizes), and run once through InceptionV3 up to ``mixed1``; every pooling of
   :data:`docsort.core.features.POOLINGS` is computed from that one feature map (with docsort's own
   pooling functions) and L2-normalised. Two orientation baselines: 30x30 raw pixels and
   random-init weights. Vectors go to ``vectors.npz``.
2. **knn**: leave-one-out kNN precision@1/5/10 (:func:`docsort.queries.evaluate.knn_precision`), also
   with neighbours from the page's own source document skipped ("other docs"), for every
   variant x pooling, and for PCA-whitened / mean-centred versions of the best ones.
   **family**: every pooling of the registry and its neighbours between average and max (GeM
   exponents, top-k fractions, max of a 3x3-averaged map), on clean pages and with specks and a
   stain on every page (:func:`add_specks`).
3. **cluster**: UMAP + HDBSCAN, with the same calls and clamping as
   :func:`docsort.core.clustering.cluster_vectors` (checked against it), over a grid of UMAP
   ``n_neighbors`` / ``n_components`` / ``min_dist`` (three UMAP seeds each) and HDBSCAN
   ``min_cluster_size`` / ``min_samples``, on the baseline and the best vectors; then
   ``min_cluster_size`` against collection size on stratified subsamples.

Writes ``results.json`` and ``results.md`` (the tables that went into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

os.environ.setdefault("DOCSORT_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from docsort.queries.evaluate import cluster_scores, knn_precision  # noqa: E402
from docsort.core.pages import discover_files, iter_pages, to_network_input  # noqa: E402
from docsort.config.settings import FeatureSettings, RenderSettings  # noqa: E402
from PIL import Image  # noqa: E402

#: (name, input mode, (height, width), render long side px). The render long side is the
#: smallest of docsort's render sizes that covers the input (no invented pixels).
VARIANTS = [
    ("squash299", "squash", (299, 299), 400),
    ("pad299", "pad", (299, 299), 400),
    ("squash423x299", "squash", (423, 299), 600),
    ("pad423x299", "pad", (423, 299), 600),
    ("squash448", "squash", (448, 448), 600),
    ("pad448", "pad", (448, 448), 600),
    ("squash598x423", "squash", (598, 423), 800),
    ("pad598x423", "pad", (598, 423), 800),
    ("pad598", "pad", (598, 598), 800),
]
BASELINE = ("squash299", "gap")
#: docsort's default pooling at the default input: the vectors the size stage studies.
DEFAULT_KEY = f"squash299|{FeatureSettings().pooling}"
#: Weights for every pretrained run (``--weights``); ``bundled`` is what an offline machine has.
WEIGHTS = "bundled"
BATCH = 16


def fit_to_input(image, size: tuple[int, int], mode: str) -> np.ndarray:
    """The page as network input: docsort's ``squash`` (:func:`docsort.core.pages.to_network_input`), or
    ``pad``: scaled to fit inside ``size`` keeping its aspect ratio, centred, the rest filled with
    the median of the page's outermost pixel ring (its paper colour).

    Returns:
        uint8 (height, width, 1) for a grey page.
    """
    if mode == "squash":
        return to_network_input(image, size)
    if mode != "pad":
        raise ValueError(f"unknown input mode {mode!r}")
    h, w = size
    iw, ih = image.size
    scale = min(w / iw, h / ih)
    fw, fh = max(1, min(w, round(iw * scale))), max(1, min(h, round(ih * scale)))
    fitted = image.resize((fw, fh), Image.Resampling.BILINEAR, reducing_gap=2.0)
    src = np.asarray(image)
    ring = np.concatenate([src[0], src[-1], src[:, 0], src[:, -1]])
    canvas = Image.new(image.mode, (w, h), int(np.median(ring)))
    canvas.paste(fitted, ((w - fw) // 2, (h - fh) // 2))
    return np.asarray(canvas, dtype=np.uint8)[:, :, None]


def load_labels(corpus: Path) -> list[dict]:
    """labels.csv rows with ``path`` (absolute), ``page`` (int) and ``group`` (source document)."""
    rows = []
    with open(corpus / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            # one PNG/JPEG per page is written as NAME-pN.ext: its source document is NAME
            group = re.sub(r"-p\d+\.(png|jpg)$", "", r["file"])
            rows.append({**r, "page": int(r["page"]), "path": (corpus / r["file"]).resolve(), "group": group})
    return rows


def render_pages(rows: list[dict], long_side: int, color: str = "gray") -> list:
    """The page images (Pillow) of every row, rendered by docsort's pages stage at ``long_side``."""
    render = RenderSettings(long_side_px=long_side, color=color)
    by_file: dict[Path, dict[int, object]] = defaultdict(dict)
    for path in sorted({r["path"] for r in rows}):
        src = next(iter(discover_files([path])))
        for p in iter_pages(src, render):
            by_file[path][p.page_no] = p.image
    return [by_file[r["path"]][r["page"]] for r in rows]


def embed_variant(images: list, mode: str, size: tuple[int, int], weights: str | None = None, extra: dict | None = None) -> tuple[dict[str, np.ndarray], float]:
    """One forward pass per page; every pooling of the registry (and of ``extra``, name ->
    function (n, H, W, C) -> (n, D)) from the same map.

    Returns:
        ``({pooling: float32 (n, D) unit rows}, seconds of network + pooling)``.
    """
    import tensorflow as tf
    from keras import ops

    from docsort.core.features import POOLINGS, FeatureExtractor, preprocess

    ex = FeatureExtractor(FeatureSettings(weights=weights or WEIGHTS, input_size=size, batch_size=BATCH), channels=1, announce=False)
    scheme = ex.weights.preprocessing

    @tf.function(input_signature=[tf.TensorSpec((BATCH, *size, 1), tf.uint8)])
    def pooled(x):
        fmap = ex.model(preprocess(x, scheme), training=False)
        out = {}
        pools = {name: pool for name, (pool, _) in POOLINGS.items()}
        pools |= extra or {}
        for name, pool in pools.items():
            v = pool(ops.cast(fmap, "float32"))
            out[name] = v / ops.maximum(ops.norm(v, axis=-1, keepdims=True), 1e-12)
        return out

    arr = np.stack([fit_to_input(im, size, mode) for im in images])
    t0 = time.perf_counter()
    chunks = defaultdict(list)
    for start in range(0, len(arr), BATCH):
        chunk = arr[start : start + BATCH]
        n = len(chunk)
        if n < BATCH:
            chunk = np.concatenate([chunk, np.zeros((BATCH - n, *chunk.shape[1:]), np.uint8)])
        for name, v in pooled(tf.constant(chunk)).items():
            chunks[name].append(v.numpy()[:n])
    seconds = time.perf_counter() - t0
    return {k: np.concatenate(v).astype(np.float32) for k, v in chunks.items()}, seconds


def stage_embed(rows: list[dict], out: Path, only: list[str] | None = None) -> None:
    """Stage 1: vectors for every variant x pooling, plus the pixel and random-weights baselines.

    ``only``: re-embed just these variants and merge them into an existing ``vectors.npz``
    (e.g. after a pooling was added to the registry).
    """
    vectors: dict[str, np.ndarray] = {}
    timing: dict[str, dict] = {}
    if only and (out / "vectors.npz").exists():
        vectors = dict(np.load(out / "vectors.npz"))
        timing = json.loads((out / "timing.json").read_text())
    images_at: dict[int, list] = {}
    for name, mode, size, long_side in VARIANTS:
        if only and name not in only:
            continue
        if long_side not in images_at:
            t = time.perf_counter()
            images_at[long_side] = render_pages(rows, long_side)
            print(f"rendered {len(rows)} pages at long side {long_side}: {time.perf_counter() - t:.1f} s", flush=True)
        pooled, sec = embed_variant(images_at[long_side], mode, size)
        for pooling, v in pooled.items():
            vectors[f"{name}|{pooling}"] = v
        timing[name] = {"seconds": sec, "pages_per_s": len(rows) / sec}
        print(f"{name}: {len(rows) / sec:.1f} pages/s", flush=True)
    if only:
        np.savez_compressed(out / "vectors.npz", **vectors)
        (out / "timing.json").write_text(json.dumps(timing, indent=2))
        return
    # Orientation: random-init weights (same architecture, seed 0) and raw 30x30 pixels.
    pooled, _ = embed_variant(images_at[400], "squash", (299, 299), weights="random")
    vectors["random-weights squash299|gap"] = pooled["gap"]
    px = np.stack([to_network_input(im, (30, 30)).reshape(-1).astype(np.float32) for im in images_at[400]])
    px -= px.mean(axis=1, keepdims=True)
    vectors["pixels30x30|raw"] = px / np.maximum(np.linalg.norm(px, axis=1, keepdims=True), 1e-12)
    np.savez_compressed(out / "vectors.npz", **vectors)
    (out / "timing.json").write_text(json.dumps(timing, indent=2))


def add_specks(image, rng: np.random.Generator):
    """A copy of a page with a few dark specks and one grey stain (dust, hole punch, coffee).

    Three to six black discs of radius 0.5-1 % of the long side and one translucent grey disc
    of 4-8 %, at random places: the kind of local blemish a max pooling may latch onto.
    """
    from PIL import ImageDraw

    im = image.convert("L").copy()
    d = ImageDraw.Draw(im)
    w, h = im.size
    side = max(w, h)
    for _ in range(int(rng.integers(3, 7))):
        r = float(rng.uniform(0.005, 0.01)) * side
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        d.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(0, 40)))
    stain = im.copy()
    r = float(rng.uniform(0.04, 0.08)) * side
    x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    ImageDraw.Draw(stain).ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(120, 180)))
    return Image.blend(im, stain, 0.5)


def pooling_family() -> dict:
    """Neighbours of the registry's poolings, to see where on the average-max axis to sit:
    GeM with p = 1.5..6 (p = 1 is average, p -> infinity max pooling), the mean of the top
    1 % / 10 % of cells (the registry's ``topk`` is 3 %), and the max of a 3x3-averaged map."""
    from keras import ops

    from docsort.core.features import _gem, _topk

    fam = {f"gem p={p:g}": (lambda x, p=p: _gem(x, p)) for p in (1.5, 2.0, 4.0, 6.0)}
    fam |= {f"top {f:.0%}": (lambda x, f=f: _topk(x, f)) for f in (0.01, 0.10)}
    fam["max of 3x3 mean"] = lambda x: ops.max(ops.average_pool(x, 3, strides=1, padding="valid"), axis=(1, 2))
    return fam


def stage_family(rows: list[dict], out: Path) -> dict:
    """kNN precision of the pooling family, clean and blemished, squash 299."""
    cats = np.array([r["category"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    clean_imgs = render_pages(rows, 400)
    res: dict = {}
    for label, images in (("clean", clean_imgs), ("blemished", [add_specks(im, np.random.default_rng(i)) for i, im in enumerate(clean_imgs)])):
        pooled, _ = embed_variant(images, "squash", (299, 299), extra=pooling_family())
        for name, v in pooled.items():
            a, _ = knn_precision(v, cats, (1, 5, 10))
            b, _ = knn_precision(v, cats, (5,), groups=groups)
            res.setdefault(name, {})[label] = {"knn1": a[1], "knn5": a[5], "knn10": a[10], "knn5_other": b[5]}
    (out / "family.json").write_text(json.dumps(res, indent=2))
    return res


def whiten(v: np.ndarray, dims: int | None, center_only: bool = False) -> np.ndarray:
    """PCA-whitening (or mean-centring) fitted on the corpus itself, then L2 normalisation.

    This is what docsort could do per collection without labels (Jegou & Chum 2012, "Negative
    evidences and co-occurrences in image retrieval", ECCV: PCA-whitening of pooled CNN/VLAD
    descriptors). ``dims`` None keeps min(n - 1, D) components.
    """
    from sklearn.decomposition import PCA

    x = v - v.mean(axis=0, keepdims=True)
    if not center_only:
        d = min(dims or x.shape[1], x.shape[0] - 1, x.shape[1])
        x = PCA(n_components=d, whiten=True, random_state=0).fit_transform(x)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def stage_knn(rows: list[dict], out: Path) -> dict:
    """Stage 2: kNN precision for every vector set, then whitening on the best ones."""
    data = np.load(out / "vectors.npz")
    cats = np.array([r["category"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    table = {}
    for key in data.files:
        p, _ = knn_precision(data[key], cats, (1, 5, 10))
        q, _ = knn_precision(data[key], cats, (1, 5), groups=groups)
        table[key] = {"knn1": p[1], "knn5": p[5], "knn10": p[10], "knn1_other": q[1], "knn5_other": q[5], "dim": int(data[key].shape[1])}
    plain = [k for k in table if "|" in k and not k.startswith(("random", "pixels"))]
    best = sorted(plain, key=lambda k: -(table[k]["knn5"] + table[k]["knn5_other"]))[:4]
    for key in dict.fromkeys(best + ["|".join(BASELINE)]):
        for label, kw in (("center", {"dims": None, "center_only": True}), ("pcaw32", {"dims": 32}),
                          ("pcaw64", {"dims": 64}), ("pcaw128", {"dims": 128})):
            v = whiten(data[key], **kw)
            p, _ = knn_precision(v, cats, (1, 5, 10))
            q, _ = knn_precision(v, cats, (1, 5), groups=groups)
            table[f"{key}+{label}"] = {"knn1": p[1], "knn5": p[5], "knn10": p[10], "knn1_other": q[1], "knn5_other": q[5], "dim": int(v.shape[1])}
    (out / "knn.json").write_text(json.dumps(table, indent=2))
    return table


# ---------------------------------------------------------------------------------------------
# clustering
# ---------------------------------------------------------------------------------------------


def umap_embed(v: np.ndarray, n_neighbors: int, n_components: int, min_dist: float, seed: int) -> np.ndarray:
    """UMAP exactly as :func:`docsort.core.clustering.cluster_vectors` calls it (cosine, clamped)."""
    import umap

    n = len(v)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        reducer = umap.UMAP(n_components=min(n_components, n - 2), min_dist=min_dist, n_neighbors=min(n_neighbors, n - 1),
                            metric="cosine", random_state=seed)
        return reducer.fit_transform(v).astype(np.float32)


def hdbscan_labels(emb: np.ndarray, mcs: int, ms: int) -> np.ndarray:
    """HDBSCAN exactly as :func:`docsort.core.clustering.cluster_vectors` calls it (eom, epsilon 0)."""
    import hdbscan

    return hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=ms, cluster_selection_method="eom",
                           cluster_selection_epsilon=0.0, prediction_data=True).fit_predict(emb).astype(np.int64)


def auto_mcs(n: int) -> int:
    from docsort.core.clustering import auto_min_cluster_size

    return auto_min_cluster_size(n)


def check_mirror(v: np.ndarray) -> None:
    """The study's UMAP + HDBSCAN give the same labels as docsort's cluster_vectors (default settings)."""
    from docsort.core.clustering import cluster_vectors
    from docsort.config.settings import HdbscanSettings, UmapSettings

    ref = cluster_vectors(v, UmapSettings(), HdbscanSettings()).labels
    mcs = auto_mcs(len(v))
    mine = hdbscan_labels(umap_embed(v, 15, 10, 0.0, 42), mcs, max(1, mcs // 2))
    assert np.array_equal(ref, mine), "study clustering differs from docsort.core.clustering.cluster_vectors"


SEEDS = (42, 7, 2024)
UMAP_GRID = [(nn, nc, md) for nn in (5, 10, 15, 30) for nc in (2, 5, 10) for md in (0.0, 0.1)]
MCS_GRID = (3, 5, 8, 12, 16)


def _ms_grid(mcs: int) -> list[int]:
    return sorted({1, max(1, mcs // 2), mcs})


def stage_cluster(rows: list[dict], out: Path, keys: list[str]) -> dict:
    """Stage 3: UMAP x HDBSCAN grid (mean over UMAP seeds) on the given vector sets."""
    data = np.load(out / "vectors.npz")
    cats = np.array([r["category"] for r in rows])
    check_mirror(data["|".join(BASELINE)])
    results: dict = json.loads((out / "cluster.json").read_text()) if (out / "cluster.json").exists() else {}
    for key in keys:
        v = data[key]
        grid = {}
        t0 = time.perf_counter()
        for nn, nc, md in UMAP_GRID:
            embs = [umap_embed(v, nn, nc, md, s) for s in SEEDS]
            for mcs in MCS_GRID:
                for ms in _ms_grid(mcs):
                    scores = [cluster_scores(cats, hdbscan_labels(e, mcs, ms)) for e in embs]
                    grid[f"nn={nn} nc={nc} md={md} mcs={mcs} ms={ms}"] = {
                        m: float(np.mean([s[m] for s in scores])) for m in ("ari", "nmi", "noise_share", "n_clusters")
                    } | {"ari_min": float(min(s["ari"] for s in scores))}
        results[key] = grid
        print(f"cluster grid {key}: {time.perf_counter() - t0:.0f} s", flush=True)
    (out / "cluster.json").write_text(json.dumps(results, indent=2))
    return results


def stage_sizes(rows: list[dict], out: Path, key: str, nn: int, nc: int, md: float) -> dict:
    """min_cluster_size against collection size: stratified subsamples of 1/3, 2/3 and all pages."""
    data = np.load(out / "vectors.npz")
    v_all = data[key]
    cats_all = np.array([r["category"] for r in rows])
    res = {}
    for frac in (1 / 3, 2 / 3, 1.0):
        draws = 3 if frac < 1 else 1
        per_mcs = defaultdict(list)
        n = 0
        for d in range(draws):
            rng = np.random.default_rng(100 + d)
            idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(cats_all == c))[: max(2, round(frac * (cats_all == c).sum()))]
                                          for c in np.unique(cats_all)]))
            n = len(idx)
            embs = [umap_embed(v_all[idx], nn, nc, md, s) for s in SEEDS]
            for mcs in (3, 4, 5, 6, 8, 10, 12, 16):
                for ms_rule, ms in (("half", max(1, mcs // 2)), ("one", 1)):
                    for e in embs:
                        s = cluster_scores(cats_all[idx], hdbscan_labels(e, mcs, ms))
                        per_mcs[f"{mcs}|{ms_rule}"].append((s["ari"], s["nmi"], s["noise_share"]))
        res[f"{frac:.2f}"] = {"n": n, "auto_mcs": auto_mcs(n), "key": key, "umap": [nn, nc, md],
                              "by_mcs": {m: [float(x) for x in np.mean(vals, axis=0)] for m, vals in per_mcs.items()}}
        print(f"sizes {frac:.2f} (n={n}) done", flush=True)
    (out / "sizes.json").write_text(json.dumps(res, indent=2))
    return res


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def report(out: Path) -> str:
    """Markdown tables from the cached JSON files."""
    lines = []
    knn = json.loads((out / "knn.json").read_text())
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {}
    lines += ["### kNN precision (leave-one-out, cosine) per input variant and pooling", "",
              "| vectors | dim | kNN@1 | kNN@5 | kNN@10 | kNN@1 other docs | kNN@5 other docs | pages/s |", "|---|---|---|---|---|---|---|---|"]
    for key, r in sorted(knn.items(), key=lambda kv: -kv[1]["knn5"]):
        variant = key.split("|")[0]
        speed = timing.get(variant, {}).get("pages_per_s")
        lines.append(f"| {key} | {r['dim']} | {r['knn1']:.3f} | {r['knn5']:.3f} | {r['knn10']:.3f} | {r['knn1_other']:.3f} | {r['knn5_other']:.3f} | "
                     f"{'-' if speed is None or '+' in key else f'{speed:.0f}'} |")
    if (out / "cluster.json").exists():
        cl = json.loads((out / "cluster.json").read_text())
        for key, grid in cl.items():
            lines += ["", f"### UMAP + HDBSCAN on {key} (mean of {len(SEEDS)} UMAP seeds; top 12 by ARI, and docsort's defaults)", "",
                      "| settings | ARI | ARI worst seed | NMI | noise | clusters |", "|---|---|---|---|---|---|"]
            n = int(np.load(out / "vectors.npz")[key].shape[0])
            mcs = auto_mcs(n)
            default = f"nn=15 nc=10 md=0.0 mcs={mcs} ms={max(1, mcs // 2)}"
            top = sorted(grid.items(), key=lambda kv: -kv[1]["ari"])[:12]
            for name, r in top + [(default + " (default)", grid[default])]:
                lines.append(f"| {name} | {r['ari']:.3f} | {r['ari_min']:.3f} | {r['nmi']:.3f} | {r['noise_share']:.1%} | {r['n_clusters']:.1f} |")
    if (out / "sizes.json").exists():
        sz = json.loads((out / "sizes.json").read_text())
        first = next(iter(sz.values()))
        lines += ["", f"### min_cluster_size against collection size on {first['key']}, UMAP nn/nc/md {first['umap']} "
                  "(ARI / noise, mean of 3 stratified draws x 3 UMAP seeds; 1 draw at full size)", ""]
        mcs_list = list(first["by_mcs"])
        lines += ["| pages | auto mcs | " + " | ".join(f"mcs={m.replace('|half', ' ms=mcs//2').replace('|one', ' ms=1')}" for m in mcs_list) + " |",
                  "|---|---|" + "---|" * len(mcs_list)]
        for frac, r in sz.items():
            lines.append(f"| {r['n']} | {r['auto_mcs']} | " + " | ".join(f"{r['by_mcs'][m][0]:.3f} / {r['by_mcs'][m][2]:.0%}" for m in mcs_list) + " |")
    if (out / "family.json").exists():
        fam = json.loads((out / "family.json").read_text())
        lines += ["", "### The average-max axis: pooling family (squash 299), clean and with specks and a stain", "",
                  "| pooling | kNN@1 | kNN@5 | kNN@10 | kNN@5 other docs | kNN@5 blemished | kNN@5 other docs blemished |", "|---|---|---|---|---|---|---|"]
        for name, r in sorted(fam.items(), key=lambda kv: -kv[1]["blemished"]["knn5"]):
            c, b = r["clean"], r["blemished"]
            lines.append(f"| {name} | {c['knn1']:.3f} | {c['knn5']:.3f} | {c['knn10']:.3f} | {c['knn5_other']:.3f} | {b['knn5']:.3f} | {b['knn5_other']:.3f} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=HERE / "out" / "dev_corpus")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "feature_study")
    ap.add_argument("--stage", choices=["all", "embed", "knn", "family", "cluster", "sizes", "report"], default="all")
    ap.add_argument("--weights", default="bundled", help="weights for the pretrained runs: bundled | imagenet | auto | PATH")
    ap.add_argument("--variants", nargs="*", default=None, help="embed only these input variants (merged into vectors.npz)")
    ap.add_argument("--cluster-keys", nargs="*", default=None, help="vector sets for the clustering grid (default: baseline + best kNN)")
    ap.add_argument("--size-key", default=None, help="vector set for the size stage (default: docsort's default pooling)")
    ap.add_argument("--size-umap", default=None, help="'nn,nc,md' for the size stage (default: best of the grid)")
    a = ap.parse_args()
    global WEIGHTS
    WEIGHTS = a.weights
    a.out.mkdir(parents=True, exist_ok=True)
    rows = load_labels(a.corpus)
    t0 = time.perf_counter()
    if a.stage in ("all", "embed"):
        stage_embed(rows, a.out, a.variants)
    if a.stage in ("all", "knn"):
        stage_knn(rows, a.out)
    if a.stage in ("all", "family"):
        stage_family(rows, a.out)
    if a.stage in ("all", "cluster"):
        knn = json.loads((a.out / "knn.json").read_text())
        plain = [k for k in knn if "+" not in k and not k.startswith(("random", "pixels"))]
        best = max(plain, key=lambda k: knn[k]["knn5"] + knn[k]["knn5_other"])
        keys = a.cluster_keys or list(dict.fromkeys(["|".join(BASELINE), best, DEFAULT_KEY]))
        stage_cluster(rows, a.out, keys)
    if a.stage in ("all", "sizes"):
        grid = json.loads((a.out / "cluster.json").read_text())
        key = a.size_key or DEFAULT_KEY
        if a.size_umap:
            nn, nc, md = a.size_umap.split(",")
            nn, nc, md = int(nn), int(nc), float(md)
        else:
            top = max(grid[key].items(), key=lambda kv: kv[1]["ari"])[0]
            nn, nc, md = (float(x.split("=")[1]) for x in top.split()[:3])
            nn, nc = int(nn), int(nc)
        stage_sizes(rows, a.out, key, nn, nc, md)
    print(report(a.out))
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
