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

The page map finds *candidate pairs*: the ``k`` nearest neighbours of each page by its coarse map
(FAISS inner product, exact up to ``exact_below`` pages, then HNSW), by its visual vector (FAISS
inner product), and pages sharing a ``datasketch.MinHashLSH`` bucket of their OCR words; so the
work grows about linearly with the number of pages.

**The keypoints** (every page, :func:`page_keypoints`) decide. ORB keypoints of the same render
are matched between the two pages of a candidate pair, one similarity transform is fitted to the
matches by RANSAC, and the pair's *coverage* is the share of both pages' content cells that the
transform explains (:func:`verify_pairs`, after a cheaper first test on each page's strongest
keypoints that most candidate pairs fail): spatial verification, as in near-duplicate image
detection (Chum, Philbin & Zisserman 2008). It needs no crop or deskew to be right, so a stamp
that widened the content box, a second scan at 80 % on a larger sheet or a photographed page
still match, where comparing the maps themselves failed (a page map of one calendar month or one
chart style correlates with another as well as with its own re-scan: benchmarks/RESULTS.md).

**The words** (pages with OCR text, ``docsort ocr``): the Jaccard similarity of two pages' word
sets, estimated by MinHash (Broder 1997; ``datasketch.MinHash``). A re-scan keeps almost all of
its page's words; another page of the same document shares only the common ones.

A pair is a near-duplicate when its coverage is at least ``min_coverage``, or when both pages
have text, their word Jaccard is at least ``min_text_jaccard`` and their coverage at least
``min_coverage_text``. Pairs become *families* by connected components
(``scipy.sparse.csgraph``). The thresholds are measured on two re-scan corpora
(``benchmarks/duplicates_study.py``). Pages of one template that differ only in small details
(the months of one calendar design, two plots in one chart style) are explained by one transform
almost everywhere too: a pair the keypoints accept is checked once more, pixel by pixel.

**The ink** (every page, :func:`page_ink`; checked only for pairs the rule above accepts): the
render binarised (Otsu 1979) and stored compressed. With the pair's transform, each page's ink is
compared with the other's (:func:`content_conflicts`): cells of a page whose ink is mostly missing
from the other, outside the largest region of such cells, are content the other page does not
have. A re-scan adds ink (a stamp, a note: one region, allowed; noise: ink the original lacks, but
the original's ink is all still there); two months of one calendar each have digits the other
lacks, all over the page. A pair where *both* pages have ``max_conflict_cells`` such cells or more
is not a near-duplicate.

Everything here is arrays in, arrays out: no collection, no SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from docsort.config.settings import DuplicateSettings, IndexSettings

__all__ = [
    "Families",
    "candidate_pairs",
    "coarse_vectors",
    "content_conflicts",
    "decode_ink",
    "deskew_angle",
    "find_families",
    "normalise_page",
    "KEYPOINT_DTYPE",
    "page_ink",
    "page_keypoints",
    "older_settings_tokens",
    "page_map",
    "pair_conflicts",
    "pair_transform",
    "ransac_iterations",
    "render_page_maps",
    "score_pairs",
    "settings_token",
    "text_minhashes",
    "verify_pairs",
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


#: One ORB keypoint of a page as stored: pixel position in the page rendered with its longer side
#: ``DuplicateSettings.render_px``, the cell of the ``grid`` x ``grid`` division of that page it
#: lies in, and its 256-bit binary descriptor.
KEYPOINT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("cell", "u1"), ("d", "u1", (32,))])


