"""The *pages* stage: files on disk become page images.

Supported inputs are PDF (every page, rendered by poppler's ``pdftoppm`` through ``pdf2image``),
TIFF (every frame), PNG and JPEG (Pillow). The format is detected from the file's first bytes,
not its extension, so a JPEG named ``.pdf`` is read as a JPEG.

Each file is identified by the sha256 of its bytes (:func:`sha256_file`), which is how the
storage stage recognises a re-ingested file or a renamed copy.

Pages are streamed: :func:`iter_pages` yields one :class:`Page` at a time and renders PDFs a few
pages per ``pdftoppm`` call, so a 1,000-page PDF never sits in memory whole.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from docsort.config.settings import OcrSettings, RenderSettings

__all__ = [
    "Page",
    "SourceFile",
    "PageError",
    "PopplerMissingError",
    "NotADocumentError",
    "DOCUMENT_EXTENSIONS",
    "SUPPORTED_FORMATS",
    "detect_format",
    "sha256_file",
    "discover_files",
    "count_pages",
    "iter_pages",
    "iter_ocr_pages",
    "to_network_input",
    "thumbnail_jpeg",
    "require_poppler",
    "without_main_module",
    "RenderedPage",
    "render_for_network",
]

SUPPORTED_FORMATS = ("pdf", "tiff", "png", "jpeg")


class PageError(Exception):
    """A file cannot be turned into pages. The message names the file and the reason.

    Attributes:
        path: the file, when known. A path may itself contain ``": "``, so callers take it (and
            the reason, the message after ``"{path}: "``) from here, not by splitting the message.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __reduce__(self):  # keep ``path`` when sent back from a rasterization worker process
        return (type(self), (str(self), self.path))


class NotADocumentError(PageError):
    """A file met during a folder walk that is not a document (a README, a .csv): skipped quietly."""


