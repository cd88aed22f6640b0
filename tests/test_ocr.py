"""The OCR stage (docsort.jobs.ocr, pages.iter_ocr_pages, `docsort ocr`, `ingest --ocr`) on real scans.

Every test OCRs real pages of sample_docs/ with the installed Tesseract; the ones that only read
share the session's ``ocr_collection`` (all 41 pages OCR'd once). Tests that write OCR a handful of
light pages (:data:`LIGHT`, ~4 s of Tesseract on 2 cores) to stay quick.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytesseract
from filelock import FileLock, Timeout

from docsort.jobs.ocr import LOCK, backfill, with_ocr
from docsort.core.ocr import TesseractMissingError, ocr_pages, require_tesseract
from docsort.core.pages import PageError, SourceFile, discover_files, iter_ocr_pages
from docsort.config.settings import OcrSettings
from docsort.store.storage import Collection, CollectionBusyError

from .conftest import SAMPLE_DOCS
from .test_bad_input import pdf_bytes, png_bytes

DOCSORT = str(Path(sys.executable).with_name("docsort"))
ENGINE = "tesseract 5.3.0"
HUCK = SAMPLE_DOCS / "ocrmypdf" / "c03-29.jpg"  # Huckleberry Finn, chapter III, 150 dpi
BOOK = SAMPLE_DOCS / "leptonica" / "book-pages.pdf"  # page 1: "IN RUSSIAN TRENCHES 27"
#: Light pages (one per document, so one task each): ~6 s of Tesseract in all.
LIGHT = ["ocrmypdf/c03-29.jpg", "leptonica/ortiz-02.png", "leptonica/1555.003.jpg", "leptonica/comap.063.jpg",
         "leptonica/comap.100.jpg", "leptonica/map1.jpg"]


def run(*args, env=None, timeout=300):
    e = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200", **(env or {})}
    return subprocess.run([DOCSORT, *map(str, args)], capture_output=True, text=True, env=e, timeout=timeout)


def source(path: Path) -> SourceFile:
    item = next(discover_files([path]))
    assert isinstance(item, SourceFile), item
    return item


def page_ids(col: Collection, files: list[str]) -> dict[str, int]:
    """{"dir/name": page id} of page 1 of each file."""
    wanted = {str((SAMPLE_DOCS / f).absolute()): f for f in files}
    return {wanted[p.path]: p.page_id for p in col.pages() if p.path in wanted and p.page_no == 1}


def ocr_rows(root: Path) -> dict[int, tuple]:
    """page_id -> (text, error, seconds, at) straight from SQLite (read-only)."""
    with sqlite3.connect(f"file:{root / Collection.DB}?mode=ro", uri=True, timeout=10) as db:
        return {r[0]: r[1:] for r in db.execute("SELECT page_id, text, error, seconds, at FROM page_text")}


def settings_with(settings, **ocr):
    return with_ocr(settings, **ocr)


# ---------------------------------------------------------------------------------------------
# page images for OCR
# ---------------------------------------------------------------------------------------------


def test_ocr_pages_are_grey_pdfs_at_the_ocr_dpi_images_at_their_own_resolution(tmp_path):
    ocr = OcrSettings()  # 200 dpi, at most 4000 px
    pdf = list(iter_ocr_pages(source(BOOK), ocr))
    assert [p.page_no for p in pdf] == [1, 2, 3, 4, 5]
    assert all(p.image.mode == "L" for p in pdf)
    # page 1 is 544.8 x 848.64 pt (pdfinfo): at 200 dpi 1513.3 x 2357.3 px
    assert abs(pdf[0].image.width - 544.8 * 200 / 72) <= 1 and abs(pdf[0].image.height - 848.64 * 200 / 72) <= 1
    assert [p.page_no for p in iter_ocr_pages(source(BOOK), OcrSettings(dpi=100), 2, 3)] == [2, 3]
    assert max(next(iter_ocr_pages(source(BOOK), OcrSettings(dpi=100))).image.size) == round(848.64 * 100 / 72)

    huck = list(iter_ocr_pages(source(HUCK), ocr))  # an RGB JPEG, 770 x 995 px
    assert len(huck) == 1 and huck[0].image.size == (770, 995) and huck[0].image.mode == "L"
    fax = list(iter_ocr_pages(source(SAMPLE_DOCS / "jbigkit" / "ccitt-1-3-4-5-7.tif"), ocr, 2, 3))  # bilevel frames
    assert [p.page_no for p in fax] == [2, 3] and {p.image.mode for p in fax} == {"L"} and fax[0].image.size == (1296, 1782)

    small = OcrSettings(max_long_side_px=600)  # downscaled only above the limit, never upscaled
    assert max(next(iter_ocr_pages(source(HUCK), small)).image.size) == 600
    assert max(next(iter_ocr_pages(source(BOOK), small)).image.size) == 600
    assert max(next(iter_ocr_pages(source(SAMPLE_DOCS / "leptonica" / "comap.063.jpg"), small)).image.size) < 600

    poster = tmp_path / "poster.pdf"  # 30,000 pt square: 83,333 px at 200 dpi
    poster.write_bytes(pdf_bytes(1, (30000, 30000), b"0 g 1000 1000 9000 9000 re f"))
    assert next(iter_ocr_pages(source(poster), ocr)).image.size == (4000, 4000)
    with pytest.raises(PageError, match="decompression bomb") as exc:
        list(iter_ocr_pages(source(poster), OcrSettings(max_long_side_px=20000)))
    assert str(poster) in str(exc.value)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(9500, 9500))
    with pytest.raises(PageError, match="decompression bomb") as exc:
        list(iter_ocr_pages(source(bomb), ocr))
    assert str(bomb) in str(exc.value)


# ---------------------------------------------------------------------------------------------
# what OCR reads (the session's OCR'd sample collection)
# ---------------------------------------------------------------------------------------------


def test_ocr_reads_the_words_of_a_scanned_page_and_a_pdf_page(ocr_collection):
    with Collection(ocr_collection) as col:
        ids = page_ids(col, ["ocrmypdf/c03-29.jpg", "leptonica/book-pages.pdf", "leptonica/comap.063.jpg"])
        texts = col.page_texts()
        counts = col.text_counts()
        manifest = col.manifest()
    assert counts["pages_with_text"] == 41 and counts["ocr_failed"] == 0
    huck = texts[ids["ocrmypdf/c03-29.jpg"]]
    for word in ("Watson", "widow", "clothes", "grease", "hooks", "prayed", "fish-line"):
        assert word in huck["text"], word
    assert "she took me in the closet and prayed, but" in huck["text"].splitlines()  # lines kept as printed
    assert huck["n_words"] > 200 and huck["confidence"] > 80 and huck["error"] is None
    assert (huck["long_side_px"], huck["lang"], huck["engine"]) == (995, "eng", ENGINE)
    book = texts[ids["leptonica/book-pages.pdf"]]  # a PDF page, rendered at 200 dpi
    for word in ("RUSSIAN TRENCHES", "Ernst", "Suvaroff", "Germans", "helping"):
        assert word in book["text"], word
    assert book["long_side_px"] == 2358 and book["confidence"] > 80  # 848.64 pt at 200 dpi, rounded up by pdftoppm
    assert "\n\n" in book["text"]  # paragraphs apart
    map_page = texts[ids["leptonica/comap.063.jpg"]]  # a map: no words, and no error
    assert map_page["error"] is None and map_page["n_words"] <= 3
    assert manifest["ocr"]["engine"] == ENGINE
    assert {k: manifest["ocr"][k] for k in ("lang", "dpi", "psm")} == {"lang": "eng", "dpi": 200, "psm": 3}


def test_full_text_search_finds_ocr_words(ocr_collection):
    with Collection(ocr_collection) as col:
        ids = page_ids(col, ["ocrmypdf/c03-29.jpg", "leptonica/book-pages.pdf"])
        hits = col.search_text("Watson")
        assert hits and hits[0][0] == ids["ocrmypdf/c03-29.jpg"] and "[Watson]" in hits[0][2]
        assert [h[0] for h in col.search_text("Suvaroff")] == [ids["leptonica/book-pages.pdf"]]
        assert col.search_text('"miss watson" widow')[0][0] == ids["ocrmypdf/c03-29.jpg"]


# ---------------------------------------------------------------------------------------------
# errors per page, Tesseract missing
# ---------------------------------------------------------------------------------------------


def test_a_page_that_fails_is_an_error_row_not_an_exception(tmp_path):
    rows = ocr_pages(source(HUCK), [(7, 1)], OcrSettings(timeout_s=0.01), ENGINE)
    assert len(rows) == 1 and rows[0]["page_id"] == 7
    assert rows[0]["error"] == "tesseract timed out after 0.01 s" and rows[0]["text"] == "" and rows[0]["n_words"] == 0
    rows = ocr_pages(source(HUCK), [(8, 2)], OcrSettings(), ENGINE)  # no page 2 in a JPEG
    assert rows[0]["page_id"] == 8 and str(HUCK) in rows[0]["error"]
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(BOOK.read_bytes()[:5000])
    rows = ocr_pages(SourceFile(broken, "pdf", broken.stat().st_size), [(1, 1), (2, 2)], OcrSettings(), ENGINE)
    assert [r["page_id"] for r in rows] == [1, 2] and all(str(broken) in r["error"] for r in rows)


def test_missing_tesseract_or_language_is_a_clear_error(monkeypatch, tmp_path, settings):
    assert require_tesseract("eng") == ENGINE
    with pytest.raises(TesseractMissingError) as exc:
        require_tesseract("eng+xyz")
    msg = str(exc.value)
    assert "no language data for xyz" in msg and "installed: eng" in msg and "apt-get install tesseract-ocr-xyz" in msg

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", str(tmp_path / "no-tesseract"))
    with pytest.raises(TesseractMissingError) as exc:
        require_tesseract("eng")
    assert "tesseract is not installed" in str(exc.value)
    assert "bash scripts/system-deps.sh, or apt-get install tesseract-ocr tesseract-ocr-eng" in str(exc.value)
    # ingest(ocr=True) checks before anything is embedded or stored
    from docsort.jobs.ingest import ingest

    with Collection(tmp_path / "col", create=True) as col:
        with pytest.raises(TesseractMissingError):
            ingest(col, [HUCK], settings, ocr=True, progress=False, log=lambda m: None)
        assert col.counts()["pages"] == 0 and col.manifest() is None


def test_cli_ocr_without_tesseract_exits_3_with_one_line(collection_copy):
    res = run("ocr", "-c", collection_copy, env={"PATH": str(Path(sys.executable).parent)})  # no tesseract there
    assert res.returncode == 3, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "tesseract is not installed" in res.stderr
    res = run("ocr", "-c", collection_copy, "--lang", "eng+xyz")
    assert res.returncode == 3 and "tesseract-ocr-xyz" in res.stderr
    res = run("ocr", "-c", collection_copy, "--lang", "eng fra")
    assert res.returncode == 2 and "lang" in res.stderr
    assert ocr_rows(collection_copy) == {}


# ---------------------------------------------------------------------------------------------
# back-fill: resume, crashes, locks, moved files
# ---------------------------------------------------------------------------------------------


def test_backfill_interrupted_then_resumed_redoes_nothing_and_leaves_the_write_lock_free(collection_copy, settings):
    s = settings_with(settings, workers=2)
    calls = []

    def interrupt(done, total):
        calls.append((done, total))
        # OCR runs without the collection's write lock (ingest is not blocked) but holds .ocr.lock.
        with Collection(collection_copy) as other, other.write_lock(timeout_s=0):
            pass
        with pytest.raises(Timeout):
            FileLock(str(collection_copy / LOCK)).acquire(timeout=0)
        raise KeyboardInterrupt

    with Collection(collection_copy) as col:
        ids = page_ids(col, LIGHT)
        with pytest.raises(KeyboardInterrupt):
            backfill(col, s, page_ids=ids.values(), progress=False, log=lambda m: None, on_progress=interrupt)
        assert calls == [(1, 6)]
        before = ocr_rows(collection_copy)
        assert len(before) == 1 and set(before) <= set(ids.values())
        probe = FileLock(str(collection_copy / LOCK))
        probe.acquire(timeout=0)  # released by the interrupted run
        probe.release()
        report = backfill(col, s, page_ids=ids.values(), progress=False, log=lambda m: None)
    assert (report.pages_done, report.pages_failed, report.failures) == (5, 0, [])
    after = ocr_rows(collection_copy)
    assert set(after) == set(ids.values())  # one row per page (page_id is the key), nothing else OCR'd
    assert all(after[pid] == before[pid] for pid in before)  # not redone: same text, seconds and time
    assert all(row[1] is None for row in after.values())
    assert report.words > 200 and 0 < report.mean_confidence <= 100 and report.pages_per_s > 0


def _workers(pid: int) -> set[int]:
    """Pids of the multiprocessing workers (``spawn_main``) that are children of ``pid``."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split() if _is_worker(int(x))}


