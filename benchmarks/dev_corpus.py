"""Build docsort's labelled development corpus: real documents from Debian packages, made to look scanned.

    apt-get install -y --no-install-recommends groff-base man-db ghostscript poppler-utils enscript \\
        pcal abcm2ps abcmidi gnuplot-nox gnuplot-doc doc-debian r-doc-pdf gnu-standards
    python benchmarks/dev_corpus.py benchmarks/out/dev_corpus

Nobody on the docsort project wrote any of the texts, tunes, plots or layouts: every page is a
real document shipped in a Debian package, laid out by the real formatter that package's
authors use (or the one Debian ships for that kind of text), then rasterised by ghostscript or
poppler at 150 dpi and degraded to look scanned. Eight kinds, chosen to look different on a desk:

| category | documents | formatter |
|---|---|---|
| ``man_page`` | man pages of coreutils, grep, sed, tar, findutils, gzip, dpkg, apt, enscript... | ``man -Tps`` (groff ``-man``) |
| ``licence_text`` | ``/usr/share/common-licenses/*`` (base-files) | ``enscript`` (Courier, page header) |
| ``code_listing`` | Python 3.11 standard-library modules (``/usr/lib/python3.11``) | ``enscript -2r -Epython`` (two pages per landscape sheet, line numbers) |
| ``texinfo_manual`` | R manuals (``r-doc-pdf``), GNU coding standards and maintainers' guide (``gnu-standards``) | the PDFs as shipped (Texinfo/TeX) |
| ``two_column_text`` | Debian constitution, social contract, manifesto, BTS guides (``doc-debian``) | ``groff -ms`` two columns (ms macros: package ``groff``) |
| ``sheet_music`` | the ABC tunes shipped as examples in ``abcm2ps`` and ``abcmidi`` | ``abcm2ps`` |
| ``calendar`` | monthly calendars (landscape and portrait, moon phases, Monday-first) | ``pcal`` |
| ``chart`` | gnuplot's demo scripts and data (``gnuplot-doc``) | ``gnuplot`` PostScript terminal |

and, unless ``--no-sample-docs``, the 41 real scans of ``sample_docs/`` (six more kinds, 5-10 pages
each, copied unchanged, labels from ``sample_docs/labels.csv``) under ``real_scans/``.

**Degradation** (own code, seeded per document and page from a CRC of their names, so the corpus
is byte-identical on every run with the same package versions): per document a scan resolution
of 100-150 dpi, a paper tone and ink density, a 25 % chance of a bilevel (fax-like) scan and
a colour scan for a third of the colour sources; per page a rotation of up to +-1.5 degrees, a
shift of up to 1.5 % of the page, an uneven illumination ramp, Gaussian blur (radius 0.3-1.1 px)
and Gaussian sensor noise (sigma 2-9 grey levels). The ``augraphy`` package does this and more,
but costs seconds per page on two cores and pulls in OpenCV; these few mild effects are all the
study needs (the network sees the page at ~27-60 dpi).

**Formats**: the documents of each category rotate over multi-page PDF (pages JPEG- or
CCITT-encoded by Pillow), multi-page TIFF (deflate or CCITT G4), one PNG per page and one JPEG
per page (quality 40-85), so a format never identifies a category.

**Scan style independent of category** (``--styles``, issue 13): instead of the per-document
profile above, every document gets one of the scan styles of ``scan_styles.py`` (fax-like
bilevel G4 at 150-300 dpi, greyscale JPEG on grey paper at low quality, colour, clean grey,
phone photo with perspective), dealt round-robin over a seeded shuffle of each category's
documents, so every category has every style in near-equal shares; the format follows the
style (G4 TIFF/PDF, JPEG/PDF, PNG/TIFF), never the category. ``labels.csv`` gets a ``style``
column; sample_docs' scans are left out (``dev_corpus2.py`` re-renders them in the styles).

    python benchmarks/dev_corpus.py --styles benchmarks/out/dev_styles

Writes ``OUT/<category>/...``, ``OUT/labels.csv`` (file, page, category, source, licence; files
relative to OUT) and ``OUT/README.md`` (counts per category and format). About 80 s on two
cores, ~120 MB; byte-identical on re-runs with the same package versions.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_styles import apply_style, assign_styles, save_styled, style_params, style_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DOCS = REPO / "sample_docs"

#: Rasterisation resolution of the clean pages, dots per inch (the "scanner" then resamples).
RENDER_DPI = 150
#: Pages wanted per generated category; each document gives at most ``PAGES_PER_DOC``.
TARGET_PAGES = 26
PAGES_PER_DOC = 3
FORMATS = ("pdf", "tiff", "png", "jpg")

APT_PACKAGES = (
    "groff man-db ghostscript poppler-utils enscript pcal abcm2ps abcmidi gnuplot-nox gnuplot-doc "
    "doc-debian r-doc-pdf gnu-standards"
)
TOOLS = ("man", "groff", "gs", "pdftoppm", "enscript", "pcal", "abcm2ps", "gnuplot")


@dataclass
class SourceDoc:
    """One real document, rendered clean.

    Attributes:
        name: short name, unique within its category (used in file names and seeds).
        pages: clean page images, mode ``L`` or ``RGB``, at :data:`RENDER_DPI`.
        source: package, version and path of the original, and the formatter used.
        licence: the licence the package states for it.
        landscape: the content is printed sideways on a portrait sheet (PostScript
            ``%%Orientation: Landscape``), as a landscape printout lies on a scanner.
    """

    name: str
    pages: list[Image.Image]
    source: str
    licence: str
    landscape: bool = False


@dataclass
class Category:
    """A kind of document: its name, what it looks like, and a builder of its documents."""

    name: str
    looks: str
    build: Callable[[Path], list[SourceDoc]]
    docs: list[SourceDoc] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def _pkg_of(path: str | Path) -> str:
    """``package version`` owning a file (dpkg), e.g. ``coreutils 9.1-1``."""
    try:
        pkg = _run(["dpkg", "-S", str(path)], text=True).stdout.split(":", 1)[0].split(",")[0].strip()
        ver = _run(["dpkg-query", "-W", "-f=${Version}", pkg], text=True).stdout.strip()
        return f"{pkg} {ver}"
    except (subprocess.CalledProcessError, OSError):
        return "unknown package"


def _tool_version(pkg: str) -> str:
    try:
        return _run(["dpkg-query", "-W", "-f=${Version}", pkg], text=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        return "?"


def _ps_pages(ps: Path, tmp: Path, first: int, last: int, color: bool = False) -> list[Image.Image]:
    """Rasterise pages ``first..last`` (1-based) of a PostScript file with ghostscript."""
    out = tmp / f"{ps.stem}-gs"
    out.mkdir(exist_ok=True)
    for f in out.glob("*.png"):
        f.unlink()
    _run(["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", f"-sDEVICE={'png16m' if color else 'pnggray'}", f"-r{RENDER_DPI}",
          "-dTextAlphaBits=4", "-dGraphicsAlphaBits=4", f"-dFirstPage={first}", f"-dLastPage={last}",
          f"-sOutputFile={out}/p-%03d.png", str(ps)])
    return [Image.open(f).copy() for f in sorted(out.glob("p-*.png"))]


def _ps_page_count(ps: Path) -> int:
    return len(re.findall(rb"^%%Page:", ps.read_bytes(), flags=re.M))


def _pdf_pages(pdf: Path, pages: list[int]) -> list[Image.Image]:
    """Rasterise the given 1-based pages of a PDF with poppler, in grey."""
    out = []
    for p in pages:
        png = _run(["pdftoppm", "-r", str(RENDER_DPI), "-f", str(p), "-l", str(p), "-gray", "-png", str(pdf)]).stdout
        out.append(Image.open(io.BytesIO(png)).copy())
    return out


def _pdf_page_count(pdf: Path) -> int:
    info = _run(["pdfinfo", str(pdf)], text=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, flags=re.M).group(1))


def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def _take(docs: list[SourceDoc]) -> list[SourceDoc]:
    """Keep documents (at most PAGES_PER_DOC pages each) until TARGET_PAGES pages are reached."""
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
# the eight kinds
# ---------------------------------------------------------------------------------------------

MAN_PAGES = ["ls", "tar", "grep", "sed", "find", "gzip", "dpkg", "apt-get", "enscript", "cp", "date", "sort"]


def build_man_pages(tmp: Path) -> list[SourceDoc]:
    """Man pages rendered by ``man -Tps`` (groff -man, Times, letter paper)."""
    docs = []
    for name in MAN_PAGES:
        found = _run(["man", "-w", name], text=True).stdout.strip()
        ps = tmp / f"man-{name}.ps"
        ps.write_bytes(_run(["man", "-Tps", name]).stdout)
        n = min(PAGES_PER_DOC, _ps_page_count(ps))
        docs.append(SourceDoc(name, _ps_pages(ps, tmp, 1, n), f"Debian {_pkg_of(found)}: {found}, rendered with man -Tps (groff {_tool_version('groff-base')})",
                              _licence_of(found)))
    return _take(docs)


LICENCES = ["GPL-3", "Apache-2.0", "LGPL-2.1", "MPL-2.0", "GFDL-1.3", "Artistic", "GPL-2", "MPL-1.1", "LGPL-3", "CC0-1.0"]


def build_licence_texts(tmp: Path) -> list[SourceDoc]:
    """Licence texts of ``/usr/share/common-licenses`` printed by enscript (Courier 10, header)."""
    docs = []
    for name in LICENCES:
        src = Path("/usr/share/common-licenses") / name
        ps = tmp / f"lic-{name}.ps"
        _run(["enscript", "-q", "-p", str(ps), "--header=$n||Page $% of $=", str(src)])
        n = min(PAGES_PER_DOC, _ps_page_count(ps))
        docs.append(SourceDoc(name, _ps_pages(ps, tmp, 1, n), f"Debian {_pkg_of(src)}: {src}, printed with enscript {_tool_version('enscript')}",
                              f"verbatim copying permitted (the licence text {name} itself)"))
    return _take(docs)


PY_MODULES = ["textwrap", "shutil", "argparse", "csv", "heapq", "bisect", "fractions", "difflib", "string", "tokenize"]


def build_code_listings(tmp: Path) -> list[SourceDoc]:
    """Python standard-library source, 2-up landscape with line numbers and bold keywords (enscript)."""
    docs = []
    for name in PY_MODULES:
        src = Path(f"/usr/lib/python3.11/{name}.py")
        ps = tmp / f"code-{name}.ps"
        _run(["enscript", "-q", "-2r", "-Epython", "-C", "-p", str(ps), "--header=$n||Page $% of $=", str(src)])
        n = min(PAGES_PER_DOC, _ps_page_count(ps))
        docs.append(SourceDoc(name, _ps_pages(ps, tmp, 1, n), f"Debian {_pkg_of(src)}: {src}, printed with enscript {_tool_version('enscript')} -2r -Epython -C",
                              "PSF-2.0", landscape=True))
    return _take(docs)


MANUALS = [
    ("R-intro", "/usr/share/doc/r-doc-pdf/manual/R-intro.pdf", "GPL-2+ (R manuals, per r-doc-pdf's copyright)"),
    ("standards", "/usr/share/doc/gnu-standards/standards.pdf.gz", "GFDL-1.3+ (gnu-standards)"),
    ("R-admin", "/usr/share/doc/r-doc-pdf/manual/R-admin.pdf", "GPL-2+ (R manuals, per r-doc-pdf's copyright)"),
    ("R-data", "/usr/share/doc/r-doc-pdf/manual/R-data.pdf", "GPL-2+ (R manuals, per r-doc-pdf's copyright)"),
    ("maintain", "/usr/share/doc/gnu-standards/maintain.pdf.gz", "GFDL-1.3+ (gnu-standards)"),
    ("R-lang", "/usr/share/doc/r-doc-pdf/manual/R-lang.pdf", "GPL-2+ (R manuals, per r-doc-pdf's copyright)"),
    ("R-exts", "/usr/share/doc/r-doc-pdf/manual/R-exts.pdf", "GPL-2+ (R manuals, per r-doc-pdf's copyright)"),
    ("R-ints", "/usr/share/doc/r-doc-pdf/manual/R-ints.pdf", "GPL-2+ (R manuals, per r-doc-pdf's copyright)"),
    ("R-FAQ", "/usr/share/doc/r-doc-pdf/manual/R-FAQ.pdf", "GPL-2+ (R manuals, per r-doc-pdf's copyright)"),
]


def build_texinfo_manuals(tmp: Path) -> list[SourceDoc]:
    """Body pages (past title and contents) of Texinfo manuals shipped as PDFs in Debian doc packages."""
    docs = []
    for name, path, licence in MANUALS:
        pdf = Path(path)
        if pdf.suffix == ".gz":
            plain = tmp / pdf.stem
            plain.write_bytes(gzip.decompress(pdf.read_bytes()))
            pdf_local = plain
        else:
            pdf_local = pdf
        n = _pdf_page_count(pdf_local)
        lo = max(6, n // 8)
        pages = sorted(_rng("manual", name).choice(np.arange(lo, n - 1), size=PAGES_PER_DOC, replace=False).tolist())
        docs.append(SourceDoc(name, _pdf_pages(pdf_local, pages), f"Debian {_pkg_of(pdf)}: {pdf}, pages {pages} as shipped (Texinfo)", licence))
    return _take(docs)


DEBIAN_TEXTS = ["social-contract.txt.gz", "constitution.txt.gz", "debian-manifesto.gz", "bug-reporting.txt.gz",
                "bug-log-access.txt", "bug-maint-info.txt.gz", "mailing-lists.txt.gz", "bug-maint-mailcontrol.txt.gz",
                "source-unpack.txt", "bug-mailserver-refcard.txt"]


def _text_to_ms(text: str) -> str:
    """Plain text paragraphs -> groff ms source: title, two columns, short lines as headings."""

    def esc(line: str) -> str:
        line = line.replace("\\", "\\e")
        return "\\&" + line if line[:1] in (".", "'") else line

    text = re.sub(r"(?m)^\s*[_=-]{5,}\s*$", "", text.expandtabs())  # rules drawn with underscores
    paras = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
    out = [".nr PS 10", ".nr VS 12", ".TL", esc(" ".join(paras[0].split())), ".2C"]
    for p in paras[1:]:
        flat = " ".join(p.split())
        if len(flat) < 60 and "\n" not in p.strip() and not flat.endswith((".", ",", ";", ":")):
            out += [".SH", esc(flat)]
        elif re.match(r"^\s+\S", p) and all(len(ln) < 80 for ln in p.splitlines()):
            out += [".DS L", *[esc(ln.strip()) for ln in p.splitlines()], ".DE"]
        else:
            out += [".PP", esc(flat)]
    return "\n".join(out) + "\n"


def build_two_column_texts(tmp: Path) -> list[SourceDoc]:
    """Debian's founding documents and BTS guides set in two columns by ``groff -ms``."""
    docs = []
    for name in DEBIAN_TEXTS:
        src = Path("/usr/share/doc/debian") / name
        raw = gzip.decompress(src.read_bytes()) if src.suffix == ".gz" else src.read_bytes()
        ms = tmp / f"{name}.ms"
        ms.write_text(_text_to_ms(raw.decode("utf-8", "replace")))
        ps = tmp / f"{name}.ps"
        ps.write_bytes(_run(["groff", "-ms", "-Tps", str(ms)]).stdout)
        n = min(PAGES_PER_DOC, _ps_page_count(ps))
        docs.append(SourceDoc(name.split(".")[0], _ps_pages(ps, tmp, 1, n),
                              f"Debian {_pkg_of(src)}: {src}, set with groff -ms -Tps, two columns ({_tool_version('groff-base')})",
                              "GPL (Debian BTS documents) / Open Publication License (debian.org documents), per doc-debian's copyright"))
    return _take(docs)


