"""Bad input: a messy folder gives, file by file, a correct ingest or an error naming the file and
the reason, and the batch goes on. Also the safety of backbones, weights and the UI's server.

The corpus is generated at test time (:func:`build_corpus`); :data:`CORPUS` lists every file with
its expected outcome, and the README's "What docsort accepts and refuses" states the same.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tomllib
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from docsort.core.pages import NotADocumentError, PageError, SourceFile, count_pages, discover_files, iter_pages
from docsort.config.settings import RenderSettings

from .conftest import REPO
from .test_collection import _assert_consistent

DOCSORT = str(Path(sys.executable).with_name("docsort"))

# ---------------------------------------------------------------------------------------------
# generators: raw PDF, PNG and TIFF bytes
# ---------------------------------------------------------------------------------------------

_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    out, i, j = bytearray(), 0, 0
    for b in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(b ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def pdf_bytes(
    n_pages: int = 1,
    size_pt: tuple[int, int] = (100, 100),
    content: bytes = b"0 g 10 10 30 30 re f",
    *,
    password: str | None = None,
    broken_xref: bool = False,
) -> bytes:
    """A minimal PDF of ``n_pages`` pages (each draws ``content``).

    ``password`` encrypts it with the standard security handler, RC4 40-bit (PDF 1.4 spec,
    algorithms 3.1-3.4), user password ``password`` ("" = opens without one), owner "owner".
    ``broken_xref`` writes wrong offsets in the xref table and a wrong ``startxref``.
    """
    w, h = size_pt
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n_pages))
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {n_pages} >>".encode())
    key, trailer = None, b""
    if password is not None:
        file_id = hashlib.md5(content + password.encode()).digest()
        padded = lambda pw: (pw.encode("latin-1") + _PAD)[:32]  # noqa: E731
        o_value = _rc4(hashlib.md5(padded("owner")).digest()[:5], padded(password))
        key = hashlib.md5(padded(password) + o_value + struct.pack("<i", -4) + file_id).digest()[:5]
        trailer = b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (3 + 2 * n_pages, file_id.hex().encode(), file_id.hex().encode())
    for i in range(n_pages):
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w} {h}] /Contents {4 + 2 * i} 0 R >>".encode())
        data = content
        if key is not None:
            obj_key = hashlib.md5(key + struct.pack("<i", 4 + 2 * i)[:3] + b"\0\0").digest()[:10]
            data = _rc4(obj_key, content)
        objs.append(b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
    if key is not None:
        objs.append(b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>" % (o_value.hex().encode(), _rc4(key, _PAD).hex().encode()))
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, obj in enumerate(objs):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % (i + 1) + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % (off * 7 + 13 if broken_xref else off)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, trailer, xref + 5 * broken_xref)
    return bytes(out)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, bit_depth: int = 8, color_type: int = 0, idat: bytes | None = None) -> bytes:
    """A PNG; without ``idat``, every row is zeros, compressed row by row (so a 9,500 x 9,500
    image, a real decompression bomb of 90 Mpx, costs 90 kB and no big buffer)."""
    if idat is None:
        channels = {0: 1, 2: 3}[color_type]
        row = b"\0" * (1 + width * channels * bit_depth // 8)
        z = zlib.compressobj(9)
        idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def tiff_bytes(patch: dict[int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    """A small grey TIFF written by Pillow with some IFD tag values overwritten (``{tag: value}``),
    e.g. a Compression Pillow cannot decode or a width and height it must refuse."""
    buf = io.BytesIO()
    Image.new("L", size, 200).save(buf, "TIFF")
    data = bytearray(buf.getvalue())
    assert data[:4] == b"II*\0"
    ifd = struct.unpack_from("<I", data, 4)[0]
    found = set()
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        tag, typ = struct.unpack_from("<HH", data, entry)
        if tag in patch:
            struct.pack_into("<H" if typ == 3 else "<I", data, entry + 8, patch[tag])
            found.add(tag)
    assert found == set(patch)
    return bytes(data)


def page_image(seed: int, size: tuple[int, int] = (120, 160), mode: str = "L") -> Image.Image:
    """A distinct small 'scan' per seed (so no two corpus files share a sha256)."""
    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0]), 235, np.uint8)
    for _ in range(6):
        y, x = rng.integers(0, size[1] - 8), rng.integers(0, size[0] - 30)
        arr[y : y + 6, x : x + 30] = 20
    im = Image.fromarray(arr, "L")
    return im if mode == "L" else im.convert(mode)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif_rotated_jpeg() -> bytes:
    """200 x 100 pixels stored, ink in the top-left corner, EXIF Orientation 6 (rotate 90 CW)."""
    im = Image.new("L", (200, 100), 255)
    im.paste(0, (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(im, "JPEG", exif=exif.tobytes(), quality=95)


def _gray16(fmt: str) -> bytes:
    arr = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    return _save(Image.fromarray(arr), fmt)


# ---------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One entry of the bad-input folder.

    ``outcome`` is ``stored`` (``detail`` = pages), ``failed`` (``detail`` = words the reason
    contains), ``skipped`` (not a document) or ``not followed`` (a symlinked folder).
    """

    name: str
    outcome: str
    detail: int | str | None
    make: Callable[[Path], None]