def page_keypoints(image, settings: DuplicateSettings = DuplicateSettings()) -> np.ndarray:
    """The ORB keypoints of a page: what a pair of candidate pages is verified with.

    ORB (Rublee, Rabaud, Konolige & Bradski 2011, "ORB: an efficient alternative to SIFT or
    SURF"; ``cv2.ORB_create``): FAST corners ranked by the Harris measure over a 6-level image
    pyramid (scale step 1.2), each with a rotation-aware 256-bit BRIEF descriptor. On a page they
    sit on letters, rules and figure edges, so two scans of one page share hundreds of them in
    the same geometric arrangement, while another page of the same template shares only those
    of what it has in common (a letterhead, a grid).

    Args:
        image: the page, a PIL image of any mode (converted to grey); a longer side above
            ``settings.render_px`` is reduced to it.
        settings: ``render_px``, ``keypoints`` (at most this many, the strongest), ``grid``.

    Returns:
        A structured array of :data:`KEYPOINT_DTYPE`, shape (k,), ``k <= settings.keypoints``
        (0 for a blank page), strongest (Harris response) first.
    """
    import cv2

    g = _grey(image, settings)
    orb = cv2.ORB_create(nfeatures=settings.keypoints, scaleFactor=1.2, nlevels=6, fastThreshold=10)
    kp, des = orb.detectAndCompute(g, None)
    out = np.zeros(0 if des is None else len(kp), KEYPOINT_DTYPE)
    if des is None or not len(kp):
        return out
    order = np.argsort([-k.response for k in kp], kind="stable")  # strongest first
    kp, des = [kp[i] for i in order], des[order]
    xy = np.array([k.pt for k in kp], np.float32)
    h, w = g.shape
    out["x"] = np.clip(np.rint(xy[:, 0]), 0, 65535)
    out["y"] = np.clip(np.rint(xy[:, 1]), 0, 65535)
    gy = np.minimum((xy[:, 1] / h * settings.grid).astype(np.int64), settings.grid - 1)
    gx = np.minimum((xy[:, 0] / w * settings.grid).astype(np.int64), settings.grid - 1)
    out["cell"] = gy * settings.grid + gx
    out["d"] = des
    return out


def _grey(image, settings: DuplicateSettings) -> np.ndarray:
    """The page as uint8 (h, w) grey, its longer side reduced to ``settings.render_px`` (Pillow
    bilinear), as the keypoints and the ink are made from."""
    from PIL import Image

    grey = image.convert("L")
    if max(grey.size) > settings.render_px:
        grey = grey.copy()
        grey.thumbnail((settings.render_px, settings.render_px), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(grey, np.uint8))