def build_sheet_music(tmp: Path) -> list[SourceDoc]:
    """ABC tunes shipped with abcm2ps and abcmidi, engraved by abcm2ps."""
    docs = []
    sources = [(p, "GPL-3+ (abcm2ps)") for p in sorted(Path("/usr/share/doc/abcm2ps/examples").glob("*.abc"))]
    sources += [(p, "GPL-2+ (abcmidi)") for p in sorted(Path("/usr/share/doc/abcmidi/examples").glob("*.abc"))]
    for src, licence in sources:
        ps = tmp / f"abc-{src.parent.parent.name}-{src.stem}.ps"
        try:
            _run(["abcm2ps", "-q", "-O", str(ps), str(src)])
        except subprocess.CalledProcessError:
            continue
        if not ps.exists() or _ps_page_count(ps) == 0:
            continue  # examples needing fonts Debian does not ship (bravura, glyphs, free)
        n = min(PAGES_PER_DOC, _ps_page_count(ps))
        docs.append(SourceDoc(f"{src.parent.parent.name}-{src.stem}", _ps_pages(ps, tmp, 1, n),
                              f"Debian {_pkg_of(src)}: {src}, engraved with abcm2ps {_tool_version('abcm2ps')}", licence))
    # Interleave the two packages so both are represented.
    a = [d for d in docs if d.name.startswith("abcm2ps")]
    b = [d for d in docs if not d.name.startswith("abcm2ps")]
    mixed = [d for pair in zip(a, b) for d in pair] + a[len(b):] + b[len(a):]
    return _take(mixed)


