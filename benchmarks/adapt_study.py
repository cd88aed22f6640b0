"""Adapting the network to the pile (issue 14, item 1): does self-supervised fine-tuning help?

Fine-tunes the ``mixed1``-truncated InceptionV3 (bundled weights) plus a projection head
(topk pooling -> Dense 128 -> ReLU -> Dense 64) with SimCLR's NT-Xent loss (Chen, Kornblith,
Norouzi & Hinton 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
arXiv:2002.05709, eq. 1) on two views per page. A view is the page restyled by
:func:`docsort.core.styles.restyle` (a style drawn from ``DEFAULT_STYLES``), then rotated by -2..2
degrees, scaled by 0.92..1.08 and cropped/padded so that at least ~90 % of the page stays in view
(the layout is kept). BatchNorm statistics stay frozen (inference mode), as usual when
fine-tuning with small batches. Only ``--layers`` are trained.

Then embeds every page (as is) with the adapted trunk, ``topk`` pooled and L2-normalised as docsort
does, and compares with the frozen vectors and with frozen + the invariance projection of issue 13
(fitted on the same corpus, 5 renderings a page):

* kNN@5: leave-one-out cosine kNN precision against the labels;
* cross-style kNN@5: the same, with neighbours of the query's own scan style skipped
  (``labels.csv``'s ``style`` column; ``docsort.queries.evaluate.knn_precision(groups=style)``);
* ``per_type``: the cross-style kNN@5 (plain kNN@5 without styles) of each document type's pages.

Usage::

    python benchmarks/adapt_study.py --docs DIR [--epochs 3] [--layers mixed1] [--size 299] \
        [--batch 16] [--lr 3e-4] [--temperature 0.1] [--seed 0] [--minutes 20] [--precision bfloat16]

Prints one JSON object (timings, load average); the figures go into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("DOCSORT_OFFLINE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def load_corpus(docs: Path, render):
    """Pages of the labelled folder: (images, categories, styles)."""
    from docsort.core.pages import discover_files, iter_pages

    rows = {}
    with open(docs / "labels.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            rows[(r["file"], int(r["page"]))] = (r["category"], r.get("style") or "")
    files = [f for f in discover_files([docs]) if not isinstance(f, Exception)]
    images, cats, styles = [], [], []
    for src in sorted(files, key=lambda s: str(s.path)):
        rel = str(Path(src.path).resolve().relative_to(docs.resolve()))
        for page in iter_pages(src, render):
            key = (rel, page.page_no)
            if key not in rows:
                continue
            images.append(page.image.convert("L"))
            cats.append(rows[key][0])
            styles.append(rows[key][1])
    return images, np.array(cats), np.array(styles)


def augment(image, size, rng):
    """One view: a scan style, a small rotation/scale, a crop that keeps the layout; uint8 (H, W, 1)."""
    from PIL import Image

    from docsort.core.pages import to_network_input
    from docsort.core.styles import DEFAULT_STYLES, restyle

    im = restyle(image, DEFAULT_STYLES[int(rng.integers(len(DEFAULT_STYLES)))], rng)
    im = im.rotate(float(rng.uniform(-2, 2)), resample=Image.Resampling.BILINEAR, fillcolor=255)
    w, h = im.size
    s = float(rng.uniform(0.92, 1.08))
    cw, ch = int(round(w / s)), int(round(h / s))  # the view's box in page pixels, same aspect
    if cw <= w and ch <= h:  # zoom in: crop, at most ~8 % of each side lost
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x0, y0, x0 + cw, y0 + ch))
    else:  # zoom out: the whole page on a white margin
        canvas = Image.new("L", (max(cw, w), max(ch, h)), 255)
        canvas.paste(im.convert("L"), (int(rng.integers(0, canvas.width - w + 1)), int(rng.integers(0, canvas.height - h + 1))))
        im = canvas
    return to_network_input(im, size)


def main() -> None:
    import keras
    import tensorflow as tf

    from docsort.queries.evaluate import knn_precision
    from docsort.core.features import _topk, build_inception_backbone, preprocess
    from docsort.core.invariance import fit_projection
    from docsort.core.pages import to_network_input
    from docsort.config.settings import load_pipeline
    from docsort.core.styles import DEFAULT_STYLES, page_rng, render_styles
    from docsort.core.weights import resolve_weights

    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--layers", default="mixed1", choices=["mixed1", "mixed0,mixed1", "all"])
    ap.add_argument("--size", type=int, default=299)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                    help="training precision (docsort.core.adapt.training_twin); embedding stays float32")
    ap.add_argument("--no-invariance", action="store_true")
    ap.add_argument("--adapted-invariance", action="store_true",
                    help="also fit the invariance projection on the adapted network's renderings (what docsort cluster does next)")
    ap.add_argument("--ari", type=int, default=0, metavar="N",
                    help="also ARI of UMAP + HDBSCAN (pipeline defaults) over N UMAP seeds (42, 43, ...) per vector kind")
    args = ap.parse_args()
    docs = Path(args.docs)
    size = (args.size, args.size)
    out: dict = {"args": vars(args), "loadavg_start": open("/proc/loadavg").read().split()[:3]}

    settings = load_pipeline("default").with_overrides(weights="bundled")
    images, cats, styles = load_corpus(docs, settings.render)
    n = len(images)
    out["pages"] = n
    weights = resolve_weights("bundled", None, announce=False)
    scheme = weights.preprocessing
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    trunk = build_inception_backbone(weights, "mixed1", size, args.seed)

    def embed_fn(model):
        @tf.function(input_signature=[tf.TensorSpec((None, *size, 1), tf.uint8)])
        def f(x):
            v = _topk(model(preprocess(x, scheme), training=False))
            return v / tf.maximum(tf.norm(v, axis=-1, keepdims=True), 1e-12)

        def run(arr):
            return np.concatenate([f(tf.constant(arr[i:i + 32])).numpy() for i in range(0, len(arr), 32)])

        return run

    as_is = np.stack([to_network_input(im, size) for im in images])

    def measure(vecs):
        k, per = knn_precision(vecs, cats, [5])
        res = {"knn5": round(float(k[5]), 3)}
        if (styles != "").all():
            xk, per = knn_precision(vecs, cats, [5], groups=styles)
            res["cross_style_knn5"] = round(float(xk[5]), 3)
        # per document type (the "no worse on any type by more than 0.05"): cross-style where there are styles
        res["per_type"] = {str(t): round(float(per[5][cats == t].mean()), 3) for t in np.unique(cats)}
        return res

    kinds: dict = {}
    t = time.perf_counter()
    frozen = embed_fn(trunk)(as_is)
    kinds["frozen"] = frozen
    out["embed_s_per_1000"] = 1000 * (time.perf_counter() - t) / n
    out["frozen"] = measure(frozen)
    if not args.no_invariance:
        t = time.perf_counter()
        f = embed_fn(trunk)
        rend = [render_styles(im, DEFAULT_STYLES, page_rng(0, i)) for i, im in enumerate(images)]
        per_style = [f(np.stack([to_network_input(r[j], size) for r in rend])) for j in range(len(DEFAULT_STYLES))]
        views = np.stack(per_style, axis=1)
        proj = fit_projection(views, dims=32)
        out["frozen_invariance32"] = measure(proj.transform(frozen))
        kinds["frozen_invariance32"] = proj.transform(frozen)
        out["invariance_fit_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(out), flush=True)

    # --- trainable layers -------------------------------------------------------------
    from docsort.core.adapt import training_twin

    # the head first: cloning the trunk for bfloat16 draws from the seeded initialisers too
    head = keras.Sequential([keras.layers.Dense(128, activation="relu"), keras.layers.Dense(64)], name="head")
    head.build((None, 288))
    net = training_twin(trunk, args.precision)
    names = [layer.name for layer in net.layers]
    start = {"mixed1": names.index("mixed0") + 1, "mixed0,mixed1": names.index("max_pooling2d_1") + 1, "all": 0}[args.layers]
    for i, layer in enumerate(net.layers):
        layer.trainable = i >= start
    variables = net.trainable_variables + head.trainable_variables
    out["trainable_params"] = int(sum(np.prod(v.shape) for v in variables))
    opt = keras.optimizers.Adam(args.lr)
    opt.build(variables)
    tau = args.temperature

    @tf.function(input_signature=[tf.TensorSpec((None, *size, 1), tf.uint8)] * 2)
    def step(a, b):
        x = tf.concat([a, b], 0)
        with tf.GradientTape() as tape:
            z = head(_topk(tf.cast(net(preprocess(x, scheme), training=False), tf.float32)))
            z = tf.math.l2_normalize(z, axis=-1)
            m = tf.shape(a)[0]
            sim = tf.matmul(z, z, transpose_b=True) / tau
            sim = sim - 1e9 * tf.eye(2 * m)
            target = tf.concat([tf.range(m, 2 * m), tf.range(0, m)], 0)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target, sim))
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    aug_s = 0.0
    seen = 0
    losses = []
    deadline = t0 + 60 * args.minutes
    for epoch in range(args.epochs):
        order = rng.permutation(n)
        ep_losses = []
        for s in range(0, n - 1, args.batch):
            idx = order[s:s + args.batch]
            if len(idx) < 2:
                continue
            ta = time.perf_counter()
            va = np.stack([augment(images[i], size, rng) for i in idx])
            vb = np.stack([augment(images[i], size, rng) for i in idx])
            aug_s += time.perf_counter() - ta
            ep_losses.append(float(step(tf.constant(va), tf.constant(vb))))
            seen += len(idx)
            if time.perf_counter() > deadline:
                break
        losses.append(round(float(np.mean(ep_losses)), 4))
        print(json.dumps({"epoch": epoch + 1, "loss": losses[-1], "s": round(time.perf_counter() - t0, 1),
                          "load": open("/proc/loadavg").read().split()[:3]}), flush=True)
        if time.perf_counter() > deadline:
            break
    train_s = time.perf_counter() - t0
    if net is not trunk:
        trunk.set_weights(net.get_weights())
    out["train"] = {"epochs_run": len(losses), "losses": losses, "seconds": round(train_s, 1),
                    "augment_s": round(aug_s, 1), "pages_seen": seen,
                    "minutes_per_1000_pages_per_epoch": round(train_s / 60 * 1000 / max(seen, 1), 2)}
    adapted = embed_fn(trunk)(as_is)
    out["adapted"] = measure(adapted)
    kinds["adapted"] = adapted
    if args.adapted_invariance:
        f = embed_fn(trunk)
        rend = [render_styles(im, DEFAULT_STYLES, page_rng(0, i)) for i, im in enumerate(images)]
        views = np.stack([f(np.stack([to_network_input(r[j], size) for r in rend])) for j in range(len(DEFAULT_STYLES))], axis=1)
        kinds["adapted_invariance32"] = fit_projection(views, dims=32).transform(adapted)
        out["adapted_invariance32"] = measure(kinds["adapted_invariance32"])
    if args.ari:
        from sklearn.metrics import adjusted_rand_score

        from docsort.core.clustering import cluster_vectors

        out["ari"] = {}
        for name, vecs in kinds.items():
            aris = []
            for k in range(args.ari):
                um = settings.umap.model_copy(update={"random_state": 42 + k})
                aris.append(round(float(adjusted_rand_score(cats, cluster_vectors(vecs, um, settings.hdbscan).labels)), 3))
            out["ari"][name] = {"mean": round(float(np.mean(aris)), 3), "seeds": aris}
    out["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
