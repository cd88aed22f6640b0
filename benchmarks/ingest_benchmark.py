"""Ingest benchmark: docsort vs the seed recipe on the same corpus of real scans, in one run.

    python benchmarks/ingest_benchmark.py --pages 2000            # both, default corpus
    python benchmarks/ingest_benchmark.py --pages 20000 --skip-seed

The corpus (``benchmarks/corpus.py``) is N pages of sample_docs' real scans (PDF, TIFF, PNG, JPEG
mixed), each file a unique copy. Each contender runs in its own fresh process so its peak RSS is
its own:

* **docsort**: ``docsort.pipeline.ingest`` with the default pipeline and the bundled weights
  (rasterization in worker processes overlapped with batched ``tf.function`` inference, batched
  SQLite writes, FAISS index). Per-stage times come from ``IngestReport.stage_seconds``.
* **seed recipe**: what a competent user scripts from the newsletter in an afternoon:
  ``pdf2image.convert_from_path`` with its defaults (200 dpi), Pillow for image files, resize to
  299x299, batches of 32 through Keras ``model.predict`` on InceptionV3 up to ``mixed1`` (same
  bundled weights), global average pooling, vectors kept in a list.

Writes ``OUT/ingest-<pages>.json`` and ``OUT/ingest-<pages>.md`` and prints the Markdown table
with the ratio docsort/seed. Not a test: run it by hand on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _tree_rss_mb(pid: int) -> float:
    """Current RSS of a process and all its descendants, MB (Linux /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


class _TreeRssSampler:
    """Samples the RSS of this process plus its worker processes every 0.2 s; keeps the peak.

    ``ru_maxrss`` cannot measure the workers: a ``spawn``-ed worker is forked from this process
    before it execs, so its ``ru_maxrss`` starts at the parent's size (TensorFlow loaded).
    """

    def __init__(self) -> None:
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, _tree_rss_mb(os.getpid()))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _peak_rss_mb(tree_peak: float | None = None) -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"peak_rss_mb": round(own, 1)}
    if tree_peak is not None:
        out["peak_rss_with_workers_mb"] = round(tree_peak, 1)
    return out


def run_docsort(corpus: str, collection: str, workers: int) -> dict:
    """Ingest ``corpus`` into a fresh collection; returns timings and peak RSS (this process)."""
    from docsort.pipeline import ingest
    from docsort.settings import load_pipeline
    from docsort.storage import Collection

    settings = load_pipeline("default").with_overrides(weights="bundled")
    if workers:
        settings = settings.model_copy(update={"render": settings.render.model_copy(update={"workers": workers})})
    shutil.rmtree(collection, ignore_errors=True)
    t0 = time.perf_counter()
    with _TreeRssSampler() as sampler, Collection(collection, create=True) as col:
        report = ingest(col, [corpus], settings, progress=False, log=lambda m: None)
    seconds = time.perf_counter() - t0
    return {
        "pages": report.pages_added,
        "documents": report.documents_added,
        "failures": len(report.failures),
        "seconds": round(seconds, 2),
        "pages_per_s": round(report.pages_added / seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in report.stage_seconds.items()},
        "workers": settings.render.workers or os.cpu_count(),
        **_peak_rss_mb(sampler.peak),
    }


def run_seed(corpus: str) -> dict:
    """The seed recipe over ``corpus``; returns timings per stage and peak RSS."""
    import numpy as np
    from pdf2image import convert_from_path
    from PIL import Image

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from docsort.features import build_inception_backbone
    from docsort.weights import resolve_weights

    t0 = time.perf_counter()
    model = build_inception_backbone(resolve_weights("bundled", announce=False), "mixed1", (299, 299))
    stages = {"model_build": time.perf_counter() - t0, "rasterize": 0.0, "resize": 0.0, "model": 0.0, "pooling": 0.0}
    vectors, batch = [], []

    def flush():
        if not batch:
            return
        t = time.perf_counter()
        fmap = model.predict(np.stack(batch) / 255.0, batch_size=32, verbose=0)
        stages["model"] += time.perf_counter() - t
        t = time.perf_counter()
        vectors.extend(fmap.mean(axis=(1, 2)))
        stages["pooling"] += time.perf_counter() - t
        batch.clear()

    pages = 0
    for path in sorted(Path(corpus).iterdir()):
        if path.name.startswith("."):
            continue
        t = time.perf_counter()
        if path.suffix.lower() == ".pdf":
            images = convert_from_path(str(path))  # defaults: 200 dpi
        else:
            im = Image.open(path)
            images = []
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                images.append(im.copy())
        stages["rasterize"] += time.perf_counter() - t
        for img in images:
            t = time.perf_counter()
            batch.append(np.asarray(img.convert("RGB").resize((299, 299)), dtype=np.float32))
            stages["resize"] += time.perf_counter() - t
            pages += 1
            if len(batch) == 32:
                flush()
    flush()
    seconds = time.perf_counter() - t0
    return {
        "pages": pages,
        "seconds": round(seconds, 2),
        "pages_per_s": round(pages / seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
        **_peak_rss_mb(),
    }


def _in_fresh_process(func: str, *args) -> dict:
    code = (
        "import json, sys; sys.path.insert(0, %r); import ingest_benchmark as b; "
        "print('RESULT' + json.dumps(b.%s(*%r)))" % (str(HERE), func, list(args))
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "DOCSORT_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{func} failed:\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=2000)
    ap.add_argument("--corpus", type=Path, help="corpus folder (default: benchmarks/out/corpus-<pages>)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--workers", type=int, default=0, help="docsort rasterization workers (0 = cores)")
    ap.add_argument("--skip-seed", action="store_true")
    a = ap.parse_args()

    from corpus import build_corpus

    corpus = a.corpus or a.out / f"corpus-{a.pages}"
    files, pages = build_corpus(corpus, a.pages)
    print(f"corpus: {corpus} ({files} files, {pages} pages)", file=sys.stderr)
    results = {
        "corpus": {"path": str(corpus), "files": files, "pages": pages},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["docsort"] = _in_fresh_process("run_docsort", str(corpus), str(Path(tmp) / "col"), a.workers)
    if not a.skip_seed:
        results["seed"] = _in_fresh_process("run_seed", str(corpus))
        results["ratio_docsort_over_seed"] = round(results["docsort"]["pages_per_s"] / results["seed"]["pages_per_s"], 2)

    d = results["docsort"]
    rows = [
        "| | pages | seconds | pages/s | peak RSS MB (main / main + workers) | stages (s) |",
        "|---|---|---|---|---|---|",
        f"| docsort | {d['pages']} | {d['seconds']} | {d['pages_per_s']} | {d['peak_rss_mb']} / {d['peak_rss_with_workers_mb']} | "
        + ", ".join(f"{k} {v}" for k, v in d["stage_seconds"].items()) + " |",
    ]
    if "seed" in results:
        s = results["seed"]
        rows.append(
            f"| seed recipe | {s['pages']} | {s['seconds']} | {s['pages_per_s']} | {s['peak_rss_mb']} / - | "
            + ", ".join(f"{k} {v}" for k, v in s["stage_seconds"].items()) + " |"
        )
        rows.append(f"\ndocsort / seed: **{results['ratio_docsort_over_seed']}x**")
    table = "\n".join(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"ingest-{pages}.json").write_text(json.dumps(results, indent=2) + "\n")
    (a.out / f"ingest-{pages}.md").write_text(f"Ingest benchmark, {pages} pages, {results['date']}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
