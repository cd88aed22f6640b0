"""OCR benchmark (issue 6): Tesseract speed, confidence and words, and the resolution that reads best.

    python benchmarks/ocr_benchmark.py                      # all four parts, ~25 min on 2 cores
    python benchmarks/ocr_benchmark.py --parts dpi --dev-corpus benchmarks/out/dev_corpus

Four parts, each on real pages:

* **throughput**: :func:`docsort.jobs.ocr.backfill` exactly as ``docsort ocr`` runs it (default OCR
  settings), with 1 and with 2 worker processes, on a fresh collection of ``sample_docs/`` (41
  pages) and of a subset of the development corpus (every ``--dev-every``-th file of
  ``benchmarks/out/dev_corpus``, see ``benchmarks/dev_corpus.py``; its ``real_scans/`` are
  sample_docs again and are left out). Pages/s is pages over the back-fill's wall time (worker
  start-up included); confidence is the word-weighted mean of Tesseract's word confidences.
* **dpi**: every PDF page of the development corpus (its synthetic kinds: pages scanned at 100-150
  dpi, stored as JPEG/CCITT images in the PDF; and sample_docs' two PDFs under ``real_scans/``)
  rendered at 150, 200 and 300 dpi (:func:`docsort.core.pages.iter_ocr_pages`) and OCR'd.
* **upscale**: image pages (PNG, JPEG, TIFF) of the development corpus's text kinds, OCR'd at their
  own resolution and upscaled 2x (Lanczos), every ``--upscale-every``-th page: does reading images
  "at their own resolution" lose anything?
* **exact**: the development corpus's PDFs all hold 141-150 dpi scans (``pdfimages -list``), so
  the dpi part cannot tell how a 300 dpi scan or a born-digital PDF reads. Here
  ``--exact-pages`` pages of Texinfo manuals shipped as PDFs on Debian (R manuals from
  ``r-doc-pdf``, the GNU coding standards from ``gnu-standards``; 10 pt text, 9 pt examples) are
  read three ways: the born-digital PDF itself (vector text), and "scans" of it: the page
  rendered at 150 or at 300 dpi, mildly blurred and noised (seeded), stored as a JPEG in a PDF
  at that resolution. Each is rendered for OCR at 150, 200 and 300 dpi. The reference is the
  page's own text (``pdftotext -f N -l N``), so words are scored exactly, as bags of words:
  recall = matched / reference words, precision = matched / OCR words.

**Accuracy without a transcript.** Every synthetic text page of the development corpus was typeset
from a file that is on a Debian system (``labels.csv``, column ``source``: a man page, a licence, a
Python module, a Texinfo PDF, a doc-debian text). Its words are the reference vocabulary of that
document: ``precision`` is the share of OCR words (lower-cased ``[a-z0-9]+`` tokens of 2+
characters) that occur in it, ``correct`` the number of such words per page. On the same pages,
more correct words means more of the page read; garbage (``llii``, ``'-~``) lowers precision. The
reference is the whole document, not the page, so precision is an upper bound; it compares
settings, it is not a character error rate. Pages without a reference (calendars, charts, music,
real scans) report confidence and words only.

Writes ``OUT/ocr.json`` and ``OUT/ocr.md`` (``OUT/ocr-PARTS.*`` when ``--parts`` picks some), Markdown
tables also printed, and the load average: other work on the machine slows pages/s, not the words.
Not a test.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

TEXT_KINDS = ("man_page", "licence_text", "code_listing", "texinfo_manual", "two_column_text")
DPIS = (150, 200, 300)
PARTS = ("throughput", "dpi", "upscale", "exact")


# ---------------------------------------------------------------------------------------------
# reference vocabularies
# ---------------------------------------------------------------------------------------------


def tokens(text: str) -> list[str]:
    """Lower-cased ``[a-z0-9]+`` words of 2+ characters."""
    return [t for t in re.findall(r"[a-z0-9]+", text.lower()) if len(t) >= 2]


@lru_cache(maxsize=None)
def reference_vocabulary(source: str) -> frozenset[str] | None:
    """The words of the Debian file a development-corpus document was typeset from, or None.

    ``source`` is the ``labels.csv`` column: the first ``/usr/...`` path in it is read as text
    (``.gz`` unpacked), formatted by groff when it is a man page, or through ``pdftotext`` when it
    is a PDF.
    """
    m = re.search(r"(/usr/\S+?)(?:,|\s|$)", source)
    if not m or not Path(m.group(1)).is_file():
        return None
    path = Path(m.group(1))
    try:
        if "/man/" in str(path):
            cmd = f"zcat -f {sh(path)} | groff -t -man -Tascii -P-cbou"
            text = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout
        elif path.name.endswith((".pdf", ".pdf.gz")):
            with tempfile.NamedTemporaryFile(suffix=".pdf") as tmp:
                tmp.write(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
                tmp.flush()
                text = subprocess.run(["pdftotext", tmp.name, "-"], capture_output=True, text=True, check=True).stdout
        elif path.suffix == ".gz":
            text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        else:
            text = path.read_text("utf-8", "replace")
    except (OSError, subprocess.CalledProcessError):
        return None
    return frozenset(tokens(text))


def sh(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def score(text: str, vocab: frozenset[str] | None) -> dict:
    """``{"tokens", "correct", "precision"}`` of an OCR text against a reference vocabulary."""
    toks = tokens(text)
    if vocab is None:
        return {"tokens": len(toks), "correct": None, "precision": None}
    correct = sum(t in vocab for t in toks)
    return {"tokens": len(toks), "correct": correct, "precision": correct / len(toks) if toks else None}


# ---------------------------------------------------------------------------------------------
# one page, in a worker
# ---------------------------------------------------------------------------------------------


def _init_worker() -> None:
    os.environ["OMP_THREAD_LIMIT"] = "1"


def ocr_one(path: str, fmt: str, page_no: int, dpi: int, scale: float) -> dict:
    """OCR one page at ``dpi`` (PDFs) or upscaled by ``scale`` (images), as docsort does it."""
    from PIL import Image

    from docsort.core.ocr import ocr_image
    from docsort.core.pages import SourceFile, iter_ocr_pages
    from docsort.config.settings import OcrSettings

    ocr = OcrSettings(dpi=dpi, max_long_side_px=8000)
    src = SourceFile(Path(path), fmt, Path(path).stat().st_size)
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    page = next(iter_ocr_pages(src, ocr, page_no, page_no))
    image = page.image
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    render_s = time.perf_counter() - t0
    r = ocr_image(image, ocr)
    return {"text": r["text"], "confidence": r["confidence"], "n_words": r["n_words"], "error": r["error"],
            "long_side_px": r["long_side_px"], "seconds": r["seconds"] + render_s, "cpu_s": _cpu_s() - cpu0}


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended (Tesseract,
    pdftoppm; also the worker processes of a pool once it is shut down): unlike wall time, not
    inflated by other work on the machine."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_pool(tasks: list[tuple], workers: int) -> list[dict]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker) as pool:
        return list(pool.map(ocr_one, *zip(*tasks)))


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------


def dev_pages(dev: Path) -> list[dict]:
    """Rows of the development corpus's labels.csv with the file's format and absolute path."""
    from docsort.core.pages import detect_format

    with open(dev / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["path"] = str((dev / r["file"]).resolve())
        r["format"] = detect_format(r["path"])
        r["page"] = int(r["page"])
        r["group"] = "sample_docs" if r["file"].startswith("real_scans/") else r["category"]
    return rows


def summarise(rows: list[dict]) -> dict:
    """Pages, mean seconds per page, word-weighted mean confidence, words, precision, correct words."""
    n = len(rows)
    words = sum(r["n_words"] for r in rows)
    conf_w = sum((r["confidence"] or 0) * r["n_words"] for r in rows)
    scored = [r for r in rows if r.get("correct") is not None]
    toks = sum(r["tokens"] for r in scored)
    return {
        "pages": n,
        "s_per_page": sum(r["seconds"] for r in rows) / n if n else None,
        "cpu_s_per_page": sum(r["cpu_s"] for r in rows) / n if n and all("cpu_s" in r for r in rows) else None,
        "confidence": conf_w / words if words else None,
        "words_per_page": words / n if n else None,
        "scored_pages": len(scored),
        "precision": sum(r["correct"] for r in scored) / toks if toks else None,
        "correct_per_page": sum(r["correct"] for r in scored) / len(scored) if scored else None,
        "errors": sum(bool(r.get("error")) for r in rows),
    }


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# ---------------------------------------------------------------------------------------------
# parts
# ---------------------------------------------------------------------------------------------


def part_dpi(dev: Path, workers: int) -> dict:
    pages = [r for r in dev_pages(dev) if r["format"] == "pdf"]
    tasks = [(r["path"], "pdf", r["page"], dpi, 1.0) for dpi in DPIS for r in pages]
    t0 = time.perf_counter()
    results = run_pool(tasks, workers)
    wall = time.perf_counter() - t0
    out: dict = {"pages": len(pages), "wall_s": wall, "by_dpi": {}}
    rows_by = defaultdict(list)
    for (path, _, page_no, dpi, _), res in zip(tasks, results):
        row = next(r for r in pages if r["path"] == path and r["page"] == page_no)
        res.update(score(res["text"], reference_vocabulary(row["source"])), group=row["group"], file=row["file"], page=page_no)
        res.pop("text")
        rows_by[dpi].append(res)
    for dpi, rows in rows_by.items():
        groups = defaultdict(list)
        for r in rows:
            groups["text kinds (scored)" if r["correct"] is not None else ("sample_docs" if r["group"] == "sample_docs" else "other kinds")].append(r)
        out["by_dpi"][dpi] = {"all": summarise(rows), **{g: summarise(rs) for g, rs in sorted(groups.items())}, "pages": rows}
    return out


def part_upscale(dev: Path, workers: int, every: int) -> dict:
    pages = [r for r in dev_pages(dev) if r["format"] != "pdf" and r["category"] in TEXT_KINDS][::every]
    tasks = [(r["path"], r["format"], r["page"], 200, scale) for scale in (1.0, 2.0) for r in pages]
    results = run_pool(tasks, workers)
    out: dict = {"pages": len(pages), "every": every, "by_scale": {}}
    rows_by = defaultdict(list)
    for (path, _, page_no, _, scale), res in zip(tasks, results):
        row = next(r for r in pages if r["path"] == path and r["page"] == page_no)
        res.update(score(res["text"], reference_vocabulary(row["source"])), group=row["group"], file=row["file"], page=page_no)
        res.pop("text")
        rows_by[scale].append(res)
    for scale, rows in rows_by.items():
        out["by_scale"][scale] = {"all": summarise(rows), "pages": rows}
    return out


EXACT_SOURCES = (
    ("/usr/share/doc/r-doc-pdf/manual/R-intro.pdf", (12, 27, 44, 61)),
    ("/usr/share/doc/r-doc-pdf/manual/R-data.pdf", (9, 21)),
    ("/usr/share/doc/gnu-standards/standards.pdf.gz", (14, 33)),
)


def _fake_scan(pdf: Path, page_no: int, dpi: int, out: Path, seed: int) -> None:
    """Page ``page_no`` of ``pdf`` "scanned" at ``dpi``: rendered grey, blurred (0.5 px at 150
    dpi, scaled with dpi), Gaussian noise sigma 4, saved as a JPEG (quality 75) in a PDF at ``dpi``."""
    import numpy as np
    from PIL import Image, ImageFilter

    png = out.with_suffix("")
    subprocess.run(["pdftoppm", "-r", str(dpi), "-gray", "-f", str(page_no), "-l", str(page_no), "-singlefile", "-png",
                    str(pdf), str(png)], check=True)
    im = Image.open(str(png) + ".png").convert("L").filter(ImageFilter.GaussianBlur(0.5 * dpi / 150))
    rng = np.random.default_rng(seed)
    arr = np.clip(np.asarray(im, np.float32) + rng.normal(0, 4, (im.height, im.width)), 0, 255).astype(np.uint8)
    Image.fromarray(arr, "L").save(out, "PDF", resolution=dpi, quality=75)


def bag_score(text: str, reference: list[str]) -> dict:
    """Bag-of-words recall and precision of an OCR text against a page's reference words."""
    from collections import Counter

    ocr = tokens(text)
    matched = sum((Counter(ocr) & Counter(reference)).values())
    return {"tokens": len(ocr), "reference": len(reference), "matched": matched,
            "recall": matched / len(reference) if reference else None, "precision": matched / len(ocr) if ocr else None}


