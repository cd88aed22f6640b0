"""The *styles* stage: scan-style renderings of one page image (pure: image in, images out).

A pile of scans mixes scanners and settings: bilevel (1-bit) fax pages, greyscale JPEGs with grey
paper tone, low JPEG quality. Backbone features of one page differ more between those renderings
than features of two different documents scanned alike, so an unsupervised sort groups pages by
scan style (issue 13). :mod:`docsort.core.invariance` learns, from the collection itself, the feature
directions in which renderings of one page agree; this module makes the renderings.

Every function takes a Pillow image of mode ``"L"`` or ``"RGB"`` at render resolution (the
``RenderSettings.long_side_px`` image of :func:`docsort.core.pages.iter_pages`) and returns images of the
same size and mode. Randomness (paper tone, JPEG quality, noise, angle) comes only from the
``numpy.random.Generator`` passed in, so a seed per page gives the same renderings on every run.

Styles (:data:`STYLES`):

* ``as_is``: the page unchanged.
* ``bilevel``: Otsu-binarised (N. Otsu, "A threshold selection method from gray-level histograms",
  IEEE Trans. SMC 9(1), 1979): the threshold maximising the between-class variance of the grey-level
  histogram; output has exactly the values 0 and 255. A fax or 1-bit scan.
* ``bilevel_blur``: ``bilevel`` then a Gaussian blur (radius 0.6-1.2 px): a 1-bit scan at 200-300 dpi
  after the downscale to render resolution, whose strokes come out grey-edged.
* ``grey_paper``: the grey range compressed between an ink level (15-60) and a paper tone (185-230),
  plus mild Gaussian sensor noise (sigma 2-5 grey levels): a greyscale scan of off-white paper.
* ``jpeg_low``: ``grey_paper`` saved as JPEG at quality 8-25 and decoded: a low-quality greyscale
  JPEG (blocking and ringing).
* ``skew``: rotated by -2..2 degrees about the centre, corners filled with white: a page fed
  slightly askew. Not in the defaults (:data:`DEFAULT_STYLES`).
* ``photo``: the page photographed on a desk: a grey border of 3-12 % (the surface) and a
  perspective (corners moved by up to 4 %), scaled back to the page's size. In the defaults.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["STYLES", "DEFAULT_STYLES", "otsu_threshold", "restyle", "render_styles", "page_rng"]

#: Every style :func:`restyle` knows.
STYLES = ("as_is", "bilevel", "bilevel_blur", "grey_paper", "jpeg_low", "skew", "photo")

#: The renderings :func:`docsort.core.invariance.fit_projection` is fitted on by default: the five scan
#: styles of the held-out measurement in issue 13 and the page photographed on a desk, which won on
#: both style-balanced development corpora (benchmarks/RESULTS.md, "Scan style (issue 13)").
DEFAULT_STYLES = ("as_is", "bilevel", "bilevel_blur", "grey_paper", "jpeg_low", "photo")


def otsu_threshold(grey: np.ndarray) -> int:
    """Otsu's threshold of an 8-bit grey image (Otsu 1979), from its 256-bin histogram.

    Args:
        grey: uint8 array, any shape.

    Returns:
        t in 0..254: pixels ``> t`` are background (white), ``<= t`` ink. A flat image gives its
        value (clipped to 254), so binarising it keeps it white or black.
    """
    hist = np.bincount(np.asarray(grey, np.uint8).ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 127
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)  # pixels <= t
    w1 = total - w0
    mu0_sum = np.cumsum(hist * levels)
    mu_total = mu0_sum[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_total * w0 / total - mu0_sum) ** 2 / (w0 * w1 / total)
    between[(w0 == 0) | (w1 == 0)] = -1.0
    if between.max() < 0:  # one grey level only
        return int(min(np.flatnonzero(hist)[0], 254))
    return int(min(np.argmax(between), 254))


def _grey(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L") if image.mode != "L" else image, dtype=np.uint8)


def _like(arr: np.ndarray, image: Image.Image) -> Image.Image:
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    return out.convert(image.mode) if image.mode != "L" else out


def _bilevel(grey: np.ndarray) -> np.ndarray:
    return np.where(grey > otsu_threshold(grey), 255, 0).astype(np.uint8)


def _grey_paper(grey: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    paper = rng.uniform(185.0, 230.0)
    ink = rng.uniform(15.0, 60.0)
    sigma = rng.uniform(2.0, 5.0)
    out = ink + grey.astype(np.float64) * ((paper - ink) / 255.0)
    out += rng.normal(0.0, sigma, size=grey.shape)
    return np.rint(out)


def _photographed(grey: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The page photographed on a surface, kept at its size: a flat grey border of 3-12 % of each side
    (the desk), the corners moved by up to 4 % (a perspective, Pillow's ``QUAD`` transform), then
    scaled back to the page's size. A plain rendering on purpose (no light fall-off, no colour):
    measured with the development corpora's own, richer photo generator held out
    (benchmarks/RESULTS.md, "Scan style (issue 13)")."""
    w, h = grey.size
    m = float(rng.uniform(0.03, 0.12))
    bw, bh = max(1, int(w * m)), max(1, int(h * m))
    desk = int(rng.integers(60, 161))
    canvas = Image.new("L", (w + 2 * bw, h + 2 * bh), desk)
    canvas.paste(grey, (bw, bh))
    W, H = canvas.size
    j = rng.uniform(-0.04, 0.04, size=8) * np.array([W, H] * 4)
    quad = (0 + j[0], 0 + j[1], 0 + j[2], H + j[3], W + j[4], H + j[5], W + j[6], 0 + j[7])
    shot = canvas.transform((W, H), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR, fillcolor=desk)
    return shot.resize((w, h), Image.Resampling.BILINEAR)


