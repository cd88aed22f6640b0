"""The pages stage on real files: formats, page counts, content detection, identity, bad files."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from docsort.core.pages import (
    NotADocumentError,
    PageError,
    count_pages,
    detect_format,
    discover_files,
    iter_pages,
    sha256_file,
    to_network_input,
)
from docsort.config.settings import RenderSettings

from .conftest import SAMPLE_DOCS, sample_labels


def _pages_per_file() -> Counter:
    return Counter(path for path, _ in sample_labels())


def test_every_sample_file_yields_its_labelled_page_count():
    expected = _pages_per_file()
    found = [f for f in discover_files([SAMPLE_DOCS]) if not isinstance(f, NotADocumentError)]
    assert all(not isinstance(f, PageError) for f in found), found
    formats = Counter(f.format for f in found)
    # sample_docs holds every supported format, multi-page PDF and TIFF among them.
    assert set(formats) == {"pdf", "tiff", "png", "jpeg"}
    render = RenderSettings()
    for src in found:
        pages = list(iter_pages(src, render))
        assert count_pages(src) == len(pages) == expected[str(src.path)], src.path
        assert [p.page_no for p in pages] == list(range(1, len(pages) + 1))
        for p in pages:
            assert p.image.mode == "L"
            assert max(p.image.size) <= render.long_side_px
            assert min(p.image.size) > 0
    assert sum(expected.values()) == 41
    assert any(n > 1 for f, n in expected.items() if f.endswith(".pdf"))
    assert any(n > 1 for f, n in expected.items() if f.endswith(".tif"))


def test_pdf_rendered_at_network_resolution_not_200dpi():
    pdf = SAMPLE_DOCS / "leptonica" / "book-pages.pdf"
    src = next(f for f in discover_files([pdf]))
    page = next(iter_pages(src, RenderSettings(long_side_px=400)))
    assert max(page.image.size) == 400  # pdftoppm -scale-to, not a 200 dpi render thrown away
    arr = to_network_input(page.image, (299, 299))
    assert arr.shape == (299, 299, 1) and arr.dtype == np.uint8
    # Real scanned text: mostly white paper with dark ink.
    assert arr.mean() > 128 and arr.min() < 64


def test_format_is_detected_from_content_not_extension(tmp_path):
    jpeg = next(SAMPLE_DOCS.glob("leptonica/*.jpg"))
    disguised = tmp_path / "scan.pdf"
    shutil.copy(jpeg, disguised)
    assert detect_format(disguised) == "jpeg"
    pdf_as_png = tmp_path / "scan.png"
    shutil.copy(SAMPLE_DOCS / "leptonica" / "bois-2-5.pdf", pdf_as_png)
    assert detect_format(pdf_as_png) == "pdf"
    [src] = discover_files([pdf_as_png])
    assert len(list(iter_pages(src, RenderSettings()))) == 4


def test_renamed_copy_has_the_same_identity(tmp_path):
    src = SAMPLE_DOCS / "leptonica" / "map1.jpg"
    copy = tmp_path / "renamed" / "other-name.jpeg"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    assert sha256_file(src) == sha256_file(copy)


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.pdf", b"", "empty file"),
        ("truncated.pdf", None, "cannot"),
        ("notes.png", b"this is not an image at all" * 10, "not a PDF, TIFF, PNG or JPEG"),
    ],
)
def test_bad_files_raise_a_page_error_naming_the_file(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:  # the first 2 kB of a real PDF
        content = (SAMPLE_DOCS / "leptonica" / "bois-2-5.pdf").read_bytes()[:2048]
    path.write_bytes(content)
    [item] = discover_files([path])
    if isinstance(item, PageError):
        err = item
    else:
        with pytest.raises(PageError) as info:
            list(iter_pages(item, RenderSettings()))
        err = info.value
    assert str(path) in str(err) and reason in str(err)


def test_folder_walk_skips_non_documents_but_reports_broken_documents(tmp_path):
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "broken.jpg").write_bytes(b"garbage bytes")
    shutil.copy(SAMPLE_DOCS / "leptonica" / "map1.jpg", tmp_path / "good.jpg")
    items = list(discover_files([tmp_path]))
    kinds = {Path(str(i).split(":")[0]).name if isinstance(i, PageError) else i.path.name: type(i).__name__ for i in items}
    assert kinds == {"README.md": "NotADocumentError", "broken.jpg": "PageError", "good.jpg": "SourceFile"}


def test_rgb_mode_keeps_colour(tmp_path):
    jpeg = SAMPLE_DOCS / "leptonica" / "comap.063.jpg"
    [src] = discover_files([jpeg])
    page = next(iter_pages(src, RenderSettings(color="rgb")))
    assert page.image.mode == "RGB"
    with Image.open(jpeg) as im:
        assert page.source_size == im.size