def _is_worker(pid: int) -> bool:
    try:
        return "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:  # gone (or the ps above)
        return False


def test_a_killed_worker_loses_no_page(collection_copy, settings):
    # A worker killed mid-run (the OOM killer, say): the tasks in flight run again, one at a time.
    killed = []

    def kill_a_worker(done, total):
        if not killed:
            pid = min(_workers(os.getpid()))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with Collection(collection_copy) as col:
        ids = page_ids(col, LIGHT)
        report = backfill(col, settings_with(settings, workers=2), page_ids=ids.values(), progress=False,
                          log=lambda m: None, on_progress=kill_a_worker)
    assert killed
    assert (report.pages_done, report.pages_failed) == (6, 0), report.failures
    rows = ocr_rows(collection_copy)
    assert set(rows) == set(ids.values()) and all(r[1] is None for r in rows.values())


def _prefill_all_but(root: Path, keep: list[str]) -> list[int]:
    """Store placeholder text for every page except page 1 of ``keep``, so a back-fill OCRs only those."""
    with Collection(root) as col:
        todo = page_ids(col, keep)
        col.store_page_texts([{"page_id": pid, "text": "placeholder", "confidence": 90.0, "n_words": 1, "lang": "eng",
                               "engine": ENGINE, "long_side_px": 1, "seconds": 0.0}
                              for pid in col.page_ids().tolist() if pid not in todo.values()])
    return sorted(todo.values())