def _write(data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data() if callable(data) else data)


def _symlink(target: str) -> Callable[[Path], None]:
    return lambda p: os.symlink(target, p)


def _truncated() -> bytes:
    return pdf_bytes(3, content=b"0 g 5 5 60 60 re f")[:200]


def _in_folder(p: Path) -> None:
    p.mkdir()
    (p / "inside.png").write_bytes(_save(page_image(9), "PNG"))


CORPUS: list[Case] = [
    Case("empty.pdf", "failed", "empty file (0 bytes)", _write(b"")),
    Case("truncated.pdf", "failed", "cannot read PDF", _write(_truncated)),
    Case("broken-xref.pdf", "stored", 3, _write(lambda: pdf_bytes(3, content=b"0 g 20 20 50 10 re f", broken_xref=True))),
    Case("encrypted-empty-user-password.pdf", "stored", 1, _write(lambda: pdf_bytes(1, content=b"0 g 10 60 80 30 re f", password=""))),
    Case("encrypted-with-password.pdf", "failed", "encrypted PDF: it needs a password", _write(lambda: pdf_bytes(1, password="secret"))),
    Case("zero-pages.pdf", "failed", "PDF has no pages", _write(lambda: pdf_bytes(0))),
    Case("page-30000x30000.pdf", "stored", 1, _write(lambda: pdf_bytes(1, (30000, 30000), b"0 g 1000 1000 9000 9000 re f"))),
    Case("bomb-30000x30000.png", "failed", "decompression bomb", _write(lambda: png_bytes(30000, 30000, idat=zlib.compress(b"\0" * 64)))),
    Case("bomb-30000x30000.tif", "failed", "decompression bomb", _write(lambda: tiff_bytes({256: 30000, 257: 30000}))),
    Case("deflate-bomb-9500x9500.png", "failed", "decompression bomb", _write(lambda: png_bytes(9500, 9500))),
    Case("jpeg2000-compression.tif", "failed", "unsupported TIFF compression (Compression tag 34712)", _write(lambda: tiff_bytes({259: 34712}))),
    Case("jpeg-named.pdf", "stored", 1, _write(lambda: _save(page_image(1), "JPEG"))),
    Case("pdf-named.png", "stored", 2, _write(lambda: pdf_bytes(2, content=b"0 g 30 30 20 50 re f"))),
    Case("cmyk.jpg", "stored", 1, _write(lambda: _save(page_image(2, mode="CMYK"), "JPEG"))),
    Case("cmyk.tif", "stored", 1, _write(lambda: _save(page_image(3, mode="CMYK"), "TIFF"))),
    Case("gray16.png", "stored", 1, _write(lambda: _gray16("PNG"))),
    Case("gray16.tif", "stored", 1, _write(lambda: _gray16("TIFF"))),
    Case("rgb48.png", "stored", 1, _write(lambda: png_bytes(40, 30, bit_depth=16, color_type=2, idat=zlib.compress(
        b"".join(b"\0" + bytes(range(240)) for _ in range(30)))))),
    Case("exif-rotated.jpg", "stored", 1, _write(_exif_rotated_jpeg)),
    Case("one-pixel.png", "stored", 1, _write(lambda: _save(Image.new("L", (1, 1), 0), "PNG"))),
    Case("name with spaces.jpg", "stored", 1, _write(lambda: _save(page_image(4), "JPEG"))),
    Case("ünïcødé 文書.png", "stored", 1, _write(lambda: _save(page_image(5), "PNG"))),
    Case("new\nline.png", "stored", 1, _write(lambda: _save(page_image(6), "PNG"))),
    Case("colon: truncated.pdf", "failed", "cannot read PDF", _write(lambda: _truncated()[:150])),
    Case("loop.pdf", "failed", "Too many levels of symbolic links", _symlink("loop.pdf")),
    Case("up", "not followed", None, _symlink("..")),
    Case("dangling.pdf", "failed", "dangling symlink", _symlink("no-such-target.pdf")),
    Case("fifo.pdf", "failed", "not a regular file", os.mkfifo),
    Case("unreadable.png", "failed", "Permission denied", _write(lambda: _save(page_image(7), "PNG"))),
    Case("folder.pdf/inside.png", "stored", 1, lambda p: _in_folder(p.parent)),
    Case("notes.txt", "skipped", None, _write(b"not a scan\n")),
]


