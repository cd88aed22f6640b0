"""Optical character recognition of page images with Tesseract (pytesseract): check the install, OCR
one image, OCR the pages of one file (run in worker processes). Pure: images in, rows out; storing
them is :mod:`docsort.jobs.ocr`'s."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytesseract

from docsort.config.settings import OcrSettings
from docsort.core.pages import PageError, PopplerMissingError, SourceFile, exit_with_parent, iter_ocr_pages

_INSTALL = "install it: bash scripts/system-deps.sh, or apt-get install tesseract-ocr tesseract-ocr-eng"


class TesseractMissingError(RuntimeError):
    """The ``tesseract`` binary, or the language data asked for, is not installed."""


def require_tesseract(lang: str) -> str:
    """Check that Tesseract and every language of ``lang`` are installed.

    Runs ``tesseract --version`` and ``tesseract --list-langs`` (the command is pytesseract's
    ``pytesseract.pytesseract.tesseract_cmd``, ``"tesseract"`` on PATH unless set), uncached, so a
    fix is seen at once.

    Args:
        lang: Tesseract language(s), ``+``-joined (``"eng"``, ``"eng+fra"``).

    Returns:
        The engine, e.g. ``"tesseract 5.3.0"`` (the first line of ``tesseract --version``).

    Raises:
        TesseractMissingError: the binary is missing or does not run (the message says how to
            install it), or a language is not installed (the message names it, lists the installed
            ones and names the Debian package ``tesseract-ocr-<lang>``).
    """
    cmd = pytesseract.pytesseract.tesseract_cmd
    try:
        res = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        reason = "not found on PATH" if isinstance(exc, FileNotFoundError) else str(exc)
        raise TesseractMissingError(f"tesseract is not installed ({cmd!r} {reason}), so pages cannot be OCR'd; {_INSTALL}") from exc
    lines = [ln.strip() for ln in (res.stdout + "\n" + res.stderr).splitlines() if ln.strip()]
    if res.returncode != 0 or not lines or not lines[0].lower().startswith("tesseract"):
        raise TesseractMissingError(f"{cmd} --version failed (exit {res.returncode}): {' '.join(lines[:2])}; {_INSTALL}")
    engine = lines[0]
    res = subprocess.run([cmd, "--list-langs"], capture_output=True, text=True, timeout=60)
    listed = [ln.strip() for ln in (res.stdout or "").splitlines()]
    installed = [ln for ln in listed if ln and not ln.lower().startswith("list of available languages")]
    missing = [code for code in lang.split("+") if code not in installed]
    if missing:
        packages = " ".join(f"tesseract-ocr-{code.lower().replace('_', '-')}" for code in missing)
        raise TesseractMissingError(
            f"tesseract has no language data for {', '.join(missing)} (installed: {', '.join(installed) or 'none'}); "
            f"install it: apt-get install {packages} (Debian/Ubuntu), or choose --ocr-lang/--lang among the installed ones"
        )
    return engine


def ocr_image(image, ocr: OcrSettings) -> dict:
    """OCR one page image with Tesseract (``pytesseract.image_to_data``, TSV as a dict).

    Tesseract runs single-threaded (``OMP_THREAD_LIMIT=1`` set for the call), also when this is
    called outside a worker (e.g. to OCR a query page): its OpenMP threads made a page ~5x slower.

    Args:
        image: a Pillow image (mode ``"L"`` from :func:`docsort.core.pages.iter_ocr_pages`).
        ocr: ``lang``, ``psm`` (``--psm``) and ``timeout_s`` (seconds for this page).

    Returns:
        ``{"text", "confidence", "n_words", "long_side_px", "seconds", "error"}``: ``text`` the
        recognised words, one line of the page per line and a blank line between paragraphs
        (words grouped by Tesseract's block, paragraph and line numbers); ``confidence`` the mean
        of the words' confidences (0-100, words with ``conf >= 0``), ``None`` when there are no
        words; ``n_words`` the words in ``text``; ``long_side_px`` the image's longer side,
        pixels; ``seconds`` Tesseract's wall time; ``error`` ``None`` or why Tesseract failed
        (timeout after ``timeout_s``, a Tesseract error, Tesseract missing), then ``text`` is "".
        Never raises for a Tesseract failure.
    """
    t0 = time.perf_counter()
    out = {"text": "", "confidence": None, "n_words": 0, "long_side_px": int(max(image.size)), "seconds": 0.0, "error": None}
    try:
        with _single_threaded():  # wherever it is called from: its OpenMP threads only slow it down
            data = pytesseract.image_to_data(
                image, lang=ocr.lang, config=f"--psm {ocr.psm}", timeout=ocr.timeout_s, output_type=pytesseract.Output.DICT
            )
    except pytesseract.TesseractNotFoundError:
        out["error"] = f"tesseract not found ({pytesseract.pytesseract.tesseract_cmd!r}); {_INSTALL}"
    except pytesseract.TesseractError as exc:
        out["error"] = f"tesseract failed (exit {exc.status}): {exc.message or 'no message'}"
    except RuntimeError as exc:  # pytesseract's timeout: RuntimeError("Tesseract process timeout")
        out["error"] = f"tesseract timed out after {ocr.timeout_s:g} s" if "timeout" in str(exc).lower() else f"tesseract failed: {exc}"
    except Exception as exc:  # e.g. the temp image file pytesseract writes cannot be written
        out["error"] = f"OCR failed: {type(exc).__name__}: {exc}"
    else:
        lines: dict[tuple, list[str]] = {}
        confs: list[float] = []
        for i, level in enumerate(data.get("level", [])):
            word = str(data["text"][i]).strip()
            if int(level) != 5 or not word:
                continue
            key = (data["page_num"][i], data["block_num"][i], data["par_num"][i], data["line_num"][i])
            lines.setdefault(key, []).append(word)
            conf = float(data["conf"][i])
            if conf >= 0:
                confs.append(conf)
        text, paragraph = [], None
        for key, words in lines.items():
            if paragraph is not None and key[:3] != paragraph:
                text.append("")
            text.append(" ".join(words))
            paragraph = key[:3]
        out["text"] = "\n".join(text)
        out["n_words"] = sum(len(w) for w in lines.values())
        out["confidence"] = sum(confs) / len(confs) if confs else None
    out["seconds"] = time.perf_counter() - t0
    return out


def ocr_pages(src: SourceFile, pages: list[tuple[int, int]], ocr: OcrSettings, engine: str) -> list[dict]:
    """OCR some pages of one document: the unit of work of an OCR worker process.

    A plain function of picklable arguments. Pages are read with
    :func:`docsort.core.pages.iter_ocr_pages` (one run of consecutive page numbers at a time) and
    OCR'd by :func:`ocr_image`. It never raises for a bad page or file: a page that cannot be
    rendered, or that Tesseract fails on, comes back with ``error`` set.

    Args:
        src: the document's file (its sha256 already checked by the caller).
        pages: ``[(page_id, page_no), ...]``, page_no 1-based.
        ocr: the OCR settings; engine: e.g. ``"tesseract 5.3.0"`` (stored with each row).

    Returns:
        One row per page, in page order, as :meth:`Collection.store_page_texts` takes them:
        ``page_id``, ``page_no``, ``text``, ``confidence``, ``n_words``, ``lang``, ``engine``,
        ``long_side_px``, ``seconds`` (render + OCR wall time of that page), ``error``.
    """
    ids = {int(no): int(pid) for pid, no in pages}
    rows: list[dict] = []
    numbers = sorted(ids)
    runs: list[tuple[int, int]] = []
    for no in numbers:
        if runs and no == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], no)
        else:
            runs.append((no, no))
    for first, last in runs:
        t = time.perf_counter()
        done = set()
        try:
            for page in iter_ocr_pages(src, ocr, first, last):
                if page.page_no not in ids:
                    continue
                render_s = time.perf_counter() - t
                result = ocr_image(page.image, ocr)
                result["seconds"] += render_s
                rows.append({"page_id": ids[page.page_no], "page_no": page.page_no, "lang": ocr.lang, "engine": engine, **result})
                done.add(page.page_no)
                t = time.perf_counter()
        except (PageError, PopplerMissingError) as exc:
            reason = str(exc) if str(src.path) in str(exc) else f"{src.path}: {exc}"
            for no in range(first, last + 1):
                if no not in done:
                    rows.append(_error_row(ids[no], no, ocr.lang, engine, reason, time.perf_counter() - t))
                    t = time.perf_counter()
        else:
            for no in range(first, last + 1):  # fewer frames than stored pages: the file is not what it was
                if no not in done:
                    rows.append(_error_row(ids[no], no, ocr.lang, engine, f"{src.path}: page {no} not found in the file", 0.0))
    return rows


def _error_row(page_id: int, page_no: int, lang: str, engine: str, error: str, seconds: float) -> dict:
    return {"page_id": page_id, "page_no": page_no, "text": "", "confidence": None, "n_words": 0, "lang": lang,
            "engine": engine, "long_side_px": 0, "seconds": seconds, "error": error}


def _init_worker(parent_pid: int) -> None:
    """Initializer of OCR worker processes: Tesseract single-threaded, exit with the parent."""
    os.environ["OMP_THREAD_LIMIT"] = "1"
    exit_with_parent(parent_pid)


_env_lock = threading.Lock()


_env_users = 0


_env_saved: str | None = None


@contextmanager
def _single_threaded() -> Iterator[None]:
    """``OMP_THREAD_LIMIT=1`` for the Tesseract processes started meanwhile in this process
    (pytesseract passes ``os.environ`` to them), restored when the last concurrent user (threads of
    the Streamlit app, say) is done. Only the variable is touched: libraries already loaded here
    (FAISS, numba) read OpenMP's settings once, when they start."""
    global _env_users, _env_saved
    with _env_lock:
        if _env_users == 0:
            _env_saved = os.environ.get("OMP_THREAD_LIMIT")
            os.environ["OMP_THREAD_LIMIT"] = "1"
        _env_users += 1
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            if _env_users == 0:
                if _env_saved is None:
                    os.environ.pop("OMP_THREAD_LIMIT", None)
                else:
                    os.environ["OMP_THREAD_LIMIT"] = _env_saved