@pytest.mark.slow
def test_sigkill_mid_backfill_then_rerun_ocrs_every_page_once(collection_copy):
    todo = _prefill_all_but(collection_copy, LIGHT)
    prefilled = ocr_rows(collection_copy)
    e = {**os.environ, "DOCSORT_OFFLINE": "1"}
    proc = subprocess.Popen([DOCSORT, "ocr", "-c", collection_copy, "--no-progress", "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=e)
    deadline, stored, workers = time.time() + 120, {}, set()
    while time.time() < deadline and proc.poll() is None:
        workers |= _workers(proc.pid)
        stored = {k: v for k, v in ocr_rows(collection_copy).items() if k in todo}
        if stored:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the back-fill finished before it could be killed"
    assert 0 < len(stored) < len(todo)
    time.sleep(1.5)  # workers notice their parent is gone within 0.5 s
    assert workers and not any(_is_worker(pid) for pid in workers)  # the workers exited with their parent
    res = run("ocr", "-c", collection_copy, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert f"OCR ({ENGINE}, lang eng): {len(todo) - len(stored)} pages" in res.stdout
    assert "41 of 41 pages have OCR text, 0 failed" in res.stdout
    after = ocr_rows(collection_copy)
    assert len(after) == 41
    assert all(after[pid] == row for pid, row in {**prefilled, **stored}.items())  # nothing redone


@pytest.mark.slow
def test_two_backfills_at_once_share_the_work(collection_copy):
    todo = _prefill_all_but(collection_copy, LIGHT[:3])
    e = {**os.environ, "DOCSORT_OFFLINE": "1", "COLUMNS": "200"}
    cmd = [DOCSORT, "ocr", "-c", collection_copy, "--no-progress"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    deadline = time.time() + 60
    probe = FileLock(str(collection_copy / LOCK))
    while time.time() < deadline:  # start the second while the first holds the OCR lock
        try:
            probe.acquire(timeout=0)
        except Timeout:
            break
        probe.release()
        time.sleep(0.02)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == second.returncode == 0, outs
    done = [int(out.split("lang eng): ", 1)[1].split(" pages", 1)[0]) for out, _ in outs]
    assert sorted(done) == [0, len(todo)]  # the second waited, then found nothing left
    assert "another OCR run is working on" in outs[1][1]
    assert set(ocr_rows(collection_copy)) >= set(todo)


def test_a_busy_ocr_lock_times_out_with_a_clear_error(collection_copy, settings):
    lock = FileLock(str(collection_copy / LOCK))
    lock.acquire()
    try:
        with Collection(collection_copy) as col, pytest.raises(CollectionBusyError, match=r"another OCR run holds .*\.ocr\.lock"):
            backfill(col, settings, progress=False, log=lambda m: None, lock_timeout_s=0.2)
    finally:
        lock.release()


def test_a_moved_or_changed_file_is_an_error_row_until_its_bytes_are_found(tmp_path, settings, extractor):
    from docsort.jobs.ingest import ingest

    scans, elsewhere = tmp_path / "scans", tmp_path / "elsewhere"
    scans.mkdir()
    elsewhere.mkdir()
    original = scans / "huck.jpg"
    shutil.copy(HUCK, original)
    quiet = {"progress": False, "log": lambda m: None}
    with Collection(tmp_path / "col", create=True) as col:
        assert ingest(col, [scans], settings, extractor=extractor, **quiet).pages_added == 1
        (pid,) = col.page_ids().tolist()
        moved = elsewhere / "huck.jpg"
        original.rename(moved)
        report = backfill(col, settings, **quiet)
        reason = f"source file not found or changed: {original}"
        assert (report.pages_done, report.pages_failed, report.failures) == (0, 1, [(str(original), reason)])
        assert col.page_texts()[pid]["error"] == reason
        assert backfill(col, settings, **quiet).pages_failed == 0  # failed pages wait for retry_failed

        shutil.copy(SAMPLE_DOCS / "leptonica" / "comap.063.jpg", original)  # other bytes under the old name
        report = backfill(col, settings, retry_failed=True, **quiet)
        assert report.pages_failed == 1 and report.failures[0][1] == reason

        assert ingest(col, [moved], settings, extractor=extractor, **quiet).new_paths == 1  # the new name is recorded
        report = backfill(col, settings, retry_failed=True, **quiet)
        assert (report.pages_done, report.pages_failed) == (1, 0)
        row = col.page_texts()[pid]
        assert row["error"] is None and "Watson" in row["text"]
        assert [h[0] for h in col.search_text("Watson")] == [pid]


@pytest.mark.slow
def test_cli_ingest_with_ocr_stores_and_indexes_text(tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for f in ("ocrmypdf/c03-29.jpg", "leptonica/comap.063.jpg"):
        shutil.copy(SAMPLE_DOCS / f, scans)
    col = tmp_path / "col"
    res = run("ingest", scans, "-c", col, "--ocr", "--no-progress", "--weights", "bundled")
    assert res.returncode == 0, res.stderr
    assert "ingested 2 documents, 2 pages" in res.stdout
    assert f"OCR ({ENGINE}, lang eng): 2 pages" in res.stdout and "0 pages failed" in res.stdout
    with Collection(col) as c:
        assert c.text_counts()["pages_with_text"] == 2
        (hit,) = c.search_text("Watson")
        assert c.pages([hit[0]])[0].path == str(scans / "c03-29.jpg")
    res = run("ingest", scans, "-c", col, "--ocr", "--no-progress")  # nothing new, nothing to OCR
    assert res.returncode == 0 and "OCR" in res.stdout and ": 0 pages" in res.stdout