CALENDARS = [("2023-h1", ["-l"], 1, 2023), ("2023-h2", ["-p"], 7, 2023), ("2024-h1", ["-l", "-m"], 1, 2024),
             ("2024-h2", ["-p", "-F", "1"], 7, 2024), ("2025-h1", ["-l", "-F", "1", "-m"], 1, 2025),
             ("2025-h2", ["-p", "-m"], 7, 2025), ("2026-h1", ["-l"], 1, 2026), ("2026-h2", ["-p", "-F", "1"], 7, 2026),
             ("2027-h1", ["-l", "-m"], 1, 2027)]


def build_calendars(tmp: Path) -> list[SourceDoc]:
    """Monthly calendars by pcal: landscape and portrait, Sunday- or Monday-first, with or without moons."""
    docs = []
    for name, opts, month, year in CALENDARS:
        ps = tmp / f"cal-{name}.ps"
        _run(["pcal", *opts, "-o", str(ps), str(month), str(year), str(PAGES_PER_DOC)], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp)})
        docs.append(SourceDoc(name, _ps_pages(ps, tmp, 1, PAGES_PER_DOC),
                              f"pcal {_tool_version('pcal')} {' '.join(opts)} {month} {year} {PAGES_PER_DOC} (Debian pcal)",
                              "GPL-2+ (pcal output of public calendar data)", landscape="-l" in opts))
    return _take(docs)


