"""Ingest benchmark: docsort vs the seed recipe on the same corpus of real scans, in one run.

    python benchmarks/ingest_benchmark.py --pages 2000            # both, default corpus
    python benchmarks/ingest_benchmark.py --pages 20000 --skip-seed
    python benchmarks/ingest_benchmark.py --pages 855 --engines openvino:bfloat16,openvino:float32,tensorflow:float32

The corpus (``benchmarks/corpus.py``) is N pages of sample_docs' real scans (PDF, TIFF, PNG, JPEG
mixed), each file a unique copy. Each contender runs in its own fresh process so its peak RSS is
its own:

* **docsort**: ``docsort.jobs.ingest.ingest`` with the default pipeline and the bundled weights
  (rasterization in worker processes overlapped with batched inference, batched SQLite writes,
  FAISS index), once per ``--engines`` entry (``engine:precision``, e.g. ``openvino:bfloat16``,
  ``tensorflow:float32``) and ``--threads`` / ``--workers`` setting. Per-stage times come from
  ``IngestReport.stage_seconds``; ``model img/s`` is pages / the ``model`` stage's seconds (the
  forward pass as it ran beside the rendering workers); CPU utilisation is the user + system
  seconds of the process and its workers over wall seconds x cores.
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


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_docsort(corpus: str, collection: str, workers: int, engine: str = "auto", precision: str = "auto", threads: int = 0) -> dict:
    """Ingest ``corpus`` into a fresh collection; returns timings, CPU use and peak RSS."""
    from docsort.jobs.ingest import ingest
    from docsort.config.settings import load_pipeline
    from docsort.store.storage import Collection

    settings = load_pipeline("default").with_overrides(weights="bundled")
    features = settings.features.model_copy(update={"engine": engine, "precision": precision, "threads": threads})
    settings = settings.model_copy(update={"features": features})
    if workers:
        settings = settings.model_copy(update={"render": settings.render.model_copy(update={"workers": workers})})
    shutil.rmtree(collection, ignore_errors=True)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    with _TreeRssSampler() as sampler, Collection(collection, create=True) as col:
        report = ingest(col, [corpus], settings, progress=False, log=lambda m: None)
        used = col.manifest()["features"]["engine"]
    seconds = time.perf_counter() - t0
    model_s = report.stage_seconds.get("model", 0.0)
    return {
        "engine": f"{used['name']} {used['precision']}",
        "threads": threads,
        "pages": report.pages_added,
        "documents": report.documents_added,
        "failures": len(report.failures),
        "seconds": round(seconds, 2),
        "pages_per_s": round(report.pages_added / seconds, 2),
        "model_img_per_s": round(report.pages_added / model_s, 1) if model_s else None,
        "cpu_utilisation": round((_cpu_seconds() - c0) / (seconds * (os.cpu_count() or 1)), 2),
        "stage_seconds": {k: round(v, 2) for k, v in report.stage_seconds.items()},
        "workers": settings.render.workers or os.cpu_count(),
        **_peak_rss_mb(sampler.peak),
    }


def run_model_only(engine: str, precision: str, threads: int = 0, n: int = 256) -> dict:
    """img/s of the forward pass alone (``FeatureExtractor.embed``, batch 32) on real sample_docs pages."""
    import numpy as np

    from docsort.core.pages import discover_files, iter_pages, to_network_input
    from docsort.store.manifest import make_extractor
    from docsort.config.settings import RenderSettings, load_pipeline

    settings = load_pipeline("default").with_overrides(weights="bundled")
    settings = settings.model_copy(update={"features": settings.features.model_copy(
        update={"engine": engine, "precision": precision, "threads": threads})})
    ex = make_extractor(settings, announce=False)
    imgs = [to_network_input(p.image, (299, 299)) for f in discover_files([HERE.parent / "sample_docs"])
            if hasattr(f, "format") for p in iter_pages(f, RenderSettings())]
    pages = np.stack((imgs * (n // len(imgs) + 1))[:n])
    ex.embed(pages[:32])
    t = time.perf_counter()
    ex.embed(pages)
    eng = ex.description["engine"]
    return {"engine": f"{eng['name']} {eng['precision']}", "threads": threads,
            "img_per_s": round(n / (time.perf_counter() - t), 1), **_peak_rss_mb()}


def run_seed(corpus: str) -> dict:
    """The seed recipe over ``corpus``; returns timings per stage and peak RSS."""
    import numpy as np
    from pdf2image import convert_from_path
    from PIL import Image

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from docsort.core.features import build_inception_backbone
    from docsort.core.weights import resolve_weights

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
    ap.add_argument("--engines", default="auto:auto", help="comma-separated engine:precision, e.g. openvino:bfloat16,tensorflow:float32")
    ap.add_argument("--threads", default="0", help="comma-separated OpenVINO thread counts to try (0 = one per core)")
    ap.add_argument("--model-only", action="store_true", help="also measure the forward pass alone per engine")
    a = ap.parse_args()

    from corpus import build_corpus

    corpus = a.corpus or a.out / f"corpus-{a.pages}"
    files, pages = build_corpus(corpus, a.pages)
    print(f"corpus: {corpus} ({files} files, {pages} pages)", file=sys.stderr)
    results = {
        "corpus": {"path": str(corpus), "files": files, "pages": pages},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }
    configs = [(e.split(":")[0], e.split(":")[1] if ":" in e else "auto", int(t))
               for e in a.engines.split(",") for t in a.threads.split(",")]
    if a.model_only:
        results["model_only"] = [_in_fresh_process("run_model_only", e, p, t) for e, p, t in configs]
    results["docsort"] = []
    with tempfile.TemporaryDirectory() as tmp:
        for e, p, t in configs:
            results["docsort"].append(_in_fresh_process("run_docsort", str(corpus), str(Path(tmp) / "col"), a.workers, e, p, t))
    if not a.skip_seed:
        results["seed"] = _in_fresh_process("run_seed", str(corpus))
        for d in results["docsort"]:
            d["ratio_over_seed"] = round(d["pages_per_s"] / results["seed"]["pages_per_s"], 2)
    results["loadavg_end"] = open("/proc/loadavg").read().split()[:3]

    rows = [f"load average {' '.join(results['loadavg_start'])} at start, {' '.join(results['loadavg_end'])} at end\n"]
    if a.model_only:
        rows += ["| model only (batch 32, 256 real pages) | threads | img/s | peak RSS MB |", "|---|---|---|---|"]
        rows += [f"| {m['engine']} | {m['threads'] or 'default'} | {m['img_per_s']} | {m['peak_rss_mb']} |" for m in results["model_only"]]
        rows.append("")
    rows += [
        "| | engine | threads | workers | pages | seconds | pages/s | x seed | model img/s | CPU use | peak RSS MB (main / main + workers) | stages (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in results["docsort"]:
        rows.append(
            f"| docsort | {d['engine']} | {d['threads'] or 'default'} | {d['workers']} | {d['pages']} | {d['seconds']} | {d['pages_per_s']} | "
            f"{d.get('ratio_over_seed', '-')} | {d['model_img_per_s']} | {d['cpu_utilisation']:.0%} | "
            f"{d['peak_rss_mb']} / {d['peak_rss_with_workers_mb']} | " + ", ".join(f"{k} {v}" for k, v in d["stage_seconds"].items()) + " |"
        )
    if "seed" in results:
        s = results["seed"]
        rows.append(
            f"| seed recipe | TF model.predict | - | 1 | {s['pages']} | {s['seconds']} | {s['pages_per_s']} | 1 | - | - | {s['peak_rss_mb']} / - | "
            + ", ".join(f"{k} {v}" for k, v in s["stage_seconds"].items()) + " |"
        )
    table = "\n".join(rows)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"ingest-{pages}.json").write_text(json.dumps(results, indent=2) + "\n")
    (a.out / f"ingest-{pages}.md").write_text(f"Ingest benchmark, {pages} pages, {results['date']}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
