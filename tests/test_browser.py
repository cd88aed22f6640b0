"""End to end in a real browser: Debian's Chromium, driven by Playwright, against `docsort ui`.

`docsort ui` (which runs `streamlit run` on the packaged app, docsort/faces/app.py) serves the app on a free 127.0.0.1 port against a
copy of the sample collection, with XSRF protection on as in normal use. The
test uploads a scan through the file-upload widget, waits for the ingest, finds its neighbours,
opens a cluster, opens a gallery page's neighbours and selects a point on the map, asserting on
what the page shows. Screenshots go to ``test-artifacts/browser/`` (gitignored; CI keeps them).

Chromium comes from Debian (``apt-get install chromium``; ``.ci/run`` installs it); no browser is
ever downloaded (never ``playwright install``).
"""

from __future__ import annotations

import re

import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import REPO, SAMPLE_DOCS

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
]


#: True once the app's script run has finished and the page shows no stale elements or half-loaded images.
_SETTLED_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') === 'running') return false;
    if (document.querySelector('[data-stale="true"]')) return false;
    return Array.from(document.images).every(img => img.complete);
}"""


def _settle(page) -> None:
    """Wait until Streamlit has finished the current run and the page has stopped changing."""
    page.wait_for_function(_SETTLED_JS, timeout=60_000)
    page.wait_for_timeout(300)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serve(collection: Path, log_name: str, docsort: list[str] | None = None, cwd: Path = REPO, env: dict | None = None):
    """`docsort ui` on a free localhost port for ``collection``; yields its URL, stops it afterwards.

    ``docsort`` is the command that runs docsort (default: this interpreter's ``-m docsort.faces.cli``),
    started in ``cwd`` with ``env`` (default: this process's environment)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {**(os.environ if env is None else env), "DOCSORT_COLLECTION": str(collection), "DOCSORT_OFFLINE": "1"}
    log = open(ARTIFACTS / log_name, "wb")
    # Started the way a person starts it: `docsort ui` (which runs `streamlit run app.py` on 127.0.0.1),
    # in its own process group so that the Streamlit child is stopped with it.
    proc = subprocess.Popen(
        [*(docsort or [sys.executable, "-m", "docsort.faces.cli"]), "ui", "--collection", str(collection), "--port", str(port)],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start; see {ARTIFACTS / log_name}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass
        log.close()


@pytest.fixture
def app_url(collection_copy):
    """The app on a copy of the clustered sample collection."""
    with _serve(collection_copy, "streamlit-sample.log") as url:
        yield url


@contextmanager
def _browser_page(shot_prefix: str):
    """A Chromium page (1400x1600) and a ``shot(name)`` that waits for the app to settle first."""
    from playwright.sync_api import expect, sync_playwright

    # expect()'s default wait is 5 s; a loaded 2-core machine (other test runs beside this one) takes
    # longer than that for a Streamlit rerun, so give every assertion 30 s (it still fails when the
    # text never comes).
    expect.set_options(timeout=30_000)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(60_000)

            def shot(name: str) -> None:
                _settle(page)
                page.screenshot(path=str(ARTIFACTS / f"{shot_prefix}{name}.png"))

            yield page, shot
        finally:
            browser.close()


def test_upload_cluster_and_neighbours_in_chromium(app_url, collection_copy):
    from PIL import Image
    from playwright.sync_api import expect

    # A scan the collection has not seen: a sample page re-encoded as JPEG (new bytes, same look).
    buf = io.BytesIO()
    Image.open(SAMPLE_DOCS / "leptonica" / "pageseg1.png").convert("L").save(buf, "JPEG", quality=85)

    with _browser_page("sample-") as (page, shot):
        main = page.get_by_test_id("stMain")
        sidebar = page.get_by_test_id("stSidebar")

        page.goto(app_url)
        expect(main.get_by_role("heading", name="Clusters")).to_be_visible(timeout=90_000)
        expect(sidebar.get_by_text("30 documents · 41 pages")).to_be_visible()

        # 1. Drag a scan in: the file-upload widget, then "Add", then wait for the ingest. The
        #    client's file name is unsafe on purpose; the server stores a sanitised one.
        sidebar.get_by_text("Add scans", exact=True).click()
        expect(main.get_by_role("heading", name="Add scans")).to_be_visible()
        page.locator("input[type=file]").first.set_input_files(
            files=[{"name": "invoice:2024?.jpg", "mimeType": "image/jpeg", "buffer": buf.getvalue()}]
        )
        add = main.get_by_role("button", name="Add 1 file to the collection")
        expect(add).to_be_enabled()
        add.click()
        expect(main.get_by_text("invoice_2024_.jpg: added (1 page)")).to_be_visible(timeout=180_000)
        expect(sidebar.get_by_text("31 documents · 42 pages")).to_be_visible()
        shot("01-uploaded")
        stored = [p for p in (collection_copy / "uploads").rglob("*") if p.is_file()]
        assert [p.name for p in stored] == ["invoice_2024_.jpg"]

        # 2. Neighbours of the uploaded page: itself first, then the other pageseg scans.
        main.get_by_role("button", name="Find similar").click()
        expect(main.get_by_role("heading", name="Most similar pages")).to_be_visible()
        # Placed provisionally in a cluster by the stored models at ingest.
        expect(main.get_by_text(re.compile(r"invoice_2024_\.jpg · p\.1 · cluster \d+ \(this page\)"))).to_be_visible()
        _settle(page)
        hits = main.get_by_test_id("stImage").all_inner_texts()
        assert sum("pageseg" in t for t in hits) >= 2, hits
        expect(main.get_by_role("heading", name="Most similar documents")).to_be_visible()
        expect(main.get_by_role("table").get_by_text("pageseg", exact=False).first).to_be_visible()
        shot("02-neighbours-of-upload")

        # 3. Open a cluster and page through its members.
        sidebar.get_by_text("Clusters", exact=True).click()
        expect(main.get_by_text("1 page added since the last clustering", exact=False)).to_be_visible()
        _settle(page)  # as in test_first_time_user_from_an_empty_collection: no click into a run in flight
        main.get_by_role("button", name="Open").first.click()
        expect(main.get_by_text("nearest the cluster centre first", exact=False)).to_be_visible()
        expect(main.get_by_role("button", name="Rename")).to_be_visible()
        cluster_name = main.get_by_role("heading").first.inner_text()
        assert cluster_name.startswith("cluster ")
        shot("03-cluster")

        # 4. Neighbours of the first gallery page.
        first_caption = main.get_by_test_id("stImage").first.inner_text().rsplit(" · ", 1)[0]
        main.get_by_role("button", name="Similar").first.click()
        expect(main.get_by_role("heading", name="Most similar pages")).to_be_visible()
        expect(main.get_by_text(f"1.000 · {first_caption}", exact=False)).to_be_visible()
        expect(main.get_by_text("(this page)", exact=False)).to_be_visible()
        shot("04-neighbours-of-gallery-page")

        # 5. The map: click a point, see it selected.
        sidebar.get_by_text("Map", exact=True).click()
        expect(main.get_by_text("42 pages (SVG)", exact=False)).to_be_visible()  # the upload is on the map, placed provisionally
        point = main.locator(".js-plotly-plot .scatterlayer .point").first
        expect(point).to_be_visible()
        shot("05-map")
        box = point.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x - 5, y - 5)
        page.mouse.move(x, y)  # hover first, as a person would; Plotly's click needs its hover data
        page.wait_for_timeout(500)
        page.mouse.click(x, y)
        expect(main.get_by_text("1 page selected")).to_be_visible(timeout=30_000)
        shot("06-map-selection")

        # 6. A lasso drawn with the mouse just inside the plot area's frame holds every point
        #    (Plotly pads the axis ranges around the points): all 42 are selected, and the
        #    selection's "Give a document type" labels them all in the collection.
        plot = main.locator(".js-plotly-plot").first
        area = plot.locator(".nsewdrag").first.bounding_box()
        page.mouse.move(area["x"] + area["width"] / 2, area["y"] + area["height"] / 2)  # the modebar shows on hover
        plot.locator('.modebar-btn[data-title="Lasso Select"]').click()
        inset = 3
        corners = [(area["x"] + inset, area["y"] + inset), (area["x"] + area["width"] - inset, area["y"] + inset),
                   (area["x"] + area["width"] - inset, area["y"] + area["height"] - inset),
                   (area["x"] + inset, area["y"] + area["height"] - inset), (area["x"] + inset, area["y"] + inset + 1)]
        page.mouse.move(*corners[0])
        page.mouse.down()
        for cx, cy in corners[1:]:
            page.mouse.move(cx, cy, steps=12)
        page.mouse.up()
        expect(main.get_by_text("42 pages selected")).to_be_visible(timeout=30_000)
        shot("07-map-lasso")
        main.get_by_role("tab", name="Give a document type").click()
        main.locator(".st-key-map-label-type input").fill("scanned page")  # the selection's form (key "map")
        main.get_by_role("button", name="Label 42 pages").click()
        expect(main.get_by_text("Labelled 42 pages as 'scanned page'", exact=False)).to_be_visible(timeout=60_000)
        shot("08-lasso-labelled")
    from docsort.jobs import classify
    from docsort.store.storage import Collection

    with Collection(collection_copy) as col:
        assert classify.label_counts(col) == {"scanned page": 42}


def test_first_time_user_from_an_empty_collection(tmp_path):
    """No collection yet: drag scans in, they are clustered, open a cluster, see neighbours."""
    from playwright.sync_api import expect

    names = ["comap.063.jpg", "comap.100.jpg", "comap.110.jpg", "comap.118.jpg", "ortiz-02.png", "ortiz-03.png",
             "ortiz-04.png", "ortiz-05.png", "pageseg1.png", "pageseg2.png", "pageseg3.png", "pageseg4.png"]
    with _serve(tmp_path / "fresh", "streamlit-empty.log") as url, _browser_page("empty-") as (page, shot):
        main = page.get_by_test_id("stMain")
        page.goto(url)
        expect(main.get_by_role("heading", name="Add scans")).to_be_visible(timeout=90_000)
        expect(main.get_by_role("checkbox", name="Cluster the collection after adding")).to_be_checked()
        page.locator("input[type=file]").first.set_input_files([str(SAMPLE_DOCS / "leptonica" / n) for n in names])
        main.get_by_role("button", name=f"Add {len(names)} files to the collection").click()
        # Embedding, then the first UMAP + HDBSCAN run (UMAP's numba JIT is cold in a new process).
        expect(main.get_by_text(f"Clustered {len(names)} pages into ", exact=False)).to_be_visible(timeout=240_000)
        expect(main.get_by_text(f"Added {len(names)} documents ({len(names)} pages)", exact=False)).to_be_visible()
        shot("01-first-upload")
        page.get_by_test_id("stSidebar").get_by_text("Clusters", exact=True).click()
        # Let the Clusters page's run finish first: a click on "Open" that lands while the run
        # that drew it is still going can be lost with the re-render (it failed so once in CI).
        expect(main.get_by_role("heading", name="Clusters")).to_be_visible()
        _settle(page)
        main.get_by_role("button", name="Open").first.click()
        expect(main.get_by_text("nearest the cluster centre first", exact=False)).to_be_visible()
        shot("02-cluster")
        main.get_by_role("button", name="Similar").first.click()
        expect(main.get_by_text("(this page)", exact=False)).to_be_visible()
        expect(main.get_by_role("heading", name="Most similar documents")).to_be_visible()
        shot("03-neighbours")