GNUPLOT_DEMOS = ["simple", "errorbars", "histograms", "candlesticks", "boxplot", "polar", "steps", "multiaxis",
                 "fillcrvs", "finance", "surface1", "contours", "smooth"]


def build_charts(tmp: Path) -> list[SourceDoc]:
    """The first plots of gnuplot's demo scripts (with their data), PostScript terminal, colour."""
    docs = []
    examples = Path("/usr/share/doc/gnuplot/examples")
    for name in GNUPLOT_DEMOS:
        ps = tmp / f"gp-{name}.ps"
        script = tmp / f"gp-{name}.gp"
        script.write_text(f'set terminal postscript landscape enhanced color font "Helvetica,14"\nset output "{ps}"\nload "{name}.dem"\n')
        subprocess.run(["gnuplot", str(script)], cwd=examples, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
        if not ps.exists() or _ps_page_count(ps) == 0:
            continue
        n = min(PAGES_PER_DOC, _ps_page_count(ps))
        docs.append(SourceDoc(name, _ps_pages(ps, tmp, 1, n, color=True),
                              f"Debian {_pkg_of(examples / (name + '.dem'))}: {examples}/{name}.dem, gnuplot {_tool_version('gnuplot-nox')} postscript terminal",
                              "gnuplot licence (free to distribute unmodified with modifications as patches; Debian main)",
                              landscape=True))
    return _take(docs)


def _licence_of(path: str) -> str:
    pkg = _pkg_of(path).split()[0]
    copyright_file = Path(f"/usr/share/doc/{pkg}/copyright")
    if copyright_file.is_file():
        m = re.search(r"^License:\s*(\S.*)$", copyright_file.read_text(errors="replace"), flags=re.M)
        if m:
            return f"{m.group(1).strip()} (per {copyright_file})"
    return f"see /usr/share/doc/{pkg}/copyright"


CATEGORIES = [
    Category("man_page", "Unix manual pages: Times, bold section headings at the margin, indented paragraphs", build_man_pages),
    Category("licence_text", "licence texts in monospace with a page header", build_licence_texts),
    Category("code_listing", "program source, two pages per landscape sheet, line numbers", build_code_listings),
    Category("texinfo_manual", "TeX-typeset manuals: Computer Modern, running heads, code examples", build_texinfo_manuals),
    Category("two_column_text", "justified two-column prose with a centred title", build_two_column_texts),
    Category("sheet_music", "engraved music: staves, notes, titles", build_sheet_music),
    Category("calendar", "monthly calendar grids", build_calendars),
    Category("chart", "plots: axes, curves, bars, 3-D surfaces, keys", build_charts),
]


# ---------------------------------------------------------------------------------------------
# degradation and output
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanProfile:
    """One document's 'scanner': resolution, paper, ink, bilevel or not, colour or not, JPEG quality.

    ``upright``: a landscape printout turned the right way up before scanning (half of them);
    the others keep their content sideways, as a sheet fed through a portrait scanner does.
    """

    dpi: int
    paper: float
    ink: float
    bilevel: bool
    colour: bool
    tint: tuple[float, float, float]
    jpeg_quality: int
    upright: bool = False


def scan_profile(category: str, doc: str, is_colour_source: bool, landscape: bool = False) -> ScanProfile:
    """Draw a document's scan settings from a generator seeded by its category and name."""
    r = _rng("profile", category, doc)
    return ScanProfile(
        dpi=int(r.integers(100, 151)),
        paper=float(r.uniform(0.86, 0.98)),
        ink=float(r.uniform(0.0, 0.2)),
        bilevel=bool(r.random() < 0.25),
        colour=bool(is_colour_source and r.random() < 0.34),
        tint=(1.0, float(r.uniform(0.96, 1.0)), float(r.uniform(0.88, 0.98))),
        jpeg_quality=int(r.integers(40, 86)),
        upright=bool(landscape and r.random() < 0.5),
    )


def degrade(page: Image.Image, profile: ScanProfile, rng: np.random.Generator) -> Image.Image:
    """Make a clean rendered page look scanned.

    Args:
        page: clean page, mode ``L`` or ``RGB``, at :data:`RENDER_DPI`.
        profile: the document's scan settings; rng: the page's generator.

    Returns:
        The scanned page: mode ``1`` (bilevel), ``L`` or ``RGB``, at ``profile.dpi``.
    """
    im = page.convert("RGB" if profile.colour else "L")
    if profile.upright:
        im = im.rotate(-90, expand=True)  # landscape content reads bottom-to-top on the sheet
    scale = profile.dpi / RENDER_DPI
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    w, h = im.size
    angle = float(rng.uniform(-1.5, 1.5))
    dx, dy = (float(v) for v in rng.uniform(-0.015, 0.015, size=2) * (w, h))
    white = (255,) * len(im.getbands())
    im = im.rotate(angle, Image.Resampling.BICUBIC, expand=False, translate=(dx, dy), fillcolor=white if len(white) > 1 else 255)
    a = np.asarray(im, np.float32) / 255.0
    if a.ndim == 2:
        a = a[:, :, None]
    # paper tone and ink density, uneven illumination (a linear ramp in a random direction)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = 1.0 - float(rng.uniform(0.0, 0.06)) * ((np.cos(theta) * xx / w + np.sin(theta) * yy / h) + 1) / 2
    tint = np.array(profile.tint[: a.shape[2]] if a.shape[2] == 3 else [1.0], np.float32)
    a = profile.ink + (profile.paper - profile.ink) * a
    a = a * ramp[:, :, None] * tint
    im = Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8).squeeze())
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.1))))
    a = np.asarray(im, np.float32)
    a = a + rng.normal(0, float(rng.uniform(2, 9)), size=a.shape).astype(np.float32)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if profile.bilevel:
        threshold = float(rng.uniform(0.55, 0.7)) * 255 * profile.paper
        im = im.convert("L").point(lambda v: 255 if v > threshold else 0).convert("1")
    return im


