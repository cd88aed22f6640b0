"""Build docsort's second development corpus: other sources and formatters than the first, same scan styles.

    apt-get install -y --no-install-recommends groff ghostscript poppler-utils a2ps graphviz chromium
    python benchmarks/dev_corpus2.py benchmarks/out/dev_corpus2

A default is kept only if it wins on two corpora built from different sources (issue 13). The
first (``dev_corpus.py --styles``) has man pages, enscript printouts, Texinfo PDFs, groff -ms,
abcm2ps, pcal and gnuplot. This one shares none of its documents and none of its formatters
except ghostscript (the rasteriser); every page is a real document shipped in a Debian
package (or a real scan from ``sample_docs/``), in five generated kinds and sample_docs' six:

| category | documents | formatter |
|---|---|---|
| ``groff_paper`` | the groff manuals shipped as PostScript: ``meintro`` (en, fr), ``meref`` (groff -me), ``pic`` (groff -ms + pic) | as shipped in groff-base (groff ``-me``/``-ms``) |
| ``web_page_print`` | HTML manuals: Node.js API docs (nodejs), Valgrind manual (valgrind), libxslt API reference (libxslt1-dev) | Chromium's print to PDF (headless) |
| ``c_header_listing`` | C headers of ``/usr/include`` (libc6-dev, zlib1g-dev, libexpat1-dev, libffi-dev) | ``a2ps`` (2 pages per landscape sheet, its own frame and header) |
| ``package_graph`` | dependency graphs of Debian packages (``apt-cache dotty``): fixed sets, then seeded pairs of the installed packages (so it follows what is installed) | Graphviz ``dot`` PostScript |
| ``data_table`` | boxed tables of system data files (``zone1970.tab``, ``iso3166.tab``, ``/etc/services``, ``/etc/protocols``, distro-info CSVs, Unicode blocks, ...) | ``groff -t -ms`` (``tbl``) |

and the 41 real scans of ``sample_docs/`` (antique_book_photo, book_page, fax_test_page, map,
newspaper, sheet_music), each page re-scanned in one style (as a photocopy is re-scanned).

**Scan styles**: the five of ``scan_styles.py``, dealt round-robin over a seeded shuffle of each
category's documents (sample_docs: of its pages), recorded in ``labels.csv``'s ``style`` column.
Deterministic: seeded from names; re-runs give the same files with the same package versions.
About 2 minutes on two cores.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dev_corpus import SourceDoc, _pdf_page_count, _pdf_pages, _pkg_of, _ps_page_count, _ps_pages, _run, _tool_version  # noqa: E402
from scan_styles import RENDER_DPI, apply_style, assign_styles, rng_for, save_styled, style_params, style_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DOCS = REPO / "sample_docs"
#: Pages wanted per generated category; each document gives at most ``PAGES_PER_DOC``.
TARGET_PAGES = 30
PAGES_PER_DOC = 3
TOOLS = ("groff", "gs", "pdftoppm", "a2ps", "dot", "chromium", "apt-cache")
APT_PACKAGES = "groff ghostscript poppler-utils a2ps graphviz chromium"


def _take(docs: list[SourceDoc]) -> list[SourceDoc]:
    kept, total = [], 0
    for d in docs:
        if not d.pages:
            continue
        d.pages = d.pages[: min(PAGES_PER_DOC, TARGET_PAGES - total)]
        kept.append(d)
        total += len(d.pages)
        if total >= TARGET_PAGES:
            break
    return kept


# ---------------------------------------------------------------------------------------------
# the five generated kinds
# ---------------------------------------------------------------------------------------------

GROFF_DOCS = [("meintro", "meintro.ps.gz", [1, 4, 10]), ("meref", "meref.ps.gz", [1, 5, 10]), ("pic", "pic.ps.gz", [1, 10, 20, 30]),
              ("meintro_fr", "meintro_fr.ps.gz", [3, 12])]


def build_groff_papers(tmp: Path) -> list[SourceDoc]:
    """Pages of the groff manuals Debian ships as PostScript, in chunks of up to 3 pages."""
    docs = []
    base = Path("/usr/share/doc/groff-base")
    for name, file, starts in GROFF_DOCS:
        src = base / file
        ps = tmp / f"groff-{name}.ps"
        ps.write_bytes(gzip.decompress(src.read_bytes()))
        n = _ps_page_count(ps)
        for s in starts:
            if s > n:
                continue
            docs.append(SourceDoc(f"{name}-{s}", _ps_pages(ps, tmp, s, min(n, s + PAGES_PER_DOC - 1)),
                                  f"Debian {_pkg_of(src)}: {src} pages {s}-{min(n, s + PAGES_PER_DOC - 1)}, as shipped (groff)",
                                  "GFDL-1.3+ / permissive (groff documentation, per groff-base's copyright)"))
    # interleave the manuals so that each appears before the target is reached
    by = {}
    for d in docs:
        by.setdefault(d.name.rsplit("-", 1)[0], []).append(d)
    order = [d for group in zip(*[v + [None] * (4 - len(v)) for v in by.values()]) for d in group if d is not None]
    return _take(order)


HTML_DOCS = [
    ("node-fs", "/usr/share/doc/nodejs/api/fs.html"), ("valgrind-core", "/usr/share/doc/valgrind/html/manual-core.html"),
    ("xslt-templates", "/usr/share/doc/libxslt1-dev/html/html/libxslt-templates.html"),
    ("node-buffer", "/usr/share/doc/nodejs/api/buffer.html"), ("valgrind-faq", "/usr/share/doc/valgrind/html/FAQ.html"),
    ("xslt-extra", "/usr/share/doc/libxslt1-dev/html/html/libxslt-extra.html"),
    ("node-http", "/usr/share/doc/nodejs/api/http.html"), ("valgrind-mc", "/usr/share/doc/valgrind/html/mc-manual.html"),
    ("node-stream", "/usr/share/doc/nodejs/api/stream.html"), ("valgrind-cg", "/usr/share/doc/valgrind/html/cg-manual.html"),
    ("node-path", "/usr/share/doc/nodejs/api/path.html"), ("valgrind-quick", "/usr/share/doc/valgrind/html/QuickStart.html"),
]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-pdf-header-footer"]


def build_web_pages(tmp: Path) -> list[SourceDoc]:
    """HTML manuals shipped in Debian, printed to PDF by headless Chromium (pages 1-3, or 2-4)."""
    docs = []
    for name, path in HTML_DOCS:
        if not Path(path).is_file():
            continue
        pdf = tmp / f"web-{name}.pdf"
        subprocess.run(["chromium", *CHROMIUM_ARGS, f"--print-to-pdf={pdf}", f"file://{path}"], capture_output=True, timeout=120,
                       stdin=subprocess.DEVNULL)
        if not pdf.exists():
            continue
        n = _pdf_page_count(pdf)
        first = 2 if n > 4 and rng_for("web", name).random() < 0.5 else 1
        pages = list(range(first, min(n, first + PAGES_PER_DOC - 1) + 1))
        docs.append(SourceDoc(name, _pdf_pages(pdf, pages), f"Debian {_pkg_of(path)}: {path}, pages {pages}, printed by chromium {_tool_version('chromium')}",
                              f"see /usr/share/doc/{_pkg_of(path).split()[0]}/copyright"))
    return _take(docs)


C_HEADERS = ["stdio.h", "zlib.h", "expat.h", "string.h", "ffi.h", "stdlib.h", "unistd.h", "fcntl.h", "signal.h", "locale.h", "time.h", "math.h"]


def build_c_listings(tmp: Path) -> list[SourceDoc]:
    """C headers printed by a2ps (its default: two virtual pages per landscape sheet, framed, C highlighting)."""
    docs = []
    for name in C_HEADERS:
        src = Path("/usr/include") / name
        if not src.is_file():
            continue
        ps = tmp / f"a2ps-{src.stem}.ps"
        _run(["a2ps", "-q", "--medium=Letter", "-o", str(ps), str(src)])
        n = min(PAGES_PER_DOC, _ps_page_count(ps))
        docs.append(SourceDoc(src.stem, _ps_pages(ps, tmp, 1, n), f"Debian {_pkg_of(src)}: {src}, printed with a2ps {_tool_version('a2ps')}",
                              f"see /usr/share/doc/{_pkg_of(src).split()[0]}/copyright", landscape=True))
    return _take(docs)


PACKAGE_SETS = [("coreutils", ["coreutils", "tar", "gzip", "grep", "sed"]), ("python3", ["python3", "python3-minimal", "python3.11"]),
                ("apt", ["apt", "dpkg", "debconf"]), ("groff", ["groff", "groff-base", "ghostscript"]),
                ("graphviz", ["graphviz", "libgvc6", "libcgraph6"]), ("poppler", ["poppler-utils", "libpoppler126"]),
                ("chromium", ["chromium"]), ("tesseract", ["tesseract-ocr", "libtesseract5"]), ("git", ["git", "git-man"]),
                ("gnuplot", ["gnuplot-nox"]), ("a2ps", ["a2ps", "libpaper1"]), ("enscript", ["enscript", "pcal", "abcm2ps"]),
                ("nodejs", ["nodejs", "libnode108"]), ("perl", ["perl", "perl-base"])]


def _more_package_sets(n: int) -> list[tuple[str, list[str]]]:
    """``n`` pairs of installed packages, drawn with a fixed seed from ``dpkg-query``'s sorted list."""
    installed = sorted(_run(["dpkg-query", "-W", "-f", "${Package}\\n"], text=True).stdout.split())
    picks = rng_for("package-pairs").permutation(len(installed))[: 2 * n]
    return [(f"{installed[a]}+{installed[b]}", [installed[a], installed[b]]) for a, b in zip(picks[::2], picks[1::2])]