def restyle(image: Image.Image, style: str, rng: np.random.Generator) -> Image.Image:
    """One scan-style rendering of a page.

    Args:
        image: Pillow image, mode ``"L"`` or ``"RGB"``, at render resolution (pixels).
        style: one of :data:`STYLES`.
        rng: the source of every random choice of the style (paper tone, quality, angle).

    Returns:
        A new image of the same size and mode (an RGB input comes back as grey RGB, except
        ``as_is``, which is a copy).

    Raises:
        ValueError: an unknown style or an image mode other than ``"L"`` / ``"RGB"``.
    """
    if image.mode not in ("L", "RGB"):
        raise ValueError(f"restyle needs an 'L' or 'RGB' image, got mode {image.mode!r}")
    if style == "as_is":
        return image.copy()
    grey = _grey(image)
    if style == "bilevel":
        return _like(_bilevel(grey), image)
    if style == "bilevel_blur":
        radius = rng.uniform(0.6, 1.2)
        blurred = Image.fromarray(_bilevel(grey), "L").filter(ImageFilter.GaussianBlur(radius))
        return _like(np.asarray(blurred), image)
    if style == "grey_paper":
        return _like(_grey_paper(grey, rng), image)
    if style == "jpeg_low":
        quality = int(rng.integers(8, 26))
        buf = io.BytesIO()
        Image.fromarray(np.clip(_grey_paper(grey, rng), 0, 255).astype(np.uint8), "L").save(buf, "JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            return _like(np.asarray(im.convert("L")), image)
    if style == "photo":
        return _like(np.asarray(_photographed(Image.fromarray(grey, "L"), rng)), image)
    if style == "skew":
        angle = rng.uniform(-2.0, 2.0)
        rotated = Image.fromarray(grey, "L").rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=255)
        return _like(np.asarray(rotated), image)
    raise ValueError(f"unknown scan style {style!r}; use one of {', '.join(STYLES)}")


def page_rng(seed: int, page_id: int) -> np.random.Generator:
    """The generator for one page's renderings: ``numpy.random.default_rng([seed, page_id])``
    (a ``SeedSequence`` of both), so each page's renderings depend only on the seed and its id,
    not on which other pages are rendered or in what order."""
    return np.random.default_rng([int(seed), int(page_id)])


def render_styles(image: Image.Image, styles: Sequence[str], rng: np.random.Generator) -> list[Image.Image]:
    """Every rendering of ``image`` in ``styles``, in that order (see :func:`restyle`).

    Args:
        image: Pillow image, mode ``"L"`` or ``"RGB"``, at render resolution.
        styles: names from :data:`STYLES`.
        rng: e.g. :func:`page_rng` ``(seed, page_id)``; styles draw from it in order.

    Returns:
        ``len(styles)`` images of the size and mode of ``image``.

    Raises:
        ValueError: an unknown style or image mode.
    """
    return [restyle(image, s, rng) for s in styles]
