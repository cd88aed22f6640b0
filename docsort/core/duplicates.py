"""The *near-duplicates* stage: the same page scanned again, told apart from pages that only look alike.

Exact copies are caught at ingest by the sha256 of the file. A page scanned a second time (another
resolution, slightly rotated, re-compressed, stamped or annotated) has other bytes, and the other
pages of the same document (same letterhead, same form, same typeface and margins) look almost the
same to the backbone and to a perceptual hash of a small thumbnail (measured: benchmarks/RESULTS.md,
"Near-duplicate families"). Two signals are used instead.

**The page map** (every page). The page, rendered with its longer side
``DuplicateSettings.render_px``, is made comparable with other scans of itself:

1. *ink*: darkness against the local paper level (:func:`_ink`), so shading, a grey scan
   background and the white border of a second scan all read as paper;
2. *deskew*: the rotation within +-``max_skew_deg`` that makes the horizontal projection profile
   of the ink sharpest (projection-profile method, Postl 1986; Hull 1998, "Document image skew
   detection: survey and annotated bibliography"), undone;
3. *crop*: to the box of the page's main content (:func:`_content_box`), so margins, scanner
   framing and scale (a second scan at 80-95 %) no longer matter and a stamp in an empty margin is
   left out;
4. *map*: the box resized to ``map_px`` x ``map_px`` cells of mean ink, Gaussian-blurred by one
   cell, stored as uint8.

Two maps are compared by their *aligned correlation* (:func:`aligned_correlation`): the largest
normalised cross-correlation over shifts of up to ``max_shift`` of the map (FFT, zero padding;
the phase-correlation idea of Kuglin & Hines 1975 without the whitening), in [-1, 1]. The shift
search absorbs what the crop got wrong.

**The words** (pages with OCR text, ``docsort ocr``): the Jaccard similarity of two pages' word
sets, estimated by MinHash (Broder 1997; ``datasketch.MinHash``). A re-scan keeps almost all of
its page's words; another page of the same document shares only the common ones.

A pair is a near-duplicate when both pages have text and their word Jaccard is at least
``min_text_jaccard`` and their aligned correlation at least ``min_correlation_text``, or, when
either has no text, their aligned correlation is at least ``min_correlation``. Candidate pairs are
the ``k`` nearest neighbours of each page by its coarse map (FAISS inner product, exact up to
``exact_below`` pages, then HNSW), by its visual vector (FAISS inner product), and pages sharing a
``datasketch.MinHashLSH`` bucket; so the work grows about linearly with the number of pages.
Pairs become *families* by connected components (``scipy.sparse.csgraph``). The thresholds are
measured on two re-scan corpora (``benchmarks/duplicates_study.py``).

Everything here is arrays in, arrays out: no collection, no SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from docsort.config.settings import DuplicateSettings, IndexSettings

__all__ = [
    "Families",
    "aligned_correlation",
    "candidate_pairs",
    "coarse_vectors",
    "deskew_angle",
    "find_families",
    "normalise_page",
    "page_map",
    "render_page_maps",
    "score_pairs",
    "settings_token",
    "text_minhashes",
]

_WORD = re.compile(r"[^\W\d_]{2,}")
#: datasketch 2's default MinHash scheme (named, so signatures rebuilt from stored values match).
_MINHASH_SCHEME = "affine32"


def _ink(grey: np.ndarray, block: int = 16) -> np.ndarray:
    """Ink darkness in [0, 1] (float32, same shape) of a uint8 grey page against its local paper level.

    The paper level is the 75th percentile of grey in ``block`` x ``block`` pixel blocks, then
    the least of each 3 x 3 neighbourhood of blocks (``scipy.ndimage.minimum_filter``),
    interpolated back to full size (``scipy.ndimage.zoom``, linear): shading and a grey scan
    background read as paper, and at the edge of a grey sheet on white the sheet's grey wins, so
    the edge is no ink. Darkness below 40 % of the page's 99th percentile of darkness (at least
    0.08: sensor noise, JPEG ringing) is set to 0, so faint and strong print are treated alike.
    """
    from scipy.ndimage import minimum_filter, zoom

    g = grey.astype(np.float32)
    h, w = g.shape
    bh, bw = -(-h // block), -(-w // block)
    padded = np.pad(g, ((0, bh * block - h), (0, bw * block - w)), mode="edge")
    tiles = padded.reshape(bh, block, bw, block).transpose(0, 2, 1, 3).reshape(bh, bw, -1)
    paper = minimum_filter(np.percentile(tiles, 75, axis=2).astype(np.float32), size=3, mode="nearest")
    paper = zoom(paper, (block, block), order=1, mode="nearest")[:h, :w]
    ink = np.clip(1.0 - g / np.maximum(paper, 1.0), 0.0, 1.0)
    ink[ink < max(0.08, 0.4 * float(np.percentile(ink, 99)))] = 0.0
    return ink


def _rotate(ink: np.ndarray, angle_deg: float) -> np.ndarray:
    """``ink`` (float32 (H, W), values in [0, 1]) rotated counter-clockwise by ``angle_deg``
    degrees about its centre, same size, bilinear, zero (no ink) fill (Pillow ``Image.rotate``)."""
    from PIL import Image

    im = Image.fromarray(ink, mode="F")
    return np.asarray(im.rotate(angle_deg, resample=Image.BILINEAR, expand=False, fillcolor=0.0), np.float32)


def deskew_angle(ink: np.ndarray, max_skew_deg: float = 2.0, max_points: int = 40000) -> float:
    """The rotation that makes the text lines of a page horizontal (projection-profile method).

    The ink pixels (a seeded sample of at most ``max_points``, weighted by darkness) are projected
    onto the vertical axis of the page rotated by each candidate angle; the angle whose 1-pixel
    histogram has the largest sum of squares wins (the profile is sharpest when lines are level;
    Postl 1986). Coarse grid of 0.2 degree, then 0.04 degree around the best.

    Args:
        ink: float32 (H, W) ink darkness in [0, 1] (0 = paper).
        max_skew_deg: the search range, +- degrees.
        max_points: ink pixels used at most.

    Returns:
        The angle in degrees to rotate the page by, counter-clockwise (Pillow's
        ``Image.rotate`` convention), to level it; 0.0 for a blank page.
    """
    ys, xs = np.nonzero(ink)
    if len(ys) < 2:
        return 0.0
    w = ink[ys, xs].astype(np.float64)
    if len(ys) > max_points:
        pick = np.random.default_rng(0).choice(len(ys), max_points, replace=False)
        ys, xs, w = ys[pick], xs[pick], w[pick]
    cy, cx = ink.shape[0] / 2.0, ink.shape[1] / 2.0
    y, x = ys - cy, xs - cx

    def score(a: float) -> float:
        t = np.deg2rad(a)
        # Row of each ink pixel once the page is rotated counter-clockwise by a (image y points down).
        row = np.rint(y * np.cos(t) - x * np.sin(t) + ink.shape[0]).astype(np.int64)
        hist = np.bincount(row - row.min(), weights=w)
        return float(np.dot(hist, hist))

    coarse = np.arange(-max_skew_deg, max_skew_deg + 1e-9, 0.2)
    best = float(coarse[int(np.argmax([score(a) for a in coarse]))])
    fine = best + np.arange(-0.16, 0.16 + 1e-9, 0.04)
    return float(fine[int(np.argmax([score(a) for a in fine]))])


def normalise_page(image, settings: DuplicateSettings = DuplicateSettings()) -> np.ndarray:
    """A page made comparable with other scans of itself: ink, deskewed, cropped to its content.

    Args:
        image: the page, a PIL image of any mode (converted to grey), ideally rendered with its
            longer side ``settings.render_px`` pixels (a larger one is reduced to that).
        settings: ``render_px``, ``max_skew_deg``, ``content_share``.

    Returns:
        float32 (h, w) ink darkness in [0, 1] of the deskewed content box (at least 1 x 1; the
        whole page when it has no ink).
    """
    from PIL import Image

    grey = image.convert("L")
    if max(grey.size) > settings.render_px:
        grey = grey.copy()
        grey.thumbnail((settings.render_px, settings.render_px), Image.BILINEAR)
    ink = _ink(np.asarray(grey))
    angle = deskew_angle(ink, settings.max_skew_deg)
    if angle:
        ink = _rotate(ink, angle)
    box = _content_box(ink, settings.content_share)
    return ink[box[0]:box[1], box[2]:box[3]]


def _content_box(ink: np.ndarray, min_share: float, grid: int = 200, gap: float = 0.03) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` pixel box of a page's main content.

    The ink is reduced to at most ``grid`` cells on the longer side (block maximum), closed over
    gaps of ``gap`` of the longer side (``scipy.ndimage.binary_dilation``) and split into
    connected regions (``scipy.ndimage.label``); the box holds the regions whose ink mass is at
    least ``min_share`` of the heaviest one's. So a stamp or a note in an empty margin, a
    scanner's edge or a speck does not move the box, while a page header close to the text
    stays in it. The whole page when there is no ink.
    """
    from scipy.ndimage import binary_dilation, find_objects, label

    h, w = ink.shape
    f = max(1, int(np.ceil(max(h, w) / grid)))
    bh, bw = -(-h // f), -(-w // f)
    padded = np.pad(ink, ((0, bh * f - h), (0, bw * f - w)))
    cells = padded.reshape(bh, f, bw, f)
    mass = cells.sum(axis=(1, 3))
    on = mass > 0
    if not on.any():
        return 0, h, 0, w
    r = max(1, int(round(gap * max(bh, bw) / 2)))
    labels, n = label(binary_dilation(on, structure=np.ones((2 * r + 1, 2 * r + 1), bool)))
    labels = labels * on
    weight = np.bincount(labels.ravel(), weights=mass.ravel(), minlength=n + 1)
    weight[0] = 0.0
    keep = np.flatnonzero(weight >= min_share * weight.max())
    sel = np.isin(labels, keep)
    rows, cols = np.flatnonzero(sel.any(axis=1)), np.flatnonzero(sel.any(axis=0))
    return int(rows[0] * f), int(min(h, (rows[-1] + 1) * f)), int(cols[0] * f), int(min(w, (cols[-1] + 1) * f))


def page_map(image, settings: DuplicateSettings = DuplicateSettings()) -> np.ndarray:
    """The page map of one page (see the module docstring): what near-duplicates are compared by.

    Args:
        image: the page, a PIL image (any mode), ideally with its longer side
            ``settings.render_px`` pixels.
        settings: normalisation and ``map_px``.

    Returns:
        uint8 (``map_px``, ``map_px``): mean ink darkness of the deskewed content box per cell,
        blurred (Gaussian, sigma one cell), 0 = paper, 255 = solid ink.
    """
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    content = normalise_page(image, settings)
    m = np.asarray(Image.fromarray(content, mode="F").resize((settings.map_px, settings.map_px), Image.BOX), np.float32)
    m = gaussian_filter(m, 1.0, mode="constant")
    return np.clip(np.rint(255.0 * m), 0, 255).astype(np.uint8)


def _standardise(maps: np.ndarray) -> np.ndarray:
    """float32 (n, h, w) maps with zero mean and unit norm each (a blank map stays zero)."""
    x = np.asarray(maps, np.float32)
    x = x - x.mean(axis=(1, 2), keepdims=True)
    norm = np.sqrt((x * x).sum(axis=(1, 2), keepdims=True))
    return x / np.maximum(norm, 1e-6)


def coarse_vectors(maps: np.ndarray, side: int = 16) -> np.ndarray:
    """Coarse map vectors for finding candidate pairs by nearest neighbours.

    Args:
        maps: uint8 (n, S, S) page maps (:func:`page_map`); ``S`` a multiple of ``side``.
        side: cells per side of the coarse map.

    Returns:
        float32 (n, side * side): block means of the maps, centred and L2-normalised, so their
        inner product is the (unshifted) correlation of the coarse maps.

    Raises:
        ValueError: ``S`` is not a multiple of ``side``.
    """
    m = np.asarray(maps, np.float32)
    n, h, w = m.shape
    if h % side or w % side:
        raise ValueError(f"maps of {h} x {w} cells do not divide into {side} x {side} blocks")
    blocks = m.reshape(n, side, h // side, side, w // side).mean(axis=(2, 4))
    return np.ascontiguousarray(_standardise(blocks).reshape(n, -1))


def _correlate(a: np.ndarray, b: np.ndarray, max_shift: float, ia: np.ndarray | None = None, ib: np.ndarray | None = None) -> np.ndarray:
    """Largest normalised cross-correlation over shifts up to ``max_shift`` of the side.

    Compares ``a[ia[k]]`` with ``b[ib[k]]`` for each k (``ia``/``ib`` default to ``arange``), so
    each distinct map's spectrum is computed once (``scipy.fft.rfft2`` in float32).

    Returns:
        float32 (len(ia),).
    """
    from scipy import fft

    side = a.shape[1]
    size = 2 * side
    r = max(0, int(round(max_shift * side)))
    idx = np.r_[0 : r + 1, size - r : size] if r else np.array([0])
    ia = np.arange(len(a)) if ia is None else ia
    ib = np.arange(len(b)) if ib is None else ib
    fa = fft.rfft2(_standardise(a), s=(size, size), workers=-1)
    fb = fa if b is a else fft.rfft2(_standardise(b), s=(size, size), workers=-1)
    cc = fft.irfft2(fa[ia] * np.conj(fb[ib]), s=(size, size), workers=-1)
    return cc[:, idx][:, :, idx].reshape(len(ia), -1).max(axis=1).astype(np.float32)


def _rescaled(maps: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """float32 (m, S, S) maps stretched by ``sy`` (rows) and ``sx`` (columns) about their centre
    (``scipy.ndimage.affine_transform``, linear, zero fill)."""
    from scipy.ndimage import affine_transform

    side = maps.shape[1]
    c = (side - 1) / 2.0
    matrix = np.diag([1.0 / sy, 1.0 / sx])
    offset = np.array([c, c]) - matrix @ np.array([c, c])
    return np.stack([affine_transform(m, matrix, offset=offset, order=1, mode="constant") for m in np.asarray(maps, np.float32)])


def aligned_correlation(
    maps: np.ndarray,
    pairs: np.ndarray,
    max_shift: float = 0.12,
    *,
    scales: tuple[float, ...] = (),
    refine_above: float = -1.0,
    chunk: int = 4096,
) -> np.ndarray:
    """The aligned correlation of pairs of page maps.

    For each pair: both maps centred and scaled to unit norm, their cross-correlation for every
    shift up to ``max_shift`` of the side in each direction (through the FFT with zero padding,
    ``numpy.fft.rfft2``), and the largest value. Pairs scoring at least ``refine_above`` are tried
    again with the second map stretched by every combination of ``scales`` in rows and columns
    (a content box cut a little too wide or too narrow, e.g. by a stamp next to the text), and
    keep the best.

    Args:
        maps: uint8 (n, S, S) page maps.
        pairs: int64 (m, 2) row indices into ``maps``.
        max_shift: largest shift tried, as a share of the side.
        scales: stretch factors tried for the refinement (1.0 is always included).
        refine_above: which pairs are refined (the others keep their first score).
        chunk: pairs per FFT batch (memory: about ``chunk * 4 S^2 * 12`` bytes).

    Returns:
        float32 (m,) in [-1, 1]; 1 for identical maps, 0 when a map is blank.
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    out = np.zeros(len(pairs), np.float32)
    if not len(pairs):
        return out
    maps = np.asarray(maps)
    for start in range(0, len(pairs), chunk):
        p = pairs[start : start + chunk]
        used, inv = np.unique(p, return_inverse=True)
        inv = inv.reshape(-1, 2)
        m = maps[used]
        out[start : start + len(p)] = _correlate(m, m, max_shift, inv[:, 0], inv[:, 1])
    grid = [(sy, sx) for sy in (1.0, *scales) for sx in (1.0, *scales) if (sy, sx) != (1.0, 1.0)]
    redo = np.flatnonzero(out >= refine_above) if grid else np.zeros(0, np.int64)
    for start in range(0, len(redo), chunk):
        sel = redo[start : start + chunk]
        a = maps[pairs[sel, 0]]
        for sy, sx in grid:
            out[sel] = np.maximum(out[sel], _correlate(a, _rescaled(maps[pairs[sel, 1]], sy, sx), max_shift))
    return np.clip(out, -1.0, 1.0)


def settings_token(settings: DuplicateSettings) -> str:
    """What a stored page map depends on, as a string: the map-making settings (render_px,
    max_skew_deg, content_share, map_px) and a version of this code's normalisation."""
    return f"v1 render={settings.render_px} skew={settings.max_skew_deg:g} share={settings.content_share:g} map={settings.map_px}"


def render_page_maps(src, page_nos: list[int], settings: DuplicateSettings = DuplicateSettings()) -> list[tuple[int, bytes | None, str | None]]:
    """Render pages of one file and make their page maps: a plain function of picklable
    arguments, for worker processes. It never raises for a bad file.

    Args:
        src: a :class:`docsort.core.pages.SourceFile`.
        page_nos: 1-based page numbers wanted (ascending).
        settings: ``render_px`` and the map settings.

    Returns:
        ``[(page_no, map bytes (map_px * map_px uint8) or None, error or None), ...]`` for every
        wanted page; pages the file no longer has, or that fail to render, carry the error.
    """
    from docsort.config.settings import RenderSettings
    from docsort.core.pages import PageError, PopplerMissingError, iter_pages

    wanted = sorted(set(int(p) for p in page_nos))
    out: dict[int, tuple[int, bytes | None, str | None]] = {}
    render = RenderSettings(long_side_px=max(settings.render_px, 299), color="gray")
    try:
        for page in iter_pages(src, render, wanted[0], wanted[-1]):
            if page.page_no in wanted:
                out[page.page_no] = (page.page_no, page_map(page.image, settings).tobytes(), None)
    except (PageError, PopplerMissingError) as exc:
        reason = str(exc)
        for p in wanted:
            out.setdefault(p, (p, None, reason))
    for p in wanted:
        out.setdefault(p, (p, None, f"{src.path}: page {p} not found in the file"))
    return [out[p] for p in wanted]


def text_minhashes(texts: list[str | None], settings: DuplicateSettings = DuplicateSettings()) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of pages' OCR word sets (``datasketch.MinHash``, seed 1).

    The words are the lower-cased runs of two or more letters (digits and punctuation dropped:
    OCR errors and page numbers are noise), as a set.

    Args:
        texts: one OCR text per page, ``None`` or ``""`` where there is none.
        settings: ``num_perm`` (the estimate's standard error is about ``1 / sqrt(num_perm)``,
            datasketch docs) and ``min_words`` (fewer distinct words: no signature).

    Returns:
        ``(signatures, has_text)``: uint64 (n, num_perm) hash values (rows of pages without a
        signature are zero) and bool (n,).
    """
    from datasketch import MinHash

    n = len(texts)
    sigs = np.zeros((n, settings.num_perm), np.uint64)
    has = np.zeros(n, bool)
    for i, text in enumerate(texts):
        words = set(_WORD.findall(text.lower())) if text else set()
        if len(words) < settings.min_words:
            continue
        m = MinHash(num_perm=settings.num_perm, seed=1, scheme=_MINHASH_SCHEME)
        m.update_batch([w.encode("utf-8") for w in sorted(words)])
        sigs[i] = m.hashvalues
        has[i] = True
    return sigs, has


def _knn_pairs(x: np.ndarray, settings: DuplicateSettings) -> np.ndarray:
    """int64 (m, 2) pairs ``i < j`` of each row and its ``settings.k`` nearest neighbours, by inner
    product over float32 (n, d) ``x``: exact (``IndexFlatIP``) below ``settings.exact_below`` rows,
    else HNSW (``hnsw_m`` links, efSearch at least 64), built by :func:`docsort.core.index.build_index`."""
    from docsort.core.index import build_index, search_index  # FAISS is imported when neighbours are wanted

    index_settings = IndexSettings(type="auto", auto_above=max(settings.exact_below - 1, 0), auto_kind="hnsw",
                                   hnsw_m=settings.hnsw_m, hnsw_ef_search=max(64, 2 * settings.k))
    index = build_index(np.arange(len(x), dtype=np.int64), x, index_settings)
    _, nbrs = search_index(index, x, settings.k + 1)
    rows = np.repeat(np.arange(len(x), dtype=np.int64), nbrs.shape[1])
    cols = nbrs.ravel().astype(np.int64)
    keep = (cols >= 0) & (cols != rows)
    return np.stack([np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])], axis=1)


def candidate_pairs(
    maps: np.ndarray,
    vectors: np.ndarray | None = None,
    minhashes: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
    settings: DuplicateSettings = DuplicateSettings(),
) -> np.ndarray:
    """Pairs of pages worth comparing: near neighbours by coarse map, by look, and by words.

    Args:
        maps: uint8 (n, S, S) page maps (:func:`page_map`).
        vectors: optional float32 (n, D) L2-normalised visual vectors; their ``settings.k``
            nearest neighbours by inner product are added.
        minhashes, has_text: optional :func:`text_minhashes` output; pages sharing a
            ``datasketch.MinHashLSH`` bucket (threshold ``settings.min_text_jaccard``) are added.
        settings: ``k``, ``exact_below``, ``hnsw_m``, ``min_text_jaccard``, ``num_perm``.

    Returns:
        int64 (m, 2) row-index pairs ``i < j``, unique, sorted.

    Raises:
        ValueError: inputs of different lengths.
    """
    n = len(maps)
    for name, arr in (("vectors", vectors), ("minhashes", minhashes), ("has_text", has_text)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{n} page maps but {len(arr)} {name}")
    if n < 2:
        return np.zeros((0, 2), np.int64)
    parts = [_knn_pairs(coarse_vectors(maps, settings.coarse_px), settings)]
    if vectors is not None and np.asarray(vectors).ndim == 2 and np.asarray(vectors).shape[1] > 0:
        parts.append(_knn_pairs(np.ascontiguousarray(vectors, np.float32), settings))
    if minhashes is not None and has_text is not None and int(np.sum(has_text)) > 1:
        from datasketch import MinHash, MinHashLSH

        lsh = MinHashLSH(threshold=settings.min_text_jaccard, num_perm=settings.num_perm)
        same_bucket = lsh.query  # pages already inserted that share a band with the query (datasketch)
        found = []
        for i in np.flatnonzero(has_text):
            m = MinHash(num_perm=settings.num_perm, seed=1, hashvalues=minhashes[i], scheme=_MINHASH_SCHEME)
            found += [(min(int(i), j), max(int(i), j)) for j in same_bucket(m)]
            lsh.insert(int(i), m)
        if found:
            parts.append(np.asarray(found, np.int64))
    pairs = np.concatenate(parts)
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)


@dataclass(frozen=True)
class Families:
    """Near-duplicate families, one row per page that belongs to one.

    Attributes:
        rows: int64 (m,) row indices (into the arrays given to :func:`find_families`) of the pages
            in families, grouped by family, ascending within each.
        family: int64 (m,) family numbers 0, 1, ..., in order of each family's first row.
        similarity: float32 (m,) each page's aligned correlation with its family's first page
            (1.0 for that page).
        pairs: int64 (p, 2) the near-duplicate pairs found (row indices ``i < j``).
        pair_correlation: float32 (p,) their aligned correlations.
        pair_jaccard: float32 (p,) their estimated word Jaccard (NaN where a page has no text).
    """

    rows: np.ndarray
    family: np.ndarray
    similarity: np.ndarray
    pairs: np.ndarray
    pair_correlation: np.ndarray
    pair_jaccard: np.ndarray


def score_pairs(
    maps: np.ndarray,
    pairs: np.ndarray,
    minhashes: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
    settings: DuplicateSettings = DuplicateSettings(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decide which candidate pairs are near-duplicates (the rule in the module docstring).

    Args:
        maps: uint8 (n, S, S) page maps; pairs: int64 (m, 2) row indices.
        minhashes, has_text: optional :func:`text_minhashes` output.
        settings: the thresholds.

    Pairs whose coarse maps (``coarse_px`` cells a side) correlate below ``settings.prefilter``
    are not compared at full size (their correlation is reported as the coarse one, capped below
    the prefilter).

    Returns:
        ``(same, correlation, jaccard)``: bool (m,), float32 (m,) aligned correlations, float32
        (m,) estimated word Jaccard (NaN where either page has no text).
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    maps = np.asarray(maps)
    # First the coarse maps (16x fewer cells): most candidate pairs are plainly different pages.
    f = maps.shape[1] // settings.coarse_px
    coarse = maps.reshape(len(maps), settings.coarse_px, f, settings.coarse_px, f).mean(axis=(2, 4), dtype=np.float32)
    corr = aligned_correlation(coarse, pairs, settings.max_shift)
    close = np.flatnonzero(corr >= settings.prefilter)
    corr[:] = np.minimum(corr, settings.prefilter - 1e-3)
    corr[close] = aligned_correlation(maps, pairs[close], settings.max_shift, scales=settings.scales, refine_above=settings.refine_above)
    jac = np.full(len(pairs), np.nan, np.float32)
    if minhashes is not None and has_text is not None and len(pairs):
        both = has_text[pairs[:, 0]] & has_text[pairs[:, 1]]
        jac[both] = (minhashes[pairs[both, 0]] == minhashes[pairs[both, 1]]).mean(axis=1)
    with np.errstate(invalid="ignore"):
        text = ~np.isnan(jac)
        same = np.where(text, (jac >= settings.min_text_jaccard) & (corr >= settings.min_correlation_text),
                        corr >= settings.min_correlation)
    return same, corr, jac


def find_families(
    maps: np.ndarray,
    vectors: np.ndarray | None = None,
    minhashes: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
    settings: DuplicateSettings = DuplicateSettings(),
    pairs: np.ndarray | None = None,
) -> Families:
    """Group pages that are the same page scanned more than once (see the module docstring).

    Args:
        maps: uint8 (n, S, S) :func:`page_map` of each page.
        vectors: optional float32 (n, D) L2-normalised visual vectors (more candidate pairs).
        minhashes, has_text: optional :func:`text_minhashes` of the pages' OCR text.
        settings: thresholds and candidate generation.
        pairs: candidate pairs to use instead of :func:`candidate_pairs` (int64 (m, 2)).

    Returns:
        :class:`Families` (families of at least two pages). Deterministic for the same inputs.

    Raises:
        ValueError: inputs of different lengths.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    maps = np.asarray(maps, np.uint8)
    n = len(maps)
    if pairs is None:
        pairs = candidate_pairs(maps, vectors, minhashes, has_text, settings)
    same, corr, jac = score_pairs(maps, pairs, minhashes, has_text, settings)
    pairs, corr, jac = pairs[same], corr[same], jac[same]
    if not len(pairs):
        z = np.zeros(0, np.int64)
        return Families(z, z, np.zeros(0, np.float32), pairs, corr, jac)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    members = np.flatnonzero(sizes[comp] > 1)
    first = np.full(len(sizes), n, np.int64)
    np.minimum.at(first, comp[members], members)
    heads = first[comp[members]]
    order = np.lexsort((members, heads))
    rows, heads = members[order], heads[order]
    _, family = np.unique(heads, return_inverse=True)
    sim = aligned_correlation(maps, np.stack([rows, heads], axis=1), settings.max_shift, scales=settings.scales,
                              refine_above=settings.refine_above)
    sim[rows == heads] = 1.0
    return Families(rows.astype(np.int64), family.astype(np.int64), sim.astype(np.float32), pairs, corr, jac)
