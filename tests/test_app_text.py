"""OCR text in the Streamlit app (app.py), with AppTest: full-text search, "Compare by" look / text /
both, the page's OCR text, and the button that reads the text of pages (issue 6).

Like tests/test_app.py, each test runs the app in-process on its own copy of a session collection:
``ocr_collection`` (sample_docs with all 41 pages OCR'd by Tesseract) or, for the OCR button,
``sample_collection`` (no text yet).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from docsort.queries import search
from docsort.store.storage import Collection
from docsort.core.text import usable_text

from .conftest import SAMPLE_DOCS
from .test_app import APP, _captions, _shown, _view

WATSON_PAGE = "c03-29.jpg"  # sample_docs/ocrmypdf/c03-29.jpg: a page of Huckleberry Finn, "Miss Watson" on it
MAP_PAGE = "comap.063.jpg"  # sample_docs/leptonica/comap.063.jpg: a map, no words OCR can use


@pytest.fixture
def ocr_copy(ocr_collection, tmp_path):
    """A private, writable copy of the OCR'd sample collection."""
    dst = tmp_path / "collection"
    shutil.copytree(ocr_collection, dst, ignore=shutil.ignore_patterns(".lock", ".ocr.lock"))
    return dst


@pytest.fixture
def ocr_app(ocr_copy, monkeypatch):
    """An AppTest of app.py on a copy of the OCR'd sample collection, after its first run."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOCSORT_COLLECTION", str(ocr_copy))
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception, at.exception
    return at


def _page_id(root: Path, name: str, page_no: int = 1) -> int:
    with Collection(root) as col:
        return next(p.page_id for p in col.pages() if Path(p.path).name == name and p.page_no == page_no)


def _ok(at):
    assert not at.exception, at.exception
    return at


def test_text_search_lists_the_watson_page_first_with_its_snippet(ocr_app, ocr_copy):
    at = ocr_app
    assert "OCR text: 41 of 41 pages" in [c.value for c in at.sidebar.caption]
    at = _view(at, "Search text")
    assert [h.value for h in at.header] == ["Search text"]
    at.text_input(key="text_query").set_value("Watson").run()
    _ok(at)
    assert _captions(at)[0].startswith(f"{WATSON_PAGE} · p.1 · ")
    texts = [m.value for m in at.markdown]
    assert any(t.startswith("**1. c03\\-29\\.jpg**, page 1") for t in texts)
    assert any("Miss **Watson**" in t for t in texts)  # the snippet, the match in bold
    # Each hit leads to its neighbours, where the page's OCR text is one click away.
    pid = _page_id(ocr_copy, WATSON_PAGE)
    at.button(key=f"text-hit-sim-{pid}").click().run()
    _ok(at)
    assert _shown(at) == "Similar documents" and int(at.session_state["query_page"]) == pid
    assert [e.label for e in at.expander][0].startswith("Text (OCR, confidence ")
    assert "Miss Watson" in at.expander[0].text[0].value
    # The status view counts the text and has nothing left to read.
    at = _view(at, "Collection & export")
    assert any(m.value.startswith("**41 of 41 pages** have OCR text") for m in at.markdown)
    assert "Every page has been read." in [c.value for c in at.caption]


def test_bad_and_unmatched_text_queries_are_messages_not_exceptions(ocr_app):
    at = _view(ocr_app, "Search text")
    at.text_input(key="text_query").set_value('"Miss Watson').run()  # unterminated phrase: invalid FTS5
    _ok(at)
    assert len(at.error) == 1 and at.error[0].value.startswith("cannot search for")
    assert not at.subheader
    at.text_input(key="text_query").set_value("xylophonequux").run()
    _ok(at)
    assert not at.error and at.info[0].value.startswith("No page's text matches 'xylophonequux'")


def test_compare_by_look_text_or_both(ocr_app, ocr_copy, settings):
    at = _view(ocr_app, "Similar documents")
    assert at.radio(key="search_mode").value == "Both"  # the collection has text: auto -> fused
    pid = _page_id(ocr_copy, WATSON_PAGE)
    at.selectbox(key="query_page").set_value(pid).run()
    both = _captions(_ok(at))[1:]
    at.radio(key="search_mode").set_value("By text").run()
    by_text = _captions(_ok(at))[1:]
    at.radio(key="search_mode").set_value("By look").run()
    by_look = _captions(_ok(at))[1:]
    assert len({tuple(both), tuple(by_text), tuple(by_look)}) == 3
    for shown in (both, by_text, by_look):
        assert shown[0].startswith(f"1.000 · {WATSON_PAGE} · p.1") and shown[0].endswith("(this page)")
    # By text: the pipeline's text neighbours, every one a page with usable OCR text.
    with Collection(ocr_copy) as col:
        hits = search.search_page(col, pid, settings, 8, mode="text").pages
        texts = col.page_texts([h.page_id for h in hits])
    assert [c.split(" · ")[1:3] for c in by_text] == [[Path(h.path).name, f"p.{h.page_no}"] for h in hits]
    assert all(usable_text(t["text"], t["n_words"], t["error"], settings.text, t["confidence"]) for t in texts.values())
    assert len(texts) == len(hits)
    # The choice is kept across views; a map has no text to compare by.
    at = _view(_view(at, "Clusters"), "Similar documents")
    assert at.radio(key="search_mode").value == "By look"
    at.radio(key="search_mode").set_value("By text").run()
    at.selectbox(key="query_page").set_value(_page_id(ocr_copy, MAP_PAGE)).run()
    _ok(at)
    assert any(i.value.startswith(f"{MAP_PAGE}, page 1 cannot be compared by text: OCR found ") for i in at.info)
    assert "Most similar pages" not in [s.value for s in at.subheader]
    assert "OCR found no text on this page." in [c.value for c in at.caption]


def test_search_with_an_uploaded_scan_by_text(ocr_app):
    """A scan that is not stored is OCR'd too when comparing by text; the page it shows ranks first."""
    from PIL import Image

    at = _view(ocr_app, "Similar documents")
    at.radio(key="query_source").set_value("A scan from this computer (not stored)").run()
    at.radio(key="search_mode").set_value("By text").run()
    buf = io.BytesIO()
    Image.open(SAMPLE_DOCS / "ocrmypdf" / WATSON_PAGE).convert("L").save(buf, "PNG")
    at.file_uploader(key="query_upload").set_value(("watson.png", buf.getvalue(), "image/png")).run()
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    assert _captions(at)[0].split(" · ")[1:3] == [WATSON_PAGE, "p.1"]
    assert any(c.value.startswith("Compared by text") for c in at.caption)


