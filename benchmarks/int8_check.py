"""Would OpenVINO int8 (NNCF post-training quantisation) keep quality? An experiment, not a docsort option.

    python benchmarks/int8_check.py sample_docs/labels.csv benchmarks/out/dev_corpus/labels.csv

Converts the default extractor's forward function as docsort does (``docsort.core.openvino_engine``),
quantises it with ``nncf.quantize`` (default preset, calibrated on a fixed, seeded sample of 96
rendered pages of the first corpus: 3 batches of 32, ``subset_size=3`` as NNCF counts batches), compiles it for the CPU and compares it
with TensorFlow float32 on every page of each corpus: per-page cosine, probe cosine, kNN@5, and
model-only img/s against OpenVINO bfloat16 in the same process. Needs ``pip install nncf``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("DOCSORT_OFFLINE", "1")

import numpy as np  # noqa: E402


def _pages(folder: Path):
    from docsort.core.pages import discover_files, iter_pages, to_network_input
    from docsort.config.settings import RenderSettings

    keys, imgs = [], []
    for f in discover_files([folder]):
        if hasattr(f, "format"):
            for p in iter_pages(f, RenderSettings()):
                keys.append((str(f.path.resolve()), p.page_no))
                imgs.append(to_network_input(p.image, (299, 299)))
    return keys, np.stack(imgs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels", type=Path, nargs="+")
    a = ap.parse_args()
    import nncf
    import openvino as ov
    import tensorflow as tf

    from docsort.queries.evaluate import knn_precision, read_labels
    from docsort.core.features import probe_pages
    from docsort.store.manifest import make_extractor
    from docsort.config.settings import load_pipeline

    s = load_pipeline("default").with_overrides(weights="bundled")
    tf32 = make_extractor(s.model_copy(update={"features": s.features.model_copy(update={"engine": "tensorflow"})}), announce=False)
    bf16 = make_extractor(s, announce=False)
    b = s.features.batch_size
    fn = tf.function(tf32._keras_fn, input_signature=[tf.TensorSpec((b, 299, 299, 1), tf.uint8)])
    model = ov.convert_model(fn)
    corpora = [(lab, *_pages(lab.parent)) for lab in a.labels]
    calib = corpora[0][2][np.random.default_rng(0).permutation(len(corpora[0][2]))]
    calib = np.concatenate([calib] * (96 // len(calib) + 1))[:96]
    t = time.perf_counter()
    batches = [calib[i : i + b] for i in range(0, 96, b)]
    q = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    print(f"quantised in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    compiled = ov.Core().compile_model(q, "CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    req = compiled.create_infer_request()

    def int8(x):
        out = np.empty((len(x), 288), np.float32)
        for i in range(0, len(x), b):
            chunk = x[i : i + b]
            pad = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]), np.uint8)])
            out[i : i + len(chunk)] = req.infer({0: pad})[compiled.outputs[0]][: len(chunk)]
        return out

    print(f"load average {open('/proc/loadavg').read().split()[:3]}")
    print("| corpus | engine | cosine to TF f32 min / mean | probe cosine min | kNN@5 | Δ kNN@5 |\n|---|---|---|---|---|---|")
    pr = tf32.probe_vectors()
    for lab, keys, x in corpora:
        labels = {(str(Path(r.path).resolve()), r.page): r.category for r in read_labels(lab)}
        keep = [i for i, k in enumerate(keys) if k in labels]
        cats = np.array([labels[keys[i]] for i in keep])
        ref = tf32.embed(x[keep])
        base = knn_precision(ref, cats, [5])[0][5]
        for name, f, probe in (("openvino bfloat16", bf16.embed, bf16.probe_vectors()), ("openvino int8 (NNCF)", int8, int8(probe_pages()))):
            v = f(x[keep])
            cos = (v * ref).sum(axis=1)
            k5 = knn_precision(v, cats, [5])[0][5]
            print(f"| {lab.parent.name} | {name} | {cos.min():.6f} / {cos.mean():.6f} | {(probe * pr).sum(axis=1).min():.6f} | {k5:.4f} | {k5 - base:+.4f} |")
    x = np.concatenate([corpora[0][2]] * 8)[:256]
    for name, f in (("openvino bfloat16", bf16.embed), ("openvino int8 (NNCF)", int8), ("tensorflow float32", tf32.embed)):
        f(x[:32])
        t = time.perf_counter()
        f(x)
        print(f"| model only | {name} | {256 / (time.perf_counter() - t):.1f} img/s |")


if __name__ == "__main__":
    main()