def page_ink(image, settings: DuplicateSettings = DuplicateSettings()) -> bytes:
    """The page's ink, binarised and compressed: what :func:`content_conflicts` compares.

    The render of :func:`page_keypoints` (same size, so the keypoints' transform applies),
    smoothed by a 3 x 3 Gaussian and thresholded by Otsu's method (Otsu 1979, "A threshold
    selection method from gray-level histograms"; ``cv2.threshold(..., THRESH_OTSU)``), dark =
    ink; then ``numpy.packbits`` and ``zlib`` (about 10-20 KB a text page at 1000 px).

    Returns:
        bytes: height and width (two little-endian uint16), then the compressed bits
        (:func:`decode_ink` reads them back).
    """
    import struct
    import zlib

    import cv2

    g = _grey(image, settings)
    _, ink = cv2.threshold(cv2.GaussianBlur(g, (3, 3), 0), 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    h, w = ink.shape
    return struct.pack("<HH", h, w) + zlib.compress(np.packbits(ink.astype(bool)).tobytes(), 6)


def decode_ink(blob: bytes) -> np.ndarray:
    """bool (h, w) ink of a page from :func:`page_ink`'s bytes.

    Raises:
        ValueError: the bytes are not a page's ink (too short, not zlib, or not as many bits as pixels).
    """
    import struct
    import zlib

    if len(blob) < 4:
        raise ValueError(f"{len(blob)} bytes are no page ink")
    h, w = struct.unpack("<HH", blob[:4])
    try:
        bits = np.frombuffer(zlib.decompress(blob[4:]), np.uint8)
    except zlib.error as exc:
        raise ValueError(f"page ink of {h} x {w} pixels does not decompress: {exc}") from None
    if len(bits) != (h * w + 7) // 8:
        raise ValueError(f"page ink of {h} x {w} pixels holds {len(bits)} bytes")
    return np.unpackbits(bits, count=h * w).reshape(h, w).astype(bool)


def content_conflicts(ink_a: np.ndarray, ink_b: np.ndarray, model: np.ndarray,
                      settings: DuplicateSettings = DuplicateSettings()) -> int:
    """How much content each page of a pair has that the other lacks, given their transform.

    Page b's ink is mapped onto page a by ``model`` (``cv2.warpAffine``, nearest pixel); a's ink
    where b's page does not reach is left out. A pixel of one page's ink is *missing* from the
    other when the other has no ink within ``conflict_px`` pixels (a dilation by a disc). Each
    page is divided into ``conflict_grid`` x ``conflict_grid`` cells; a cell holding ink (at
    least 2 % of its pixels) of which at least ``conflict_share`` is missing counts, unless it
    belongs to the page's largest 8-connected region of such cells (one stamp, one note, the
    area a crop cut). A re-scan's added ink is then allowed on one side and its page's ink is
    all there on the other; two pages of one template whose details differ (the digits of two
    calendar months, two plots on one frame) have such cells on both sides.

    Args:
        ink_a, ink_b: bool (h, w) inks (:func:`decode_ink`), pixels of the ``render_px`` pages.
        model: float (2, 3) similarity transform taking b's pixel coordinates to a's
            (:func:`pair_transform`).
        settings: ``conflict_px``, ``conflict_grid``, ``conflict_share``.

    Returns:
        The smaller of the two pages' counts of such cells (0 when one page's content is all in
        the other).
    """
    import cv2

    h, w = ink_a.shape
    model = np.asarray(model, np.float64)
    b_on_a = cv2.warpAffine(ink_b.astype(np.uint8), model, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 0
    reach = cv2.warpAffine(np.ones(ink_b.shape, np.uint8), model, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 0
    a = ink_a & reach
    r = settings.conflict_px
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    near_a = cv2.dilate(a.astype(np.uint8), disc) > 0
    near_b = cv2.dilate(b_on_a.astype(np.uint8), disc) > 0
    g = min(settings.conflict_grid, h, w)  # a page narrower than the grid: a cell a pixel wide
    # Cell k of a side holds the rows (columns) r with floor(r * g / h) = k: sums over them by reduceat.
    rows = np.searchsorted(np.minimum(np.arange(h) * g // h, g - 1), np.arange(g))
    cols = np.searchsorted(np.minimum(np.arange(w) * g // w, g - 1), np.arange(g))

    def per_cell(mask: np.ndarray) -> np.ndarray:
        return np.add.reduceat(np.add.reduceat(mask.view(np.uint8), rows, axis=0, dtype=np.int32), cols, axis=1)

    least = 0.02 * h * w / (g * g)
    counts = []
    for ink, missing in ((a, a & ~near_b), (b_on_a, b_on_a & ~near_a)):
        n, m = per_cell(ink), per_cell(missing)
        bad = ((n >= least) & (m >= settings.conflict_share * np.maximum(n, 1))).astype(np.uint8)
        k, _, stats, _ = cv2.connectedComponentsWithStats(bad, connectivity=8)
        areas = np.sort(stats[1:, cv2.CC_STAT_AREA])
        counts.append(int(areas[:-1].sum()) if k > 2 else 0)
    return min(counts)


def pair_transform(a: np.ndarray, b: np.ndarray, settings: DuplicateSettings = DuplicateSettings()) -> np.ndarray | None:
    """The similarity transform (float64 (2, 3), b's pixels to a's) that the full verification of
    :func:`verify_pairs` fits to two pages' keypoints, or ``None`` where it finds none."""
    from docsort.core.hamming import descriptor_words

    found = _match(a, b, descriptor_words(a["d"]), descriptor_words(b["d"]), settings, with_model=True)
    return None if found is None else found[3]


#: RANSAC's confidence: the probability that the iterations draw at least one all-inlier sample.
_RANSAC_CONFIDENCE = 0.99
#: RANSAC iterations at most (the full verification always allows this many).
_RANSAC_MAX_ITERS = 2000


def ransac_iterations(inliers: int, matches: int, confidence: float = _RANSAC_CONFIDENCE, sample: int = 2,
                      cap: int = _RANSAC_MAX_ITERS) -> int:
    """RANSAC iterations that find a model with at least ``inliers`` of ``matches`` correspondences
    with probability ``confidence``: ``log(1 - confidence) / log(1 - w ** sample)`` with inlier share
    ``w = inliers / matches`` (Fischler & Bolles 1981; Hartley & Zisserman 2004, "Multiple View
    Geometry", section 4.7.1); ``sample`` = 2 correspondences fix a similarity transform.

    Returns:
        An int in ``[1, cap]``.
    """
    import math

    w = inliers / max(matches, 1)
    if w >= 1.0:
        return 1
    if w <= 0.0:
        return cap
    return int(min(cap, max(1, math.ceil(math.log(1.0 - confidence) / math.log(1.0 - w**sample)))))


def _match(a: np.ndarray, b: np.ndarray, wa: np.ndarray, wb: np.ndarray, settings: DuplicateSettings,
           need: int = 0, with_model: bool = False):
    """``(query rows of a, matched rows of b, inlier mask)`` of one RANSAC fit, or ``None``.

    ``wa``, ``wb``: the descriptors of ``a`` and ``b`` as :func:`docsort.core.hamming.descriptor_words`
    (``wa`` may be its first columns, when ``a`` is the first rows of a page).
    ``need``: the fit only matters when it has at least this many inliers (the first test): fewer
    ratio-test matches give ``None`` at once, RANSAC stops after :func:`ransac_iterations` for
    that share, and the model is neither refined nor checked for scale (only its inliers count,
    and the full verification does both); 0 = the full verification (``_RANSAC_MAX_ITERS``
    iterations, OpenCV's Levenberg-Marquardt refinement, scale within ``settings.max_scale``).
    ``with_model``: the full verification's fitted (2, 3) transform comes fourth."""
    import cv2

    from docsort.core.hamming import ratio_matches

    if len(a) < 8 or len(b) < 8:
        return None
    # Each keypoint of a to its nearest descriptor of b by Hamming distance, kept by the ratio test
    # (an exact k = 2 search, one row at a time: docsort.core.hamming).
    qa, qb = ratio_matches(wa, wb, settings.ratio)
    n = len(qa)
    if n < max(8, need):
        return None
    pa = np.stack([a["x"][qa], a["y"][qa]], 1).astype(np.float32)
    pb = np.stack([b["x"][qb], b["y"][qb]], 1).astype(np.float32)
    if need:
        model, inl = cv2.estimateAffinePartial2D(pb, pa, method=cv2.RANSAC, ransacReprojThreshold=settings.ransac_px,
                                                 maxIters=ransac_iterations(need, n), confidence=_RANSAC_CONFIDENCE,
                                                 refineIters=0)
        if model is None or inl is None:
            return None
        return qa, qb, inl.ravel().astype(bool)
    model, inl = cv2.estimateAffinePartial2D(pb, pa, method=cv2.RANSAC, ransacReprojThreshold=settings.ransac_px,
                                             maxIters=_RANSAC_MAX_ITERS, confidence=_RANSAC_CONFIDENCE)
    if model is None or inl is None:
        return None
    scale = float(np.sqrt(abs(np.linalg.det(model[:, :2]))))
    if not (1.0 / settings.max_scale <= scale <= settings.max_scale):
        return None
    if with_model:
        return qa, qb, inl.ravel().astype(bool), model
    return qa, qb, inl.ravel().astype(bool)


def _quick_reject(a: np.ndarray, b: np.ndarray, wa: np.ndarray, wb: np.ndarray, settings: DuplicateSettings) -> bool:
    """True when neither page's ``quick_keypoints`` strongest keypoints find ``quick_inliers``
    RANSAC inliers among all of the other page's: a pair too different to verify in full.
    The fit is neither refined nor checked for scale, so a pair is dropped here only for too few
    inliers."""
    q = settings.quick_keypoints
    if not q or (len(a) <= q and len(b) <= q):
        return False
    for x, y, wx, wy in ((a, b, wa, wb), (b, a, wb, wa)):  # the strongest corners of a degraded re-scan may be noise: both ways
        found = _match(x[:q], y, wx[:, :q], wy, settings, need=settings.quick_inliers)
        if found is not None and int(found[2].sum()) >= settings.quick_inliers:
            return False
    return True


def _verify(a: np.ndarray, b: np.ndarray, settings: DuplicateSettings) -> tuple[float, int]:
    """``(coverage, inliers)`` of one pair of keypoint arrays (see :func:`verify_pairs`)."""
    from docsort.core.hamming import descriptor_words

    if len(a) < 8 or len(b) < 8:
        return 0.0, 0
    wa, wb = descriptor_words(a["d"]), descriptor_words(b["d"])
    if _quick_reject(a, b, wa, wb, settings):
        return 0.0, 0
    found = _match(a, b, wa, wb, settings)
    if found is None:
        return 0.0, 0
    qa, qb, inl = found
    cells = settings.grid * settings.grid
    coverage = []
    for kp, rows in ((a, qa), (b, qb)):
        occupied = np.bincount(kp["cell"], minlength=cells) >= settings.cell_keypoints
        hit = np.zeros(cells, bool)
        hit[kp["cell"][rows[inl]]] = True
        coverage.append((hit & occupied).sum() / max(int(occupied.sum()), 1))
    return float(min(coverage)), int(inl.sum())


def verify_pairs(keypoints, pairs: np.ndarray, settings: DuplicateSettings = DuplicateSettings(), workers: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Geometric verification of candidate pairs: how much of both pages one transform explains.

    For each pair (a, b): every keypoint of ``a`` is matched to its nearest descriptor of ``b``
    by Hamming distance (an exact k = 2 search, :func:`docsort.core.hamming.ratio_matches`),
    kept when it is clearly nearer than the
    second nearest (Lowe's ratio test, Lowe 2004, "Distinctive image features from
    scale-invariant keypoints", ratio ``settings.ratio``); then RANSAC (Fischler & Bolles 1981)
    fits one similarity transform (rotation, scale, shift: ``cv2.estimateAffinePartial2D``,
    reprojection error ``settings.ransac_px`` pixels, up to 2000 iterations, confidence 0.99)
    to the matches, as in near-duplicate image
    detection with spatial verification (Chum, Philbin & Zisserman 2008, "Near duplicate image
    detection: min-Hash and tf-idf weighting"). A transform scaling by more than
    ``settings.max_scale`` is rejected.

    A first, cheaper test comes before (``settings.quick_keypoints``, ``quick_inliers``): the
    same match and fit with only the strongest ``quick_keypoints`` of one page against all of
    the other's, both ways round; a pair with fewer than ``quick_inliers`` inliers both ways
    scores 0 without the full match. Its RANSAC stops after :func:`ransac_iterations` for
    ``quick_inliers`` of the ratio-test matches (a fit that has them is found with probability
    0.99), not 2000, and only its inliers count (no refinement of the model, no scale check:
    the full verification does both). Candidate pairs are mostly plainly different pages (about 90 % fail it on
    the two re-scan corpora, and no pair that the full test keeps does: benchmarks/RESULTS.md).

    The score is the *coverage*: of the cells of a ``grid`` x ``grid`` division of each page
    that hold at least ``cell_keypoints`` keypoints, the share holding an inlier, the smaller of
    the two pages'. A second scan of a page is explained almost everywhere (a stamp or a note
    covers a few cells); another page that shares a letterhead, a form's boxes or a block of
    boilerplate is explained only there.

    Args:
        keypoints: a sequence of :data:`KEYPOINT_DTYPE` arrays (:func:`page_keypoints`), one per
            row; pairs: int64 (m, 2) row indices.
        settings: ``ratio``, ``ransac_px``, ``max_scale``, ``grid``, ``cell_keypoints``,
            ``quick_keypoints``, ``quick_inliers``.
        workers: threads (OpenCV and the numba matching kernel release the GIL); 0 = one per CPU core.

    Returns:
        ``(coverage, inliers)``: float32 (m,) in [0, 1] and int32 (m,) RANSAC inlier counts; 0 for
        a pair where a page has fewer than 8 keypoints or no transform is found. Deterministic
        (OpenCV's RANSAC draws from a fixed-seed generator on each call).
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    cov = np.zeros(len(pairs), np.float32)
    inl = np.zeros(len(pairs), np.int32)

    def run(start: int) -> None:
        for k in range(start, min(start + 256, len(pairs))):
            cov[k], inl[k] = _verify(keypoints[int(pairs[k, 0])], keypoints[int(pairs[k, 1])], settings)

    workers = workers or os.cpu_count() or 1
    starts = range(0, len(pairs), 256)
    if workers <= 1 or len(pairs) <= 256:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    return cov, inl


def older_settings_tokens(settings: DuplicateSettings) -> list[str]:
    """The tokens of earlier versions whose page maps and keypoints this version makes the same
    way: v2 (schema 7) stored the same map and keypoints as v3 (schema 8), without the ink. A
    page stored with one of them needs only its ink made (:func:`render_page_maps` with
    ``ink_only``), not its keypoints again."""
    return ["v2" + settings_token(settings).removeprefix("v3")]


def settings_token(settings: DuplicateSettings) -> str:
    """What a stored page map and its keypoints depend on, as a string: the settings that make
    them (render_px, max_skew_deg, content_share, map_px, keypoints, grid) and a version of this
    code's normalisation (v3: the ink, :func:`page_ink`, is stored with them)."""
    return (f"v3 render={settings.render_px} skew={settings.max_skew_deg:g} share={settings.content_share:g} "
            f"map={settings.map_px} orb={settings.keypoints} grid={settings.grid}")


def render_page_maps(src, page_nos: list[int], settings: DuplicateSettings = DuplicateSettings(),
                     ink_only: bool = False) -> list[tuple[int, bytes | None, bytes | None, bytes | None, str | None]]:
    """Render pages of one file and make their page maps and keypoints: a plain function of
    picklable arguments, for worker processes. It never raises for a bad file.

    Args:
        src: a :class:`docsort.core.pages.SourceFile`.
        page_nos: 1-based page numbers wanted (ascending).
        settings: ``render_px``, the map settings and the keypoint settings.
        ink_only: make the ink alone (map and keypoint bytes ``None``): for pages whose map and
            keypoints are stored under an :func:`older_settings_tokens` token.

    Returns:
        ``[(page_no, map bytes (map_px * map_px uint8) or None, keypoint bytes (a
        :data:`KEYPOINT_DTYPE` array) or None, ink bytes (:func:`page_ink`) or None, error or
        None), ...]`` for every wanted page; pages the file no longer has, or that fail to
        render, carry the error.
    """
    from docsort.config.settings import RenderSettings
    from docsort.core.pages import PageError, PopplerMissingError, iter_pages

    wanted = sorted(set(int(p) for p in page_nos))
    out: dict[int, tuple[int, bytes | None, bytes | None, bytes | None, str | None]] = {}
    render = RenderSettings(long_side_px=max(settings.render_px, 299), color="gray")
    try:
        for page in iter_pages(src, render, wanted[0], wanted[-1]):
            if page.page_no in wanted:
                if ink_only:
                    out[page.page_no] = (page.page_no, None, None, page_ink(page.image, settings), None)
                else:
                    out[page.page_no] = (page.page_no, page_map(page.image, settings).tobytes(),
                                         page_keypoints(page.image, settings).tobytes(), page_ink(page.image, settings), None)
    except (PageError, PopplerMissingError) as exc:
        reason = str(exc)
        for p in wanted:
            out.setdefault(p, (p, None, None, None, reason))
    for p in wanted:
        out.setdefault(p, (p, None, None, None, f"{src.path}: page {p} not found in the file"))
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

    # Never the collection index's IVF-PQ: its recall@10 (0.6 at 1M) would lose candidate pairs.
    index_settings = IndexSettings(type="flat" if len(x) < settings.exact_below else "hnsw",
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
        from datasketch import LeanMinHash, MinHashLSH

        lsh = MinHashLSH(threshold=settings.min_text_jaccard, num_perm=settings.num_perm)
        same_bucket = lsh.query  # pages already inserted that share a band with the query (datasketch)
        found = []
        for i in np.flatnonzero(has_text):
            # LeanMinHash: the stored hash values without the permutations a MinHash would draw
            # again for each page (12 s of the candidate stage at 100,000 pages otherwise).
            m = LeanMinHash(seed=1, hashvalues=minhashes[i], scheme=_MINHASH_SCHEME)
            found += [(min(int(i), j), max(int(i), j)) for j in same_bucket(m)]
            lsh.insert(int(i), m)
        if found:
            parts.append(np.asarray(found, np.int64))
    pairs = np.concatenate(parts)
    if not len(pairs):
        return np.zeros((0, 2), np.int64)
    key = np.unique(pairs[:, 0] * n + pairs[:, 1])  # one int64 a pair: sorted as (i, j), faster than axis=0
    return np.stack([key // n, key % n], axis=1)


@dataclass(frozen=True)
class Families:
    """Near-duplicate families, one row per page that belongs to one.

    Attributes:
        rows: int64 (m,) row indices (into the arrays given to :func:`find_families`) of the pages
            in families, grouped by family, ascending within each.
        family: int64 (m,) family numbers 0, 1, ..., in order of each family's first row.
        similarity: float32 (m,) each page's coverage (:func:`verify_pairs`) with its family's
            first page (1.0 for that page).
        pairs: int64 (p, 2) the near-duplicate pairs found (row indices ``i < j``).
        pair_coverage: float32 (p,) their coverage.
        pair_jaccard: float32 (p,) their estimated word Jaccard (NaN where a page has no text).
        kept_apart: int64 (r, 2) pairs the keypoints (or words) accepted and the ink check
            rejected (:func:`pair_conflicts`: pages of one template with different content).
    """

    rows: np.ndarray
    family: np.ndarray
    similarity: np.ndarray
    pairs: np.ndarray
    pair_coverage: np.ndarray
    pair_jaccard: np.ndarray
    kept_apart: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))


def score_pairs(
    keypoints,
    pairs: np.ndarray,
    minhashes: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
    settings: DuplicateSettings = DuplicateSettings(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decide which candidate pairs the keypoints and words accept (the rule in the module
    docstring; :func:`find_families` then checks the accepted ones' ink, :func:`pair_conflicts`).

    Args:
        keypoints: one :data:`KEYPOINT_DTYPE` array per row (:func:`page_keypoints`).
        pairs: int64 (m, 2) row indices.
        minhashes, has_text: optional :func:`text_minhashes` output.
        settings: ``min_coverage``, ``min_text_jaccard``, ``min_coverage_text`` and the
            verification settings.

    Returns:
        ``(same, coverage, jaccard)``: bool (m,), float32 (m,) coverage (:func:`verify_pairs`),
        float32 (m,) estimated word Jaccard (NaN where either page has no text).
    """
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    cov, _ = verify_pairs(keypoints, pairs, settings)
    jac = np.full(len(pairs), np.nan, np.float32)
    if minhashes is not None and has_text is not None and len(pairs):
        both = has_text[pairs[:, 0]] & has_text[pairs[:, 1]]
        jac[both] = (minhashes[pairs[both, 0]] == minhashes[pairs[both, 1]]).mean(axis=1)
    with np.errstate(invalid="ignore"):
        by_words = ~np.isnan(jac) & (jac >= settings.min_text_jaccard) & (cov >= settings.min_coverage_text)
    same = (cov >= settings.min_coverage) | by_words
    return same, cov, jac


def pair_conflicts(keypoints, pairs: np.ndarray, inks, settings: DuplicateSettings = DuplicateSettings(),
                   workers: int = 0) -> np.ndarray:
    """:func:`content_conflicts` of each pair, with the transform of :func:`pair_transform`.

    Args:
        keypoints: one :data:`KEYPOINT_DTYPE` array per row; pairs: int64 (m, 2) row indices.
        inks: callable from int64 row indices to their :func:`page_ink` bytes (or ``None``).
        settings: the verification and conflict settings.
        workers: threads (OpenCV, zlib and the matching kernel release the GIL); 0 = one per CPU core.

    Returns:
        int32 (m,): conflict cells; 0 where a page has no ink stored or no transform is found
        (nothing to hold against the pair).
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    out = np.zeros(len(pairs), np.int32)

    def run(part: np.ndarray, offset: int, blobs: dict) -> None:
        last, a = None, None  # only the current first page stays decoded (0.7 MB at 1000 px)
        for k, (i, j) in enumerate(part.tolist(), offset):
            if i != last:
                last, a = i, decode_ink(blobs[i]) if blobs.get(i) else None
            if a is None or not blobs.get(j):
                continue
            model = pair_transform(keypoints[i], keypoints[j], settings)
            if model is not None:
                out[k] = content_conflicts(a, decode_ink(blobs[j]), model, settings)

    workers = workers or os.cpu_count() or 1
    # In chunks of pairs whose pages' inks are read at once: memory stays flat however many pass.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(pairs), _CONFLICT_CHUNK):
            chunk = pairs[start:start + _CONFLICT_CHUNK]
            rows = np.unique(chunk)
            blobs = dict(zip(rows.tolist(), inks(rows)))
            step = -(-len(chunk) // workers)
            list(pool.map(lambda o: run(chunk[o:o + step], start + o, blobs), range(0, len(chunk), step)))
    return out


#: Pairs whose pages' inks are fetched at once by :func:`pair_conflicts`.
_CONFLICT_CHUNK = 2000


def find_families(
    maps: np.ndarray,
    keypoints,
    vectors: np.ndarray | None = None,
    minhashes: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
    settings: DuplicateSettings = DuplicateSettings(),
    pairs: np.ndarray | None = None,
    inks=None,
) -> Families:
    """Group pages that are the same page scanned more than once (see the module docstring).

    Args:
        maps: uint8 (n, S, S) :func:`page_map` of each page (candidate pairs).
        keypoints: one :data:`KEYPOINT_DTYPE` array per page (:func:`page_keypoints`).
        vectors: optional float32 (n, D) L2-normalised visual vectors (more candidate pairs).
        minhashes, has_text: optional :func:`text_minhashes` of the pages' OCR text.
        settings: thresholds and candidate generation.
        pairs: candidate pairs to use instead of :func:`candidate_pairs` (int64 (m, 2)).
        inks: optional callable taking int64 row indices and returning their :func:`page_ink`
            bytes (``None`` for a page without); asked only for the pages of the pairs that
            :func:`score_pairs` accepts, which :func:`pair_conflicts` then checks: a pair with
            ``max_conflict_cells`` or more is kept apart. Without it (or with
            ``max_conflict_cells = 0``) there is no such check.

    Returns:
        :class:`Families` (families of at least two pages). Deterministic for the same inputs.

    Raises:
        ValueError: inputs of different lengths.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    maps = np.asarray(maps, np.uint8)
    n = len(maps)
    if len(keypoints) != n:
        raise ValueError(f"{n} page maps but {len(keypoints)} keypoint arrays")
    if pairs is None:
        pairs = candidate_pairs(maps, vectors, minhashes, has_text, settings)
    same, cov, jac = score_pairs(keypoints, pairs, minhashes, has_text, settings)
    pairs, cov, jac = pairs[same], cov[same], jac[same]
    kept_apart = np.zeros((0, 2), np.int64)
    if inks is not None and settings.max_conflict_cells > 0 and len(pairs):
        ok = pair_conflicts(keypoints, pairs, inks, settings) < settings.max_conflict_cells
        kept_apart = pairs[~ok]
        pairs, cov, jac = pairs[ok], cov[ok], jac[ok]
    if not len(pairs):
        z = np.zeros(0, np.int64)
        return Families(z, z, np.zeros(0, np.float32), pairs, cov, jac, kept_apart)
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
    sim, _ = verify_pairs(keypoints, np.stack([rows, heads], axis=1), settings)
    sim[rows == heads] = 1.0
    return Families(rows.astype(np.int64), family.astype(np.int64), sim.astype(np.float32), pairs, cov, jac, kept_apart)