def save_document(pages: list[Image.Image], base: Path, fmt: str, profile: ScanProfile) -> list[tuple[Path, int]]:
    """Write a document's scanned pages in ``fmt``; returns ``(file, page number)`` per page."""
    base.parent.mkdir(parents=True, exist_ok=True)
    dpi = (profile.dpi, profile.dpi)
    if fmt == "pdf":
        path = base.with_suffix(".pdf")
        extra = {} if pages[0].mode == "1" else {"quality": profile.jpeg_quality}  # bilevel pages go in as CCITT
        fixed = time.gmtime(0)  # Pillow stamps the PDF with the current time unless told; keep files reproducible
        extra |= {"creationDate": fixed, "modDate": fixed}
        pages[0].save(path, save_all=True, append_images=pages[1:], resolution=float(profile.dpi), **extra)
        return [(path, i + 1) for i in range(len(pages))]
    if fmt == "tiff":
        path = base.with_suffix(".tif")
        compression = "group4" if pages[0].mode == "1" else "tiff_adobe_deflate"
        pages[0].save(path, save_all=True, append_images=pages[1:], compression=compression, dpi=dpi)
        return [(path, i + 1) for i in range(len(pages))]
    out = []
    for i, im in enumerate(pages):
        if fmt == "png":
            path = base.parent / f"{base.name}-p{i + 1}.png"
            im.save(path, optimize=False, dpi=dpi)
        else:
            path = base.parent / f"{base.name}-p{i + 1}.jpg"
            im.convert("L" if im.mode == "1" else im.mode).save(path, quality=profile.jpeg_quality, dpi=dpi)
        out.append((path, 1))
    return out