def build_package_graphs(tmp: Path) -> list[SourceDoc]:
    """Dependency graphs of installed Debian packages (``apt-cache dotty``), laid out by Graphviz ``dot``:
    the sets of :data:`PACKAGE_SETS`, then seeded pairs of installed packages."""
    docs = []
    for i, (name, pkgs) in enumerate(PACKAGE_SETS + _more_package_sets(40)):
        if sum(len(d.pages) for d in docs) >= TARGET_PAGES:
            break
        dotsrc = _run(["apt-cache", "-o", "APT::Cache::GivenOnly=1", "dotty", *pkgs], text=True).stdout
        if dotsrc.count("->") < 3:
            continue
        dotsrc = re.sub(r'size="[^"]*";', 'size="7.5,10"; ratio=fill;' if i % 2 else 'size="10,7.5"; rankdir=LR;', dotsrc, count=1)
        gv = tmp / f"deps-{name}.gv"
        gv.write_text(dotsrc)
        ps = tmp / f"deps-{name}.ps"
        _run(["dot", "-Tps", "-o", str(ps), str(gv)])
        docs.append(SourceDoc(name, _ps_pages(ps, tmp, 1, 1, color=True),
                              f"apt-cache dotty {' '.join(pkgs)} (Debian apt {_tool_version('apt')}), laid out by graphviz {_tool_version('graphviz')} dot",
                              "package metadata of Debian main; graphviz output"))
    return _take(docs)