def build_corpus(folder: Path) -> dict[str, Case]:
    """Write :data:`CORPUS` into ``folder``; returns ``{absolute path: case}``."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}
    for case in CORPUS:
        path = folder / case.name
        case.make(path)
        cases[str(path.absolute())] = case
    (folder / "unreadable.png").chmod(0)
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``(base, folder, cases)``: the corpus in ``base/scans``."""
    base = tmp_path_factory.mktemp("bad-input")
    folder = base / "scans"
    return base, folder, build_corpus(folder)


def _shown(path: str) -> str:
    """A path as docsort's log prints it (control characters escaped)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)


# ---------------------------------------------------------------------------------------------
# each file alone, in-process (no network)
# ---------------------------------------------------------------------------------------------


def test_every_bad_input_gives_its_outcome_file_by_file(corpus):
    _, folder, cases = corpus
    render = RenderSettings()
    outcomes: dict[str, tuple[str, object]] = {}
    images = {}
    for item in discover_files([folder]):
        if isinstance(item, NotADocumentError):
            outcomes[item.path] = ("skipped", str(item))
            continue
        if isinstance(item, PageError):
            outcomes[item.path] = ("failed", str(item))
            continue
        assert isinstance(item, SourceFile)
        try:
            n = count_pages(item)
            pages = list(iter_pages(item, render))
        except PageError as exc:
            assert exc.path == str(item.path)
            outcomes[str(item.path)] = ("failed", str(exc))
            continue
        assert [p.page_no for p in pages] == list(range(1, n + 1))
        outcomes[str(item.path)] = ("stored", len(pages))
        images[Path(item.path).name] = [p.image for p in pages]

    root = os.geteuid() == 0
    for path, case in cases.items():
        if case.outcome == "not followed":
            assert not any(p.startswith(path + os.sep) for p in outcomes), "a symlinked folder was walked"
            continue
        if case.name == "unreadable.png" and root:
            continue  # root reads a chmod 000 file; see test_cli_ingest_of_the_bad_folder...
        kind, detail = outcomes.pop(path)
        assert kind == case.outcome, (case.name, detail)
        if kind == "failed":
            assert detail.startswith(f"{path}: ") and case.detail in detail, (case.name, detail)
        elif kind == "stored":
            assert detail == case.detail, case.name
    assert set(outcomes) <= {str(folder / "unreadable.png")}, f"unexpected files: {outcomes}"

    for name, pages in images.items():
        for im in pages:
            assert im.mode == "L" and max(im.size) <= render.long_side_px
    # An empty user password decrypts: the drawn rectangle is there.
    assert np.asarray(images["encrypted-empty-user-password.pdf"][0]).min() < 64
    # A 30,000 x 30,000 page is rendered at 400 x 400 by poppler, never at full size.
    assert images["page-30000x30000.pdf"][0].size == (400, 400)
    # EXIF Orientation 6: the stored 200 x 100 image is shown 100 x 200, top-left ink now top-right.
    rot = np.asarray(images["exif-rotated.jpg"][0])
    assert rot.shape == (200, 100) and rot[:30, -30:].mean() < 60 and rot[:30, :30].mean() > 200
    assert images["one-pixel.png"][0].size == (1, 1)
    for name in ("gray16.png", "gray16.tif"):  # 16-bit scaled to 8-bit, not clipped to white
        arr = np.asarray(images[name][0])
        assert arr.min() == 0 and arr.max() == 255 and len(np.unique(arr)) > 100
    for name in ("cmyk.jpg", "cmyk.tif", "rgb48.png"):
        assert np.asarray(images[name][0]).std() > 5, name


# ---------------------------------------------------------------------------------------------
# the whole folder through the console script, as an unprivileged user
# ---------------------------------------------------------------------------------------------


#: Run a command as root without the capabilities that let root ignore file permissions
#: (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH dropped from the bounding set before exec), so a
#: chmod 000 file really cannot be opened; the command and its children keep uid 0 otherwise.
_OBEY_PERMISSIONS = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "for cap in (1, 2):\n"
    "    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP\n"
    "        sys.exit(f'cannot drop capability {cap}: errno {ctypes.get_errno()}')\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def obeying_permissions(cmd: list[str]) -> list[str]:
    return [sys.executable, "-c", _OBEY_PERMISSIONS, *cmd] if os.geteuid() == 0 else cmd


@pytest.mark.slow
def test_cli_ingest_of_the_bad_folder_stores_the_good_and_names_every_bad_file(corpus):
    """One `docsort ingest` of the corpus, as a user runs it. When the tests run as root, it runs
    without root's permission override, so the chmod 000 file really cannot be opened."""
    base, folder, cases = corpus
    col = base / "col"
    probe = subprocess.run(obeying_permissions([sys.executable, "-c", f"open({str(folder / 'unreadable.png')!r}, 'rb')"]),
                           capture_output=True, text=True)
    if "PermissionError" not in probe.stderr:
        pytest.skip(f"cannot make a file unreadable here (root keeps its permission override): {probe.stderr[-300:]}")
    env = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}
    res = subprocess.run(obeying_permissions([DOCSORT, "ingest", str(folder), "-c", str(col), "--weights", "bundled", "--no-progress"]),
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"

    stored = {p: c for p, c in cases.items() if c.outcome == "stored"}
    failed = {p: c for p, c in cases.items() if c.outcome == "failed"}
    n_pages = sum(c.detail for c in stored.values())
    assert f"ingested {len(stored)} documents, {n_pages} pages" in res.stdout, res.stdout
    assert f"{len(failed)} failed; 1 non-document files skipped" in res.stdout, res.stdout

    db = sqlite3.connect(col / "docsort.sqlite")
    docs = dict(db.execute("SELECT path, n_pages FROM documents"))
    assert docs == {p: c.detail for p, c in stored.items()}
    recorded = dict(db.execute("SELECT path, reason FROM failures"))
    assert set(recorded) == set(failed)
    for path, case in failed.items():
        assert case.detail in recorded[path], (case.name, recorded[path])
        assert f"error: {_shown(path)}: {recorded[path]}" in res.stderr, case.name
    # EXIF rotation is applied before storing: the page is portrait.
    w, h = db.execute("SELECT width_px, height_px FROM pages JOIN documents d ON d.id = document_id "
                      "WHERE d.path LIKE '%exif-rotated.jpg'").fetchone()
    assert (w, h) == (100, 200)
    db.close()
    _assert_consistent(col)


# ---------------------------------------------------------------------------------------------
# a 1,000-page PDF streams
# ---------------------------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def thousand_pages(tmp_path_factory) -> Path:
    """A 1,000-page PDF (200 kB) of 100 x 100 pt pages, each rendered at 400 x 400 pixels: held in
    memory at once, its pages would take 160 MB (grey) and their network inputs 89 MB more."""
    path = tmp_path_factory.mktemp("big") / "thousand.pdf"
    path.write_bytes(pdf_bytes(1000, content=b"0 g 10 10 40 60 re f"))
    return path


def test_a_thousand_page_pdf_is_rendered_a_chunk_at_a_time(thousand_pages, monkeypatch):
    import pdf2image

    calls = []
    real = pdf2image.convert_from_path

    def spy(*args, **kw):
        calls.append((kw["first_page"], kw["last_page"]))
        return real(*args, **kw)

    monkeypatch.setattr(pdf2image, "convert_from_path", spy)
    render = RenderSettings()
    [src] = discover_files([thousand_pages])
    assert count_pages(src) == 1000
    alive: list[weakref.ref] = []
    most_alive, n = 0, 0
    has_peak = _reset_peak_rss()
    before = _rss_kb("VmRSS")
    for page in iter_pages(src, render):
        n += 1
        assert page.page_no == n and page.image.size == (400, 400)
        alive = [r for r in alive if r() is not None] + [weakref.ref(page.image)]
        most_alive = max(most_alive, len(alive))
        del page
    grown_mb = (_rss_kb("VmHWM") - before) / 1024
    assert n == 1000
    assert len(calls) == 63 and all(last - first < render.pdf_chunk_pages for first, last in calls)
    assert most_alive <= render.pdf_chunk_pages + 1, most_alive
    if not has_peak:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs not writable): the 60 MB memory bound "
                    "was not checked (chunking and the pages held at once were)")
    assert grown_mb < 60, f"peak RSS grew {grown_mb:.0f} MB while rendering 1,000 pages"