def build(out: Path, with_sample_docs: bool = True, log=print, styles: bool = False) -> list[dict]:
    """Build the corpus under ``out`` (replacing it) and return the label rows written to labels.csv.

    Args:
        out: output folder (replaced). with_sample_docs: copy sample_docs' real scans in
            (ignored with ``styles``). log: progress printer.
        styles: scan-style-independent corpus (issue 13): each document gets a style from
            :data:`scan_styles.STYLES` by :func:`scan_styles.assign_styles` (balanced within every
            category, independent of it), is scanned by :func:`scan_styles.apply_style` and saved
            in that style's formats; ``labels.csv`` gets a ``style`` column. sample_docs' real
            scans are left out (``dev_corpus2.py`` re-renders them in the styles).

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
    with tempfile.TemporaryDirectory(prefix="docsort-devcorpus-") as tmpdir:
        tmp = Path(tmpdir)
        for ci, cat in enumerate(CATEGORIES):
            cat.docs = cat.build(tmp)
            n = sum(len(d.pages) for d in cat.docs)
            log(f"{cat.name}: {len(cat.docs)} documents, {n} pages")
            if styles:
                rows += _styled_category(cat, out)
                continue
            for di, doc in enumerate(cat.docs):
                fmt = FORMATS[(di + ci) % len(FORMATS)]
                profile = scan_profile(cat.name, doc.name, any(p.mode == "RGB" for p in doc.pages), doc.landscape)
                scanned = [degrade(p, profile, _rng("page", cat.name, doc.name, i)) for i, p in enumerate(doc.pages)]
                for path, page in save_document(scanned, out / cat.name / doc.name, fmt, profile):
                    rows.append({"file": path.relative_to(out).as_posix(), "page": page, "category": cat.name,
                                 "source": doc.source, "licence": doc.licence})
    if with_sample_docs and not styles:
        with open(SAMPLE_DOCS / "labels.csv", newline="") as f:
            for r in csv.DictReader(f):
                dst = out / "real_scans" / r["file"]
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(SAMPLE_DOCS / r["file"], dst)
                rows.append({**r, "file": dst.relative_to(out).as_posix(), "source": r["source"] + " (via docsort sample_docs/)"})
        for name in ("README.md", "LICENSES"):
            src = SAMPLE_DOCS / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, out / "real_scans" / name)
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "page", "category", *(["style"] if styles else []), "source", "licence"])
        w.writeheader()
        w.writerows(rows)
    _write_readme(out, rows)
    return rows


def _styled_category(cat: Category, out: Path) -> list[dict]:
    """Scan one category's documents in balanced, category-independent styles; its label rows."""
    rows = []
    assigned = assign_styles(cat.name, [d.name for d in cat.docs])
    for doc in cat.docs:
        style = assigned[doc.name]
        params = style_params(style, cat.name, doc.name)
        upright = doc.landscape and _rng("upright", cat.name, doc.name).random() < 0.5
        pages = [p.rotate(-90, expand=True) if upright else p for p in doc.pages]
        scanned = [apply_style(p, params, _rng("styled-page", cat.name, doc.name, i)) for i, p in enumerate(pages)]
        for path, page in save_styled(scanned, out / cat.name / doc.name, params):
            rows.append({"file": path.relative_to(out).as_posix(), "page": page, "category": cat.name, "style": style,
                         "source": doc.source, "licence": doc.licence})
    return rows