DATA_FILES = [("zone1970", "/usr/share/zoneinfo/zone1970.tab", "\t"), ("services", "/etc/services", None),
              ("iso3166", "/usr/share/zoneinfo/iso3166.tab", "\t"), ("protocols", "/etc/protocols", None),
              ("zone", "/usr/share/zoneinfo/zone.tab", "\t"), ("mime", "/etc/mime.types", None),
              ("locales", "/usr/share/i18n/SUPPORTED", None), ("ethertypes", "/etc/ethertypes", None),
              ("rpc", "/etc/rpc", None), ("debian-releases", "/usr/share/distro-info/debian.csv", ","),
              ("ubuntu-releases", "/usr/share/distro-info/ubuntu.csv", ","), ("locale-alias", "/usr/share/X11/locale/locale.alias", None),
              ("leapseconds", "/usr/share/zoneinfo/leapseconds", None), ("unicode-blocks", "/usr/share/perl/5.36/unicore/Blocks.txt", ";"),
              ("groups", "/etc/group", ":")]


def _tbl(rows: list[list[str]], title: str, style: int) -> str:
    """groff -ms + tbl source: a title and a boxed table of ``rows`` (the first row a header)."""

    def esc(s: str) -> str:
        s = s.replace("\\", "\\e").replace("\t", " ")
        return "\\&" + s if s[:1] in (".", "'") else s

    ncol = max(len(r) for r in rows)
    options = ["allbox", "box", "doublebox"][style % 3] + (" center" if style % 2 else " expand")
    fmt_head = " ".join(["cb"] * ncol)
    fmt_body = " ".join(["l"] * ncol) + "."
    out = [".nr PS 9", ".nr VS 11", ".TL", esc(title), ".LP", ".TS H", options + " tab(@);", fmt_head, fmt_body]
    out.append("@".join(esc(c) for c in rows[0]))
    out.append(".TH")
    for r in rows[1:]:
        out.append("@".join(esc(c) for c in r + [""] * (ncol - len(r))))
    out.append(".TE")
    return "\n".join(out) + "\n"