class _PixelStatsExtractor:
    """Stands in for InceptionV3 where the network is not what is tested: 1,000 real forward
    passes take ~40 s on 2 CPU cores. A page becomes 8 pixel statistics, L2-normalised."""

    input_size = (299, 299)
    batch_size = 32
    description = {
        "backbone": "test:pixel-stats", "layer": "-", "pooling": "-", "dim": 8, "input_size": [299, 299],
        "channels_in": 1, "preprocessing": "none",
        "weights": {"spec": "none", "source": "none", "sha256": None, "file": None, "note": "test stub, no weights"},
    }

    def embed(self, batch: np.ndarray) -> np.ndarray:
        x = batch.reshape(len(batch), -1).astype(np.float32) / 255.0
        feats = [x.mean(1), x.std(1), x.min(1), x.max(1), (x < 0.5).mean(1), x[:, : x.shape[1] // 2].mean(1),
                 x[:, x.shape[1] // 2 :].mean(1), np.ones(len(x), np.float32)]
        v = np.stack(feats, 1)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.slow
def test_a_thousand_page_pdf_is_ingested_once_with_flat_memory(thousand_pages, settings, tmp_path):
    from docsort.jobs.ingest import ingest
    from docsort.store.storage import Collection

    render = settings.render.model_copy(update={"workers": 1})  # render in this process, so its RSS counts it
    one_process = settings.model_copy(update={"render": render})
    with Collection(tmp_path / "col", create=True) as col:
        has_peak = _reset_peak_rss()
        before = _rss_kb("VmRSS")
        report = ingest(col, [thousand_pages], one_process, extractor=_PixelStatsExtractor(), progress=False, log=print)
        grown_mb = (_rss_kb("VmHWM") - before) / 1024
        assert (report.documents_added, report.pages_added, report.failures) == (1, 1000, [])
        assert col.counts()["pages"] == 1000
    counts = _assert_consistent(tmp_path / "col")
    assert counts["pages"] == 1000 and counts["documents"] == 1
    if not has_peak:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs not writable): the 80 MB memory bound "
                    "was not checked (the 1,000 pages stored once were)")
    assert grown_mb < 80, f"peak RSS grew {grown_mb:.0f} MB while ingesting 1,000 pages"


# ---------------------------------------------------------------------------------------------
# backbones, weights and the UI's server
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "handle",
    [
        "http://tfhub.dev/google/imagenet/inception_v3/feature_vector/5",  # not https
        "https://tfhub.dev/google/imagenet/inception_v3/feature_vector",  # no version
        "https://www.kaggle.com/models/google/inception-v3/tensorFlow2/feature-vector/latest",
        "https://tfhub.dev/google/x/5 --and-more",
        "gs://bucket/model/1",
        "file:///tmp/model",
        "/no/such/saved_model/dir",
    ],
)
def test_hub_backbones_need_a_versioned_https_handle_or_a_local_savedmodel(handle):
    from docsort.core.features import BackboneError, validate_hub_handle

    with pytest.raises(BackboneError):
        validate_hub_handle(handle)


