"""Scan styles for docsort's development corpora: one fixed list that every document type gets.

A legal team's pile mixes scanners: fax pages and bilevel office scans next to greyscale JPEGs
on grey paper, colour scans and phone photos of pages (issue 13). A development corpus whose
scan style follows the document's source hides a sorter that groups by scan style, so both
corpus builders (``dev_corpus.py --styles`` and ``dev_corpus2.py``) draw each document's style
from :data:`STYLES` with :func:`assign_styles`: round-robin over a seeded shuffle of a
category's documents, so every type gets every style in near-equal shares and the style says
nothing about the type. The style of each page is written to ``labels.csv`` (column ``style``).

| style | looks like | mode, dpi | file formats |
|---|---|---|---|
| ``fax_bilevel`` | fax / bilevel office scan: thresholded, 1 bit | ``1``, 150/200/300 dpi | TIFF CCITT G4, PDF CCITT G4 |
| ``grey_jpeg`` | cheap greyscale scan: grey paper tone, low contrast, heavy JPEG | ``L``, 100-150 dpi | JPEG q 15-40, PDF with JPEG q 15-40 |
| ``colour`` | colour flatbed scan: cream paper tint, mild JPEG | ``RGB``, 150 dpi | JPEG q 70-90, PDF with JPEG |
| ``clean_grey`` | good greyscale scan: white paper, little noise, lossless | ``L``, 150-200 dpi | PNG, TIFF deflate |
| ``photo`` | phone photo of the page on a desk: perspective, vignetting, shading, colour | ``RGB``, ~1500 px long side | JPEG q 60-85 |

Own code (Pillow + NumPy, ~150 lines), seeded per document and page, so corpora are
byte-identical on re-runs; ``augraphy`` does more but costs seconds per page and pulls OpenCV.
The perspective of ``photo`` is Pillow's ``Image.transform(..., Image.PERSPECTIVE)`` with the
8 coefficients solved from four corner correspondences (the standard homography, e.g.
Hartley & Zisserman 2004, ch. 4).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

#: The scan styles, in the order :func:`assign_styles` deals them out.
STYLES = ("fax_bilevel", "grey_jpeg", "colour", "clean_grey", "photo")

#: Resolution the clean pages are rendered at, dots per inch (both builders).
RENDER_DPI = 150


def rng_for(*parts: object) -> np.random.Generator:
    """A NumPy generator seeded by the CRC-32 of the parts joined with ``/`` (deterministic)."""
    return np.random.default_rng(zlib.crc32("/".join(map(str, parts)).encode()))


def assign_styles(category: str, doc_names: Sequence[str], salt: str = "styles") -> dict[str, str]:
    """Give each document of one category a scan style, balanced and independent of the category.

    The documents are shuffled with a generator seeded by ``salt`` and ``category``, then dealt
    :data:`STYLES` round-robin, starting at a seeded offset (so the first style is not always the
    most frequent one). Every style gets ``len(doc_names) // 5`` or one more documents.

    Args:
        category: the category name (seed only). doc_names: its documents' unique names.

    Returns:
        ``{doc name: style}``.
    """
    r = rng_for(salt, category)
    order = list(r.permutation(len(doc_names)))
    start = int(r.integers(len(STYLES)))
    return {doc_names[i]: STYLES[(start + j) % len(STYLES)] for j, i in enumerate(order)}


@dataclass(frozen=True)
class StyleParams:
    """One document's scanner under a style (drawn once per document by :func:`style_params`)."""

    style: str
    dpi: int
    paper: float
    ink: float
    tint: tuple[float, float, float]
    jpeg_quality: int
    blur: tuple[float, float]
    noise: tuple[float, float]
    fmt: str