def test_ocr_button_reads_the_pages_without_text_then_offers_to_recluster(collection_copy, ocr_collection, monkeypatch):
    import pytesseract
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOCSORT_COLLECTION", str(collection_copy))
    at = _ok(AppTest.from_file(APP, default_timeout=300).run())
    assert "OCR text: 0 of 41 pages" in [c.value for c in at.sidebar.caption]
    at = _view(at, "Similar documents")
    assert at.radio(key="search_mode").value == "By look"  # no text yet: auto -> visual
    at = _view(at, "Search text")
    assert at.info[0].value.startswith("No page has OCR text yet") and "docsort ocr" in at.info[0].value
    assert at.button(key="search-ocr").label == "Read the text of 41 pages (OCR)"
    # Without Tesseract: its install hint, not a traceback.
    with monkeypatch.context() as m:
        m.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
        at.button(key="search-ocr").click().run()
    _ok(at)
    assert at.error[0].value.startswith("tesseract is not installed") and "apt-get install tesseract-ocr" in at.error[0].value
    # Keep the test short: 39 pages get the text already read for ocr_collection; the button reads the other 2.
    left = {WATSON_PAGE, MAP_PAGE}
    with Collection(ocr_collection) as src, Collection(collection_copy) as dst:
        keep = [p.page_id for p in src.pages() if Path(p.path).name not in left]
        dst.store_page_texts([{"page_id": pid, **row} for pid, row in src.page_texts(keep).items()])
    at.run()
    at = _view(at, "Collection & export")
    assert at.button(key="status-ocr").label == "Read the text of 2 pages (OCR)"
    at.button(key="status-ocr").click().run()
    _ok(at)
    assert len(at.success) == 1 and at.success[0].value.startswith("Read the text of 2 pages in "), [s.value for s in at.success]
    assert "; 0 failed." in at.success[0].value and "pages/s" in at.success[0].value
    with Collection(collection_copy) as col:
        assert col.text_counts()["pages_with_text"] == 41
        assert [h.path for h in search.search_text(col, "Watson")] == [str((SAMPLE_DOCS / "ocrmypdf" / WATSON_PAGE).absolute())]
    assert "OCR text: 41 of 41 pages" in [c.value for c in at.sidebar.caption]
    # The clusters do not use the text until a re-clustering; after it they are named by their words.
    assert any(i.value.startswith("The clusters do not use this text yet") for i in at.info)
    at.button(key="status-ocr-recluster").click().run()
    _ok(at)
    assert any(s.value.startswith("Clustered 41 pages into ") for s in at.success)
    assert not any(i.value.startswith("The clusters do not use this text yet") for i in at.info)
    at = _view(at, "Clusters")
    assert any(" · " in s.value for s in at.subheader), [s.value for s in at.subheader]
