"""The feature extractor on each Keras 3 backend: same vectors, and model-only speed (issue 8).

    python benchmarks/backend_check.py                        # tensorflow and jax, CPU
    python benchmarks/backend_check.py --backends jax --batch 256 --repeat 20   # e.g. on a GPU box

docsort's :class:`~docsort.core.features.FeatureExtractor` is backend-neutral Keras 3 (TensorFlow by
default; the GPU machines this project is sometimes lent have JAX and PyTorch but no TensorFlow).
For each backend, in a fresh process with ``KERAS_BACKEND`` set, this renders the pages of
``sample_docs/`` with docsort's pages stage, embeds them with the bundled weights and the default
pipeline, and times the compiled forward pass alone on a full batch (after one warm-up call).
Then it compares every backend's vectors with the first one's: max absolute difference and the
lowest cosine similarity. Writes ``OUT/backend_check.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _worker(backend: str, out: Path, batch: int, repeat: int, precision: str) -> None:
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("DOCSORT_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import keras

    from docsort.core.pages import discover_files, iter_pages, to_network_input
    from docsort.store.manifest import make_extractor
    from docsort.config.settings import load_pipeline

    settings = load_pipeline("default").with_overrides(weights="bundled", batch_size=batch, precision=precision)
    extractor = make_extractor(settings, announce=False)
    pixels = []
    for src in discover_files([ROOT / "sample_docs"]):
        if hasattr(src, "format"):
            pixels += [to_network_input(p.image, extractor.input_size) for p in iter_pages(src, settings.render)]
    x = np.stack(pixels)
    vectors = extractor.embed(x)
    full = np.resize(x, (batch, *x.shape[1:]))  # one full batch of real pages
    extractor.embed(full)  # warm-up (compilation)
    t = time.perf_counter()
    for _ in range(repeat):
        extractor.embed(full)
    seconds = time.perf_counter() - t
    np.save(out / f"vectors_{backend}.npy", vectors)
    (out / f"timing_{backend}.json").write_text(json.dumps({
        "backend": backend, "keras": keras.__version__, "pages": len(x), "batch": batch, "repeat": repeat,
        "precision": extractor.description.get("dtype_policy"), "model_img_per_s": batch * repeat / seconds,
        "device": extractor.description.get("device", "cpu" if not _gpu() else "gpu"),
    }))


def _gpu() -> bool:
    from docsort.core.features import _gpu_visible

    return _gpu_visible()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--precision", default="float32", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/backend_check")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        _worker(args.worker, args.out, args.batch, args.repeat, args.precision)
        return 0
    for backend in args.backends:
        print(f"{backend}...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, __file__, "--worker", backend, "--batch", str(args.batch), "--repeat", str(args.repeat),
                        "--precision", args.precision, "--out", str(args.out)], check=True)
    ref = np.load(args.out / f"vectors_{args.backends[0]}.npy")
    rows = []
    for backend in args.backends:
        v = np.load(args.out / f"vectors_{backend}.npy")
        timing = json.loads((args.out / f"timing_{backend}.json").read_text())
        rows.append({**timing, "max_abs_diff_vs_" + args.backends[0]: float(np.abs(v - ref).max()),
                     "min_cosine_vs_" + args.backends[0]: float((v * ref).sum(axis=1).min())})
    (args.out / "backend_check.json").write_text(json.dumps(rows, indent=2))
    lines = [f"| backend | keras | precision | pages | model img/s (batch {args.batch}) | max abs diff vs {args.backends[0]} | min cosine |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['keras']} | {r['precision']} | {r['pages']} | {r['model_img_per_s']:.1f} | "
                     f"{r['max_abs_diff_vs_' + args.backends[0]]:.2e} | {r['min_cosine_vs_' + args.backends[0]]:.6f} |")
    (args.out / "backend_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