def test_hub_handles_that_are_accepted_and_a_refused_one_is_never_loaded(tmp_path, monkeypatch):
    from docsort.core.features import BackboneError, FeatureExtractor, validate_hub_handle
    from docsort.config.settings import FeatureSettings

    for ok in ("https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5",
               "https://www.kaggle.com/models/google/inception-v3/TensorFlow2/feature-vector/2"):
        assert validate_hub_handle(ok) == ok
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(BackboneError, match="not a SavedModel"):
        validate_hub_handle(str(folder))
    (folder / "saved_model.pb").write_bytes(b"")
    assert validate_hub_handle(str(folder)) == str(folder.resolve())

    import tensorflow_hub

    def never(*a, **k):
        raise AssertionError("a refused handle reached tensorflow_hub.load")

    monkeypatch.setattr(tensorflow_hub, "load", never)
    with pytest.raises(BackboneError, match="versioned https"):
        FeatureExtractor(FeatureSettings(backbone="hub:https://tfhub.dev/google/imagenet/inception_v3/feature_vector"))


def test_weights_files_are_sha256_checked(tmp_path, monkeypatch):
    from docsort.core import weights as w

    tampered = tmp_path / w.BUNDLED_WEIGHTS.name
    data = bytearray(w.BUNDLED_WEIGHTS.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(w.WeightsError, match="sha256 mismatch"):  # a known file name, wrong bytes
        w.resolve_weights(str(tampered), announce=False)
    monkeypatch.setattr(w, "BUNDLED_WEIGHTS", tampered)
    with pytest.raises(w.WeightsError, match="sha256 mismatch"):  # the bundled file damaged
        w.resolve_weights("bundled", announce=False)
    monkeypatch.undo()
    mine = tmp_path / "mine.weights.h5"
    shutil.copy(w.BUNDLED_WEIGHTS, mine)
    with pytest.raises(w.WeightsError, match="sha256 mismatch"):  # a pinned weights_sha256
        w.resolve_weights(str(mine), expected_sha256="0" * 64, announce=False)
    good = w.resolve_weights(str(mine), expected_sha256=w.KNOWN_SHA256[w.BUNDLED_WEIGHTS.name], announce=False)
    assert good.sha256 == w.KNOWN_SHA256[w.BUNDLED_WEIGHTS.name]


def test_streamlit_config_is_local_with_xsrf_on_and_an_upload_cap():
    server = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]
    assert server["address"] == "127.0.0.1"
    assert server.get("enableXsrfProtection", True) is True
    assert 0 < server["maxUploadSize"] <= 1024