def style_params(style: str, category: str, doc: str) -> StyleParams:
    """Draw the scan settings of one document under ``style`` (seeded by category and name).

    Raises:
        ValueError: unknown style.
    """
    r = rng_for("style-params", style, category, doc)
    if style == "fax_bilevel":
        return StyleParams(style, int(r.choice([150, 200, 300])), float(r.uniform(0.9, 0.98)), float(r.uniform(0.0, 0.15)),
                           (1.0, 1.0, 1.0), 0, (0.3, 0.8), (3.0, 8.0), str(r.choice(["tiff", "pdf"])))
    if style == "grey_jpeg":
        return StyleParams(style, int(r.integers(100, 151)), float(r.uniform(0.62, 0.82)), float(r.uniform(0.1, 0.3)),
                           (1.0, 1.0, 1.0), int(r.integers(15, 41)), (0.5, 1.2), (4.0, 10.0), str(r.choice(["jpg", "pdf"])))
    if style == "colour":
        return StyleParams(style, 150, float(r.uniform(0.88, 0.97)), float(r.uniform(0.0, 0.12)),
                           (1.0, float(r.uniform(0.93, 0.99)), float(r.uniform(0.8, 0.93))), int(r.integers(70, 91)),
                           (0.3, 0.8), (2.0, 5.0), str(r.choice(["jpg", "pdf"])))
    if style == "clean_grey":
        return StyleParams(style, int(r.choice([150, 200])), float(r.uniform(0.96, 1.0)), float(r.uniform(0.0, 0.06)),
                           (1.0, 1.0, 1.0), 0, (0.2, 0.5), (0.5, 2.0), str(r.choice(["png", "tiff"])))
    if style == "photo":
        return StyleParams(style, 0, float(r.uniform(0.85, 0.97)), float(r.uniform(0.05, 0.2)),
                           (1.0, float(r.uniform(0.92, 0.99)), float(r.uniform(0.78, 0.92))), int(r.integers(60, 86)),
                           (0.6, 1.4), (3.0, 7.0), "jpg")
    raise ValueError(f"unknown scan style {style!r}; known: {', '.join(STYLES)}")


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> list[float]:
    """The 8 coefficients Pillow's PERSPECTIVE transform wants: output (x, y) -> input (x', y')."""
    a = []
    b = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return np.linalg.solve(np.array(a, float), np.array(b, float)).tolist()