def part_exact(workers: int, n_pages: int) -> dict:
    sources = [(Path(p), pages) for p, pages in EXACT_SOURCES if Path(p).is_file()]
    if not sources:
        return {"skipped": "none of the Debian manuals is installed (apt-get install r-doc-pdf gnu-standards)"}
    with tempfile.TemporaryDirectory() as tmp:
        items = []  # (kind, pdf, page_no, reference)
        for path, pages in sources:
            pdf = path
            if path.suffix == ".gz":
                pdf = Path(tmp) / path.name[:-3]
                pdf.write_bytes(gzip.decompress(path.read_bytes()))
            for page_no in pages:
                ref = tokens(subprocess.run(["pdftotext", "-f", str(page_no), "-l", str(page_no), str(pdf), "-"],
                                            capture_output=True, text=True, check=True).stdout)
                items.append(("born-digital", pdf, page_no, ref))
                for dpi in (150, 300):
                    scan = Path(tmp) / f"{pdf.stem}-{page_no}-scan{dpi}.pdf"
                    _fake_scan(pdf, page_no, dpi, scan, seed=page_no * 1000 + dpi)
                    items.append((f"scanned at {dpi} dpi", scan, 1, ref))
        items = [it for it in items if it[0] == "born-digital"][:n_pages] + \
            [it for it in items if it[0] == "scanned at 150 dpi"][:n_pages] + [it for it in items if it[0] == "scanned at 300 dpi"][:n_pages]
        tasks = [(str(pdf), "pdf", page_no, dpi, 1.0) for dpi in DPIS for _, pdf, page_no, _ in items]
        results = run_pool(tasks, workers)
    rows = defaultdict(list)
    for (_, _, _, dpi, _), (kind, pdf, page_no, ref), res in zip(tasks, items * len(DPIS), results):
        rows[(kind, dpi)].append({**bag_score(res["text"], ref), "seconds": res["seconds"], "cpu_s": res["cpu_s"], "confidence": res["confidence"],
                                  "n_words": res["n_words"], "file": pdf.name, "page": page_no})
    out = {"sources": [str(p) for p, _ in sources], "by_kind": defaultdict(dict)}
    for (kind, dpi), rs in rows.items():
        ref_n, matched, toks = sum(r["reference"] for r in rs), sum(r["matched"] for r in rs), sum(r["tokens"] for r in rs)
        words = sum(r["n_words"] for r in rs)
        out["by_kind"][kind][dpi] = {
            "pages": len(rs), "s_per_page": sum(r["seconds"] for r in rs) / len(rs), "cpu_s_per_page": sum(r["cpu_s"] for r in rs) / len(rs),
            "recall": matched / ref_n if ref_n else None, "precision": matched / toks if toks else None,
            "confidence": sum((r["confidence"] or 0) * r["n_words"] for r in rs) / words if words else None, "pages_detail": rs}
    return out