def build_data_tables(tmp: Path) -> list[SourceDoc]:
    """System data files of Debian set as boxed tables by ``groff -t -ms`` (tbl), with a header row."""
    docs = []
    for i, (name, path, sep) in enumerate(DATA_FILES):
        src = Path(path)
        if not src.is_file():
            continue
        lines = [ln for ln in src.read_text(errors="replace").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if len(lines) < 10:
            continue
        rows = [ln.split(sep, 3) if sep else ln.split(None, 3) for ln in lines[:400]]
        rows = [[c.strip()[:40] for c in r][:4] for r in rows]
        ncol = max(len(r) for r in rows)
        header = ["code", "coordinates", "zone", "comment"][:ncol] if "zone" in name else [f"field {j + 1}" for j in range(ncol)]
        ms = tmp / f"tbl-{name}.ms"
        ms.write_text(_tbl([header, *rows], f"{src}", i))
        ps = tmp / f"tbl-{name}.ps"
        ps.write_bytes(_run(["groff", "-t", "-ms", "-Tps", str(ms)]).stdout)
        first = 1 + int(rng_for("tbl", name).integers(0, max(1, _ps_page_count(ps) - PAGES_PER_DOC)))
        last = min(_ps_page_count(ps), first + PAGES_PER_DOC - 1)
        docs.append(SourceDoc(name, _ps_pages(ps, tmp, first, last), f"Debian {_pkg_of(src)}: {src}, set with groff -t -ms {_tool_version('groff-base')}, pages {first}-{last}",
                              f"see /usr/share/doc/{_pkg_of(src).split()[0]}/copyright"))
    return _take(docs)


CATEGORIES = [("groff_paper", build_groff_papers), ("web_page_print", build_web_pages), ("c_header_listing", build_c_listings),
              ("package_graph", build_package_graphs), ("data_table", build_data_tables)]


# ---------------------------------------------------------------------------------------------
# sample_docs re-scanned
# ---------------------------------------------------------------------------------------------


def _sample_page(path: Path, page: int) -> tuple[Image.Image, float]:
    """Page ``page`` (1-based) of a sample_docs file and its resolution in dpi (assumed 150 when unknown)."""
    if path.suffix.lower() == ".pdf":
        return _pdf_pages(path, [page])[0], float(RENDER_DPI)
    im = Image.open(path)
    im.seek(page - 1)
    dpi = im.info.get("dpi", (0, 0))[0] or 0
    im = im.copy()
    if not dpi or dpi < 50 or dpi > 1200:
        dpi = max(im.size) / 11.0  # a letter-size page's long side
    return im, float(dpi)


def sample_docs_rows(out: Path) -> list[dict]:
    """Re-scan every page of sample_docs in one style (balanced per category); their label rows."""
    rows = []
    with open(SAMPLE_DOCS / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    by_cat: dict[str, list[dict]] = {}
    for r in labels:
        by_cat.setdefault(r["category"], []).append(r)
    for cat, items in by_cat.items():
        names = [f"{Path(r['file']).stem}-p{r['page']}" for r in items]
        assigned = assign_styles(cat, names, salt="sample-docs")
        for r, name in zip(items, names):
            style = assigned[name]
            params = style_params(style, cat, name)
            im, dpi = _sample_page(SAMPLE_DOCS / r["file"], int(r["page"]))
            scanned = apply_style(im, params, rng_for("sample-page", cat, name), source_dpi=dpi)
            for path, page in save_styled([scanned], out / "real_scans" / cat / name, params):
                rows.append({"file": path.relative_to(out).as_posix(), "page": page, "category": cat, "style": style,
                             "source": f"{r['source']} (sample_docs/{r['file']} page {r['page']}, re-scanned as {style})",
                             "licence": r["licence"]})
    shutil.copytree(SAMPLE_DOCS / "LICENSES", out / "real_scans" / "LICENSES")
    return rows


def build(out: Path, log=print) -> list[dict]:
    """Build the corpus under ``out`` (replacing it); return the label rows written to labels.csv.

    Raises:
        SystemExit: a needed tool is missing (the message gives the ``apt-get install`` line).
    """
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing tools {missing}; run: apt-get install -y --no-install-recommends {APT_PACKAGES}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="docsort-devcorpus2-") as tmpdir:
        tmp = Path(tmpdir)
        for name, builder in CATEGORIES:
            docs = builder(tmp)
            log(f"{name}: {len(docs)} documents, {sum(len(d.pages) for d in docs)} pages")
            assigned = assign_styles(name, [d.name for d in docs], salt="corpus2")
            for doc in docs:
                style = assigned[doc.name]
                params = style_params(style, name, doc.name)
                upright = doc.landscape and rng_for("upright2", name, doc.name).random() < 0.5
                pages = [p.rotate(-90, expand=True) if upright else p for p in doc.pages]
                scanned = [apply_style(p, params, rng_for("page2", name, doc.name, i)) for i, p in enumerate(pages)]
                for path, page in save_styled(scanned, out / name / doc.name, params):
                    rows.append({"file": path.relative_to(out).as_posix(), "page": page, "category": name, "style": style,
                                 "source": doc.source, "licence": doc.licence})
    rows += sample_docs_rows(out)
    log(f"sample_docs: {sum(1 for r in rows if r['file'].startswith('real_scans/'))} pages re-scanned")
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "page", "category", "style", "source", "licence"])
        w.writeheader()
        w.writerows(rows)
    counts = Counter(r["category"] for r in rows)
    lines = ["# docsort development corpus 2", "", "Built by `benchmarks/dev_corpus2.py` (see its docstring). Labels: `labels.csv`.", "",
             *style_table(rows), "", f"{len(rows)} pages in {len({r['file'] for r in rows})} files, {len(counts)} categories."]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (replaced)")
    a = ap.parse_args()
    rows = build(a.out)
    print(f"{len(rows)} pages, {len({r['file'] for r in rows})} files, labels in {a.out / 'labels.csv'}", file=sys.stderr)