#: Extensions that claim to be documents; a file with one of these that is not readable as a
#: document is a failure, any other unrecognised file in a folder is skipped.
DOCUMENT_EXTENSIONS = {".pdf", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jpe", ".jfif"}


class PopplerMissingError(RuntimeError):
    """poppler's ``pdftoppm``/``pdfinfo`` are not on PATH, so PDFs cannot be rendered."""


@dataclass(frozen=True)
class SourceFile:
    """A file found by :func:`discover_files`.

    Attributes:
        path: the file's path as found (absolute).
        format: one of :data:`SUPPORTED_FORMATS`, detected from content.
        size_bytes: file size, bytes.
    """

    path: Path
    format: str
    size_bytes: int


@dataclass
class Page:
    """One rendered page.

    Attributes:
        page_no: 1-based page (PDF) or frame (TIFF) number.
        image: the page as a Pillow image, mode ``"L"`` or ``"RGB"``, longer side
            ``RenderSettings.long_side_px`` pixels (smaller images are kept at their size).
        source_size: (width, height) of the page in the source, pixels at the source resolution
            (for PDFs, at the render resolution).
    """

    page_no: int
    image: Image.Image
    source_size: tuple[int, int]


def require_poppler() -> None:
    """Raise :class:`PopplerMissingError` unless ``pdftoppm`` and ``pdfinfo`` are on PATH."""
    missing = [t for t in ("pdftoppm", "pdfinfo") if shutil.which(t) is None]
    if missing:
        raise PopplerMissingError(
            f"poppler is not installed ({', '.join(missing)} not found on PATH), so PDFs cannot "
            "be rendered. Install it: `apt-get install poppler-utils` (Debian/Ubuntu), "
            "`brew install poppler` (macOS), `conda install -c conda-forge poppler`."
        )


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte blocks.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Detect a supported format from the file's first bytes (magic numbers).

    Returns:
        ``"pdf"``, ``"tiff"``, ``"png"``, ``"jpeg"``, or ``None`` for anything else.

    Raises:
        OSError: the file cannot be opened.
    """
    with open(path, "rb") as f:
        head = f.read(1024)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    # The PDF spec allows junk before the header; Acrobat accepts it within the first 1024 bytes.
    if b"%PDF-" in head:
        return "pdf"
    return None


def discover_files(
    paths: Iterable[str | os.PathLike[str]],
) -> Iterator[SourceFile | PageError]:
    """Walk files and folders (recursively) and yield every supported document.

    Folders are walked in sorted order without following symlinked folders (so a symlink loop
    cannot recurse); symlinked files are followed. Hidden files and folders (name starting with
    ``.``) are skipped.

    Yields:
        :class:`SourceFile` for each supported document, or a :class:`PageError` for a path that
        cannot be read (dangling symlink, permission denied, not a supported format) so the caller
        can report it and go on; inside folders, a file that is neither a supported format by
        content nor named like one (``README.md``, ``labels.csv``) gives a
        :class:`NotADocumentError`, which callers count as skipped, not failed.
    """
    for root in paths:
        root = Path(root)
        if not root.exists() and not root.is_symlink():
            yield PageError(f"{root}: no such file or folder", root)
            continue
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    yield _classify(Path(dirpath) / name, in_folder=True)
        else:
            yield _classify(root)


def _classify(path: Path, in_folder: bool = False) -> SourceFile | PageError:
    path = path.absolute()
    try:
        st = path.stat()
    except FileNotFoundError:
        return PageError(f"{path}: dangling symlink or file vanished", path)
    except OSError as exc:
        return PageError(f"{path}: cannot stat: {exc.strerror or exc}", path)
    if not stat.S_ISREG(st.st_mode):
        return PageError(f"{path}: not a regular file", path)
    if st.st_size == 0:
        return PageError(f"{path}: empty file (0 bytes)", path)
    try:
        fmt = detect_format(path)
    except OSError as exc:
        return PageError(f"{path}: cannot read: {exc.strerror or exc}", path)
    if fmt is None:
        if in_folder and path.suffix.lower() not in DOCUMENT_EXTENSIONS:
            return NotADocumentError(f"{path}: not a document (skipped)", path)
        return PageError(f"{path}: not a PDF, TIFF, PNG or JPEG (detected from content)", path)
    return SourceFile(path=path, format=fmt, size_bytes=st.st_size)


def count_pages(src: SourceFile) -> int:
    """Number of pages (PDF) or frames (TIFF); 1 for PNG and JPEG.

    Raises:
        PageError: the file cannot be opened or reports no pages.
        PopplerMissingError: the file is a PDF and poppler is missing.
    """
    if src.format == "pdf":
        from pdf2image import pdfinfo_from_path
        from pdf2image.exceptions import PDFInfoNotInstalledError

        try:
            info = pdfinfo_from_path(str(src.path))
        except PDFInfoNotInstalledError as exc:  # pragma: no cover - covered by require_poppler
            raise PopplerMissingError(str(exc)) from exc
        except Exception as exc:
            raise PageError(f"{src.path}: {_pdf_reason(exc)}", src.path) from exc
        n = int(info.get("Pages", 0) or 0)
        if n <= 0:
            raise PageError(f"{src.path}: PDF has no pages", src.path)
        return n
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src.path) as im:
                return int(getattr(im, "n_frames", 1))
    except Exception as exc:
        raise _image_error(src, exc) from exc


def iter_pages(src: SourceFile, render: RenderSettings, first: int = 1, last: int | None = None) -> Iterator[Page]:
    """Yield the pages of one file, rendered for the network, one at a time.

    Args:
        src: a file from :func:`discover_files`.
        render: resolution and colour settings.
        first, last: 1-based inclusive page range (default: all pages).

    Yields:
        :class:`Page` objects in page order, images of mode ``"L"`` (``render.color == "gray"``)
        or ``"RGB"``, longer side ``render.long_side_px`` pixels at most.

    Raises:
        PageError: the file is corrupt, encrypted, truncated, a decompression bomb (Pillow's
            ``DecompressionBombError``), or otherwise unreadable; the message names the file.
        PopplerMissingError: a PDF is given and poppler is missing.
    """
    if src.format == "pdf":
        yield from _iter_pdf(src, render, first, last)
    else:
        yield from _iter_image(src, render, first, last)


def _iter_pdf(src: SourceFile, render: RenderSettings, start: int = 1, stop: int | None = None) -> Iterator[Page]:
    from pdf2image import convert_from_path
    from pdf2image.exceptions import PDFInfoNotInstalledError

    n = count_pages(src) if stop is None else stop
    for first in range(start, n + 1, render.pdf_chunk_pages):
        last = min(n, first + render.pdf_chunk_pages - 1)
        try:
            images = convert_from_path(
                str(src.path),
                size=render.long_side_px,  # pdftoppm -scale-to: longer side in pixels
                first_page=first,
                last_page=last,
                grayscale=render.color == "gray",
                fmt="ppm",  # raw, no encode/decode round trip (PNG is ~10x slower here)
                thread_count=1,
            )
        except PDFInfoNotInstalledError as exc:  # pragma: no cover
            raise PopplerMissingError(str(exc)) from exc
        except Exception as exc:
            raise PageError(f"{src.path}: cannot render pages {first}-{last}: {_clean(exc)}") from exc
        if len(images) != last - first + 1:
            raise PageError(
                f"{src.path}: poppler rendered {len(images)} of pages {first}-{last} "
                "(damaged or encrypted PDF)"
            )
        for offset, im in enumerate(images):
            im = _normalise_mode(im, render)
            yield Page(page_no=first + offset, image=im, source_size=im.size)


def _iter_image(src: SourceFile, render: RenderSettings, start: int = 1, stop: int | None = None) -> Iterator[Page]:
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; treat both as errors.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src.path) as im:
                n = int(getattr(im, "n_frames", 1)) if stop is None else stop
                for i in range(start - 1, n):
                    im.seek(i)
                    size = im.size
                    if im.format == "JPEG":
                        # Let libjpeg decode at 1/2..1/8 scale when that still covers the target.
                        im.draft(im.mode, (render.long_side_px, render.long_side_px))
                    frame = ImageOps.exif_transpose(im) if i == 0 else im.copy()
                    frame = _normalise_mode(frame, render)
                    yield Page(page_no=i + 1, image=frame, source_size=size)
    except PageError:
        raise
    except Exception as exc:
        raise _image_error(src, exc) from exc


def iter_ocr_pages(src: SourceFile, ocr: OcrSettings, first: int = 1, last: int | None = None) -> Iterator[Page]:
    """Yield the pages of one file as images for OCR (:mod:`docsort.jobs.ocr`), one at a time.

    Unlike :func:`iter_pages` (a small picture for the network), OCR needs the text's own
    resolution: Tesseract reads best with x-heights of 20+ pixels, i.e. about 300 dpi for body
    text (Tesseract docs, "Improving the quality of the output", section "Rescaling").

    * PDF pages are rendered one page per ``pdftoppm`` call (``pdf2image.convert_from_path``,
      ``-r ocr.dpi``, ``-gray``, PPM output), so memory stays at one page whatever the range. A
      page whose longer side would exceed ``ocr.max_long_side_px`` at that resolution (a poster,
      a 30,000 pt page) is rendered with its longer side at ``max_long_side_px`` instead
      (``pdftoppm -scale-to``); page sizes come from ``pdfinfo -f FIRST -l LAST``.
    * Image files (TIFF frames, PNG, JPEG) are read by the same code as :func:`iter_pages`
      (decompression-bomb guard, EXIF orientation of the first frame, any Pillow mode to 8-bit
      grey, 16-bit scaled), at their own resolution, downscaled (Lanczos) only when their longer
      side exceeds ``ocr.max_long_side_px``; never upscaled.

    Args:
        src: a file from :func:`discover_files` (or rebuilt from a stored document).
        ocr: ``dpi`` (PDFs, dots per inch) and ``max_long_side_px`` (pixels).
        first, last: 1-based inclusive page range (default: all pages).

    Yields:
        :class:`Page` objects in page order, images of mode ``"L"`` (8-bit grey), longer side at
        most ``ocr.max_long_side_px`` pixels; ``source_size`` is the rendered size (PDF) or the
        frame's size in the file (images), pixels.

    Raises:
        PageError: the file is corrupt, encrypted, truncated, a decompression bomb (Pillow's
            ``MAX_IMAGE_PIXELS``, for PDFs checked against the size it would render at), or
            otherwise unreadable; the message names the file.
        PopplerMissingError: a PDF is given and poppler is missing.
    """
    # The ingest path's readers take a RenderSettings; this one carries the OCR size limit,
    # which may exceed the ingest bound (4096 px), hence model_construct (no re-validation:
    # OcrSettings already validated max_long_side_px).
    raster = RenderSettings.model_construct(long_side_px=ocr.max_long_side_px, color="gray")
    if src.format == "pdf":
        yield from _iter_pdf_for_ocr(src, ocr, raster, first, last)
    else:
        yield from _iter_image(src, raster, first, last)


def _iter_pdf_for_ocr(
    src: SourceFile, ocr: OcrSettings, raster: RenderSettings, start: int = 1, stop: int | None = None
) -> Iterator[Page]:
    import re

    from pdf2image import convert_from_path, pdfinfo_from_path
    from pdf2image.exceptions import PDFInfoNotInstalledError

    n = count_pages(src) if stop is None else stop
    if n < start:
        return
    try:
        info = pdfinfo_from_path(str(src.path), first_page=start, last_page=n)
    except PDFInfoNotInstalledError as exc:  # pragma: no cover - count_pages or require_poppler says so first
        raise PopplerMissingError(str(exc)) from exc
    except Exception as exc:
        raise PageError(f"{src.path}: {_pdf_reason(exc)}", src.path) from exc
    sizes: dict[int, tuple[float, float]] = {}
    for key, value in info.items():
        m = re.fullmatch(r"Page\s+(\d+)\s+size", key)
        v = re.match(r"\s*([\d.]+)\s*x\s*([\d.]+)\s*pts", str(value))
        if m and v:
            sizes[int(m.group(1))] = (float(v.group(1)), float(v.group(2)))
    for page_no in range(start, n + 1):
        w_pt, h_pt = sizes.get(page_no, (0.0, 0.0))
        scale = ocr.dpi / 72.0
        if 0 < max(w_pt, h_pt) * scale <= ocr.max_long_side_px:
            size_args: dict = {"dpi": ocr.dpi}
        else:  # too large at this dpi, or size unknown: cap the longer side (pdftoppm -scale-to)
            size_args = {"size": ocr.max_long_side_px}
            if max(w_pt, h_pt) > 0:
                scale = ocr.max_long_side_px / max(w_pt, h_pt)
        pixels = w_pt * h_pt * scale * scale
        if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
            raise PageError(
                f"{src.path}: image too large (decompression bomb guard, {Image.MAX_IMAGE_PIXELS} pixels at most): "
                f"page {page_no} would render at {pixels:.0f} pixels",
                src.path,
            )
        try:
            images = convert_from_path(
                str(src.path),
                first_page=page_no,
                last_page=page_no,
                grayscale=True,
                fmt="ppm",  # raw, no encode/decode round trip
                thread_count=1,
                **size_args,
            )
        except PDFInfoNotInstalledError as exc:  # pragma: no cover
            raise PopplerMissingError(str(exc)) from exc
        except Exception as exc:
            raise PageError(f"{src.path}: cannot render page {page_no}: {_clean(exc)}", src.path) from exc
        if len(images) != 1:
            raise PageError(f"{src.path}: poppler rendered {len(images)} images for page {page_no} (damaged or encrypted PDF)", src.path)
        im = _normalise_mode(images[0], raster)
        yield Page(page_no=page_no, image=im, source_size=im.size)


def _normalise_mode(im: Image.Image, render: RenderSettings) -> Image.Image:
    """Convert any Pillow mode (1, L, P, RGB, RGBA, CMYK, I;16, ...) to L or RGB and downscale.

    Takes ownership of ``im``: the downscale happens in place (``Image.thumbnail``), without the
    full-resolution copy that cost ~4 ms a page for PNG and TIFF scans here; every caller passes an
    image of its own (poppler's output, a frame copy, ``exif_transpose``'s copy).
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        arr = arr * (255.0 / hi) if hi > 255 else arr
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    target = "L" if render.color == "gray" else "RGB"
    if im.mode != target:
        im = im.convert(target)
    if max(im.size) > render.long_side_px:
        im.thumbnail((render.long_side_px, render.long_side_px), Image.Resampling.LANCZOS)
    return im


def to_network_input(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Resize a page to the network's input size (squashing the aspect ratio, as the seed does).

    Args:
        image: a page image of mode ``"L"`` or ``"RGB"``.
        size: (height, width) in pixels, e.g. (299, 299).

    Returns:
        ``uint8`` array of shape ``(height, width, 1)`` for ``"L"`` or ``(height, width, 3)``.
        Normalisation to floats happens on the device, inside the compiled forward pass.
    """
    h, w = size
    resized = image.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(resized, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def thumbnail_jpeg(image: Image.Image, long_side_px: int, quality: int = 80) -> bytes:
    """Encode a small JPEG thumbnail of a page (longer side ``long_side_px`` pixels, aspect kept).

    Made from the already reduced page (``RenderSettings.long_side_px``, 400 px), with Pillow's
    antialiased bilinear filter (its support widens with the reduction, so no aliasing) and
    without ``optimize`` (a second Huffman pass): 1.3-2.7 ms a page against 4.9-5.0 ms for
    LANCZOS + optimize, measured on sample_docs here. Thumbnails do not feed the network.
    """
    w, h = image.size
    scale = long_side_px / max(w, h)
    thumb = image if scale >= 1 else image.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def exit_with_parent(parent_pid: int) -> None:
    """Initializer of rasterization worker processes: exit as soon as the ingesting process is gone.

    Workers of a ``spawn`` pool hold both ends of their task queue's pipe, so they never see it
    close; without this, the workers of an ingest killed with SIGKILL would live on, orphaned.
    """
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="docsort-exit-with-parent", daemon=True).start()


@contextmanager
def without_main_module() -> Iterator[None]:
    """Hide the caller's ``__main__`` while ``spawn`` worker processes are started.

    ``spawn`` makes each new process re-run the parent's main script (as ``__mp_main__``) so that
    functions defined there can be unpickled. docsort's workers (rasterization, OCR) only need
    docsort's own modules, and re-running a user's script that calls docsort without an
    ``if __name__ == "__main__":`` guard would make every worker run that script (Python docs,
    multiprocessing, "Safe importing of main module"). A bare stand-in module is put in place for
    the moment the processes are started (:mod:`docsort.core.workers` starts every worker so).
    """
    import sys
    import types

    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def _pdf_reason(exc: BaseException) -> str:
    """The reason poppler's ``pdfinfo`` refused a PDF, in words."""
    text = str(exc)
    if "Incorrect password" in text:
        return "encrypted PDF: it needs a password to open (poppler: Incorrect password)"
    if "Invalid page count 0" in text:
        return "PDF has no pages"
    return f"cannot read PDF: {_clean(exc)}"


def _image_error(src: SourceFile, exc: BaseException) -> PageError:
    """A :class:`PageError` for an image Pillow refused, with the reason in words."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        reason = f"image too large (decompression bomb guard, {Image.MAX_IMAGE_PIXELS} pixels at most): {exc}"
    elif src.format == "tiff" and isinstance(exc, Image.UnidentifiedImageError):
        reason = _tiff_reason(src.path)
    else:
        reason = f"cannot read image: {_clean(exc)}"
    return PageError(f"{src.path}: {reason}", src.path)


def _tiff_reason(path: Path) -> str:
    """Why Pillow cannot identify a file that starts like a TIFF (most often its compression)."""
    from PIL import TiffImagePlugin

    try:
        with open(path, "rb") as f:
            head = f.read(16)
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head if b"+" in head[2:4] else head[:8])  # BigTIFF: 16
            f.seek(ifd.next)
            ifd.load(f)
        code = ifd.get(259, 1)  # Compression
    except Exception as exc:
        return f"cannot read TIFF: {_clean(exc)}"
    if code not in TiffImagePlugin.COMPRESSION_INFO:
        return f"unsupported TIFF compression (Compression tag {code})"
    return "cannot read TIFF (unsupported layout or damaged header)"


def _clean(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # pdf2image passes poppler's stderr through; keep the first informative line.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 else "; ".join(lines[:3])


@dataclass
class RenderedPage:
    """A page ready for the network: what a rasterization worker sends back.

    Attributes:
        page_no: 1-based page number.
        width_px, height_px: size of the rendered page image, pixels.
        pixels: ``uint8`` (H, W, C) network input (C = 1 grey, 3 RGB), H x W = the input size.
        thumbnail: JPEG bytes, longer side ``RenderSettings.thumbnail_px``.
    """

    page_no: int
    width_px: int
    height_px: int
    pixels: np.ndarray
    thumbnail: bytes


def render_for_network(
    src: SourceFile, render: RenderSettings, input_size: tuple[int, int], first: int = 1, last: int | None = None
) -> tuple[list[RenderedPage], PageError | None, float]:
    """Render a page range, resize it to the network input and make thumbnails.

    A plain function of picklable arguments, so :mod:`docsort.jobs.ingest` can run it in worker
    processes. It never raises for a bad file: the pages read before the failure come back with
    the error.

    Args:
        src: the file; render: settings; input_size: (height, width) pixels;
        first, last: 1-based inclusive page range.

    Returns:
        ``(pages, error, seconds)``: the rendered pages in order, a :class:`PageError` or ``None``,
        and the wall time spent, seconds.
    """
    import time

    t0 = time.perf_counter()
    out: list[RenderedPage] = []
    try:
        for page in iter_pages(src, render, first, last):
            out.append(
                RenderedPage(
                    page.page_no,
                    page.image.width,
                    page.image.height,
                    to_network_input(page.image, input_size),
                    thumbnail_jpeg(page.image, render.thumbnail_px),
                )
            )
    except PageError as exc:
        return out, exc, time.perf_counter() - t0
    except PopplerMissingError as exc:
        return out, PageError(f"{src.path}: {exc}"), time.perf_counter() - t0
    return out, None, time.perf_counter() - t0