def part_throughput(dev: Path | None, every: int, worker_counts: list[int]) -> dict:
    """Fresh collections (bundled weights), then docsort.jobs.ocr.backfill with each worker count."""
    from docsort.jobs.ocr import backfill, with_ocr
    from docsort.jobs.ingest import ingest
    from docsort.store.manifest import make_extractor
    from docsort.config.settings import load_pipeline
    from docsort.store.storage import Collection

    settings = load_pipeline("default").with_overrides(weights="bundled")
    extractor = make_extractor(settings, announce=False)
    corpora = {"sample_docs": [REPO / "sample_docs"]}
    if dev is not None:
        files = sorted({r["path"] for r in dev_pages(dev) if not r["file"].startswith("real_scans/")})
        corpora[f"dev corpus, 1 file in {every}"] = files[::every]
    labels = {}
    if dev is not None:
        labels = {(r["path"], r["page"]): r["category"] for r in dev_pages(dev)}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, paths in corpora.items():
            base = Path(tmp) / f"base-{len(out)}"
            with Collection(base, create=True) as col:
                rep = ingest(col, paths, settings, extractor=extractor, progress=False, log=lambda m: None)
                assert not rep.failures, rep.failures
            out[name] = {"pages": rep.pages_added, "documents": rep.documents_added, "runs": {}}
            for w in worker_counts:
                root = Path(tmp) / f"run-{len(out)}-{w}"
                shutil.copytree(base, root)
                load = os.getloadavg()[0]
                with Collection(root) as col:
                    cpu0 = _cpu_s()
                    r = backfill(col, with_ocr(settings, workers=w), progress=False, log=lambda m: None)
                    cpu = _cpu_s() - cpu0  # the pool is shut down and its workers reaped: their CPU is counted
                    texts = col.page_texts()
                    where = {p.page_id: (p.path, p.page_no) for p in col.pages()}
                n = r.pages_done + r.pages_failed
                out[name]["runs"][w] = {"pages_per_s": r.pages_per_s, "seconds": r.seconds, "pages_done": r.pages_done,
                                        "pages_failed": r.pages_failed, "words": r.words, "mean_confidence": r.mean_confidence,
                                        "cpu_s_per_page": cpu / n if n else None, "load_average_1min_before": load}
            # quality per category (from the last run; the text does not depend on the worker count)
            cats = defaultdict(list)
            for pid, t in texts.items():
                path, page_no = where[pid]
                cat = labels.get((path, page_no)) or _sample_category(path, page_no)
                cats[cat].append({"n_words": t["n_words"], "confidence": t["confidence"], "seconds": t["seconds"], "error": t["error"]})
            out[name]["by_category"] = {c: summarise(rs) for c, rs in sorted(cats.items())}
    return out