def _photograph(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The page lying on a desk, photographed from slightly off-axis: perspective, desk, vignette."""
    im = im.convert("RGB")
    w, h = im.size
    long_side = int(rng.integers(1400, 1700))
    margin = float(rng.uniform(0.04, 0.1))
    cw, ch = (int(round(w * (1 + 2 * margin))), int(round(h * (1 + 2 * margin))))
    desk = np.array([rng.uniform(90, 170), rng.uniform(70, 140), rng.uniform(50, 110)], np.float32)
    canvas = Image.new("RGB", (cw, ch), tuple(int(v) for v in desk))
    # Where the page corners land in the photo: jittered inward, more at the far (top) edge.
    x0, y0 = margin * w, margin * h
    corners = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]])
    squeeze = float(rng.uniform(0.02, 0.07)) * w  # the far edge looks shorter
    jitter = rng.uniform(-0.02, 0.02, size=(4, 2)) * (w, h)
    dst = corners + jitter + np.array([[squeeze, 0], [-squeeze, 0], [0, 0], [0, 0]])
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], float)
    warped = im.transform((cw, ch), Image.Transform.PERSPECTIVE, _perspective_coeffs(dst, src), Image.Resampling.BICUBIC,
                          fillcolor=(0, 0, 0))
    mask = Image.new("L", im.size, 255).transform((cw, ch), Image.Transform.PERSPECTIVE, _perspective_coeffs(dst, src),
                                                  Image.Resampling.BILINEAR, fillcolor=0)
    canvas.paste(warped, (0, 0), mask)
    a = np.asarray(canvas, np.float32)
    # Light from one side and a vignette (cos^4-like fall-off to the corners), a faint shadow band.
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    side = 1.0 - float(rng.uniform(0.1, 0.25)) * ((np.cos(theta) * xx / cw + np.sin(theta) * yy / ch) + 1) / 2
    r2 = ((xx / cw - 0.5) ** 2 + (yy / ch - 0.5) ** 2) / 0.5
    vignette = 1.0 - float(rng.uniform(0.15, 0.3)) * r2
    warm = np.array([1.0, float(rng.uniform(0.95, 1.0)), float(rng.uniform(0.85, 0.95))], np.float32)
    a = a * (side * vignette)[:, :, None] * warm
    out = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    scale = long_side / max(cw, ch)
    return out.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.LANCZOS)


def apply_style(page: Image.Image, params: StyleParams, rng: np.random.Generator, source_dpi: float = RENDER_DPI) -> Image.Image:
    """Scan one clean (or already scanned) page in a style.

    Args:
        page: the page, any Pillow mode, at ``source_dpi``.
        params: the document's settings (:func:`style_params`).
        rng: this page's generator (skew, shift, light, blur, noise).
        source_dpi: resolution of ``page`` in dots per inch.

    Returns:
        Mode ``1`` (``fax_bilevel``), ``L`` (``grey_jpeg``, ``clean_grey``) or ``RGB``
        (``colour``, ``photo``); at ``params.dpi`` (``photo``: 1400-1700 px long side).
    """
    colour = params.style in ("colour", "photo")
    im = page.convert("RGB" if colour else "L")
    if params.dpi:
        scale = params.dpi / source_dpi
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    w, h = im.size
    if params.style != "photo":
        angle = float(rng.uniform(-1.5, 1.5))
        dx, dy = (float(v) for v in rng.uniform(-0.015, 0.015, size=2) * (w, h))
        im = im.rotate(angle, Image.Resampling.BICUBIC, expand=False, translate=(dx, dy), fillcolor=(255,) * 3 if colour else 255)
    a = np.asarray(im, np.float32) / 255.0
    if a.ndim == 2:
        a = a[:, :, None]
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = 1.0 - float(rng.uniform(0.0, 0.08)) * ((np.cos(theta) * xx / w + np.sin(theta) * yy / h) + 1) / 2
    tint = np.array(params.tint if a.shape[2] == 3 else [1.0], np.float32)
    a = params.ink + (params.paper - params.ink) * a
    a = a * ramp[:, :, None] * tint
    im = Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8).squeeze())
    if params.style == "photo":
        im = _photograph(im, rng)
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(*params.blur))))
    a = np.asarray(im, np.float32)
    a = a + rng.normal(0, float(rng.uniform(*params.noise)), size=a.shape).astype(np.float32)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if params.style == "fax_bilevel":
        threshold = float(rng.uniform(0.55, 0.7)) * 255 * params.paper
        im = im.point(lambda v: 255 if v > threshold else 0).convert("1")
    return im


def save_styled(pages: list[Image.Image], base: Path, params: StyleParams) -> list[tuple[Path, int]]:
    """Write a document's styled pages in its style's format; returns ``(file, page number)`` per page.

    ``pdf``: one multi-page PDF (bilevel pages CCITT G4, others JPEG at the style's quality);
    ``tiff``: one multi-page TIFF (G4 for bilevel, deflate otherwise); ``png`` / ``jpg``: one file
    per page. Files carry the style's dpi (``photo``: 150 dpi nominal); PDFs carry a fixed date.
    """
    base.parent.mkdir(parents=True, exist_ok=True)
    dpi = params.dpi or RENDER_DPI
    if params.fmt == "pdf":
        path = base.with_suffix(".pdf")
        extra = {} if pages[0].mode == "1" else {"quality": params.jpeg_quality}
        fixed = time.gmtime(0)
        pages[0].save(path, save_all=True, append_images=pages[1:], resolution=float(dpi), creationDate=fixed, modDate=fixed, **extra)
        return [(path, i + 1) for i in range(len(pages))]
    if params.fmt == "tiff":
        path = base.with_suffix(".tif")
        compression = "group4" if pages[0].mode == "1" else "tiff_adobe_deflate"
        pages[0].save(path, save_all=True, append_images=pages[1:], compression=compression, dpi=(dpi, dpi))
        return [(path, i + 1) for i in range(len(pages))]
    out = []
    for i, im in enumerate(pages):
        path = base.parent / f"{base.name}-p{i + 1}.{params.fmt}"
        if params.fmt == "png":
            im.save(path, optimize=False, dpi=(dpi, dpi))
        else:
            im.save(path, quality=params.jpeg_quality, dpi=(dpi, dpi))
        out.append((path, 1))
    return out


def style_table(rows: list[dict]) -> list[str]:
    """Markdown lines: pages per category (rows) and scan style (columns), from label rows with a ``style``."""
    cats = list(dict.fromkeys(r["category"] for r in rows))
    counts = {(r["category"], r["style"]): 0 for r in rows}
    for r in rows:
        counts[(r["category"], r["style"])] += 1
    lines = ["| category | " + " | ".join(STYLES) + " | pages |", "|---|" + "---|" * (len(STYLES) + 1)]
    for c in cats:
        cells = [counts.get((c, s), 0) for s in STYLES]
        lines.append(f"| {c} | " + " | ".join(map(str, cells)) + f" | {sum(cells)} |")
    totals = [sum(counts.get((c, s), 0) for c in cats) for s in STYLES]
    lines.append("| **all** | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |")
    return lines