def test_docsort_ui_binds_127_0_0_1_unless_told(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from docsort.faces import cli

    if not (REPO / "app.py").is_file():
        pytest.skip("app.py is not in this checkout")
    launched = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: launched.append(cmd) or 0)
    runner = CliRunner()
    assert runner.invoke(cli.app, ["ui", "-c", str(tmp_path)]).exit_code == 0
    assert runner.invoke(cli.app, ["ui", "-c", str(tmp_path), "--address", "0.0.0.0"]).exit_code == 0
    default, told = launched
    assert default[default.index("--server.address") + 1] == "127.0.0.1"
    assert told[told.index("--server.address") + 1] == "0.0.0.0"
    for cmd in launched:
        flags = dict(zip(cmd, cmd[1:]))
        assert flags.get("--server.enableXsrfProtection", "true") == "true"
        assert flags.get("--server.enableCORS", "true") == "true"
        assert 0 < int(flags["--server.maxUploadSize"]) <= 1024  # not left to the folder it runs from


def test_readme_states_what_is_accepted_and_refused():
    text = (REPO / "README.md").read_text()
    section = text.split("## What docsort accepts and refuses", 1)[1].split("\n## ", 1)[0]
    for words in ("encrypted", "no pages", "decompression", "unsupported TIFF compression", "EXIF",
                  "16-bit", "CMYK", "symlink", "Permission denied", "1,000-page", "not a regular file",
                  "busy", "SavedModel", "127.0.0.1", "sha256"):
        assert words in section, words