@lru_cache(maxsize=None)
def _sample_labels() -> dict:
    with open(REPO / "sample_docs" / "labels.csv", newline="") as f:
        return {(str((REPO / "sample_docs" / r["file"]).absolute()), int(r["page"])): r["category"] for r in csv.DictReader(f)}


def _sample_category(path: str, page_no: int) -> str:
    return _sample_labels().get((path, page_no), "?")


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    load = ", ".join(f"{v:.1f}" for v in result["load_average_at_start"])
    lines = [f"OCR benchmark ({result['engine']}, {result['machine']}; {result['date']}; load average at start {load})", ""]
    if "throughput" in result:
        lines += ["### Throughput (`docsort.jobs.ocr.backfill`, default settings: eng, psm 3, PDFs at 200 dpi)", "",
                  "| corpus | pages | workers | pages/s | wall s | CPU s/page | load before | words | mean confidence |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, c in result["throughput"].items():
            for w, r in c["runs"].items():
                lines.append(f"| {name} | {c['pages']} | {w} | {r['pages_per_s']:.2f} | {r['seconds']:.1f} | "
                             f"{fmt(r['cpu_s_per_page'], '.2f')} | {r['load_average_1min_before']:.1f} | {r['words']} | "
                             f"{fmt(r['mean_confidence'], '.1f')} |")
        lines += ["", "Per kind (default settings):", "",
                  "| corpus | kind | pages | wall s/page (in a worker) | words/page | mean confidence |", "|---|---|---|---|---|---|"]
        for name, c in result["throughput"].items():
            for cat, s in c["by_category"].items():
                lines.append(f"| {name} | {cat} | {s['pages']} | {fmt(s['s_per_page'], '.2f')} | {fmt(s['words_per_page'], '.0f')} | "
                             f"{fmt(s['confidence'], '.1f')} |")
        lines.append("")
    if "dpi" in result:
        d = result["dpi"]
        lines += [f"### PDF render resolution ({d['pages']} PDF pages of the development corpus)", "",
                  "| dpi | pages | wall s/page | CPU s/page | words/page | mean confidence | scored pages | precision | correct words/page |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for dpi, groups in d["by_dpi"].items():
            for g, s in groups.items():
                if g == "pages":
                    continue
                lines.append(f"| {dpi} ({g}) | {s['pages']} | {fmt(s['s_per_page'], '.2f')} | {fmt(s['cpu_s_per_page'], '.2f')} | "
                             f"{fmt(s['words_per_page'], '.0f')} | "
                             f"{fmt(s['confidence'], '.1f')} | {s['scored_pages']} | {fmt(s['precision'], '.3f')} | "
                             f"{fmt(s['correct_per_page'], '.0f')} |")
        lines.append("")
    if "upscale" in result:
        u = result["upscale"]
        lines += [f"### Image pages at their own resolution vs upscaled 2x ({u['pages']} text pages, 1 in {u['every']})", "",
                  "| scale | pages | wall s/page | CPU s/page | words/page | mean confidence | precision | correct words/page |",
                  "|---|---|---|---|---|---|---|---|"]
        for scale, groups in u["by_scale"].items():
            s = groups["all"]
            lines.append(f"| {scale:g}x | {s['pages']} | {fmt(s['s_per_page'], '.2f')} | {fmt(s['cpu_s_per_page'], '.2f')} | "
                         f"{fmt(s['words_per_page'], '.0f')} | "
                         f"{fmt(s['confidence'], '.1f')} | {fmt(s['precision'], '.3f')} | {fmt(s['correct_per_page'], '.0f')} |")
        lines.append("")
    if "exact" in result and "by_kind" in result["exact"]:
        e = result["exact"]
        lines += ["### Render resolution against exact page text (born-digital Texinfo PDFs and 150/300 dpi scans of them)", "",
                  "| source | render dpi | pages | wall s/page | CPU s/page | recall | precision | mean confidence |", "|---|---|---|---|---|---|---|---|"]
        for kind, by_dpi in e["by_kind"].items():
            for dpi, s in sorted(by_dpi.items()):
                lines.append(f"| {kind} | {dpi} | {s['pages']} | {s['s_per_page']:.2f} | {s['cpu_s_per_page']:.2f} | {fmt(s['recall'], '.3f')} | "
                             f"{fmt(s['precision'], '.3f')} | {fmt(s['confidence'], '.1f')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--dev-corpus", type=Path, default=HERE / "out" / "dev_corpus")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the dpi and upscale parts")
    ap.add_argument("--dev-every", type=int, default=4, help="throughput: every n-th file of the development corpus")
    ap.add_argument("--upscale-every", type=int, default=2, help="upscale: every n-th image page of the text kinds")
    ap.add_argument("--exact-pages", type=int, default=8, help="exact: pages of the Texinfo manuals (at most 8)")
    args = ap.parse_args()
    os.environ.setdefault("DOCSORT_OFFLINE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    from docsort.core.ocr import require_tesseract

    dev = args.dev_corpus if (args.dev_corpus / "labels.csv").is_file() else None
    result = {"engine": require_tesseract("eng"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d"), "args": {k: str(v) for k, v in vars(args).items()},
              "load_average_at_start": os.getloadavg()}  # other work on the machine skews seconds, not words
    if "dpi" in args.parts and dev is not None:
        print("dpi part...", file=sys.stderr, flush=True)
        result["dpi"] = part_dpi(dev, args.workers)
    if "upscale" in args.parts and dev is not None:
        print("upscale part...", file=sys.stderr, flush=True)
        result["upscale"] = part_upscale(dev, args.workers, args.upscale_every)
    if "exact" in args.parts:
        print("exact part...", file=sys.stderr, flush=True)
        result["exact"] = part_exact(args.workers, args.exact_pages)
    if "throughput" in args.parts:
        print("throughput part...", file=sys.stderr, flush=True)
        result["throughput"] = part_throughput(dev, args.dev_every, [1, 2])
    result["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "ocr" if set(args.parts) == set(PARTS) else "ocr-" + "-".join(args.parts)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = markdown(result)
    (args.out / f"{stem}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