def _write_readme(out: Path, rows: list[dict]) -> None:
    by_cat = Counter(r["category"] for r in rows)
    by_fmt: dict[str, Counter] = {}
    for r in rows:
        by_fmt.setdefault(r["category"], Counter())[Path(r["file"]).suffix.lstrip(".")] += 1
    looks = {c.name: c.looks for c in CATEGORIES}
    lines = ["# docsort development corpus", "", "Built by `benchmarks/dev_corpus.py` (see its docstring). Labels: `labels.csv`.", "",
             "| category | pages | formats | looks like |", "|---|---|---|---|"]
    for cat, n in by_cat.items():
        fmts = ", ".join(f"{k} {v}" for k, v in sorted(by_fmt[cat].items()))
        lines.append(f"| {cat} | {n} | {fmts} | {looks.get(cat, 'real scans from sample_docs/')} |")
    lines += ["", f"{len(rows)} pages in {len({r['file'] for r in rows})} files."]
    if rows and "style" in rows[0]:
        lines += ["", *style_table(rows)]
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder (replaced)")
    ap.add_argument("--no-sample-docs", action="store_true", help="leave out sample_docs' real scans")
    ap.add_argument("--styles", action="store_true",
                    help="scan style independent of category (issue 13): balanced styles, a 'style' column; no sample_docs")
    a = ap.parse_args()
    rows = build(a.out, with_sample_docs=not a.no_sample_docs, styles=a.styles)
    print(f"{len(rows)} pages, {len({r['file'] for r in rows})} files, labels in {a.out / 'labels.csv'}", file=sys.stderr)
