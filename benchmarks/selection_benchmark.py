"""Acting on a map selection, and keeping hand edits, at 100,000 pages (issue 18).

    python benchmarks/selection_benchmark.py --pages 100000 --out /tmp/selection
    python benchmarks/selection_benchmark.py --pages 100000 --out /tmp/selection --browser   # + Chromium round trip

A synthetic collection (made through the store, no scans: ``--pages`` pages in documents of 100
pages, 16-d vectors, 50 clusters of 2-D Gaussian blobs as the stored map) is timed on:

* the map: ``Collection.page_table()``, :func:`docsort.faces.plots.map_figure` (WebGL above 1,000
  points) and the figure's JSON (what ``st.plotly_chart`` sends to the browser on every rerun);
* a selection of ``--select`` points: :func:`docsort.queries.browse.selection_page_ids` on the
  event's points, then each action the app offers on it: move to a new cluster
  (:func:`docsort.jobs.edits.move`), undo, label (:func:`docsort.jobs.classify.label_pages`), the CSV
  download;
* keeping the edits at the next clustering: :func:`docsort.jobs.edits.honour_edits` with those pins.

With ``--browser``: ``docsort ui`` on the collection, Debian's Chromium through Playwright (never
``playwright install``): seconds from opening the Map view to the drawn map, and from releasing a
box selection over part of the map to the app showing "N pages selected" (the full round trip:
Plotly's event, Streamlit's rerun, the reply drawn).

Writes ``OUT/selection.json``. Not a test: run by hand, under ``nice``; the load average is recorded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (24, 32), 200).save(buf, "JPEG")
    return buf.getvalue()


def build(root: Path, n_pages: int, n_clusters: int = 50, seed: int = 0) -> None:
    """A synthetic clustered collection of ``n_pages`` pages at ``root`` (through the store only)."""
    from docsort.store.storage import Collection

    rng = np.random.default_rng(seed)
    jpeg = _tiny_jpeg()
    with Collection(root, create=True) as col:
        per_doc = 100
        for d in range(0, n_pages, per_doc):
            k = min(per_doc, n_pages - d)
            vecs = rng.random((k, 16), dtype=np.float32)
            col.add_document(sha256=f"{d:064x}", path=f"/synthetic/doc{d // per_doc:05d}.pdf", format="pdf", size_bytes=1,
                             pages=[(i + 1, 100, 140, vecs[i], jpeg) for i in range(k)])
        ids = col.page_ids()
        labels = rng.integers(0, n_clusters, len(ids))
        centres = rng.normal(scale=10.0, size=(n_clusters, 2))
        xy = centres[labels] + rng.normal(size=(len(ids), 2))
        labels[rng.random(len(ids)) < 0.05] = -1
        col.store_clustering(ids, labels, np.where(labels >= 0, 0.9, 0.0), xy, {}, 0.0)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def server_side(root: Path, n_select: int) -> dict:
    """Timings of the map and of the actions on a selection (seconds), in this process."""
    from docsort.faces import plots
    from docsort.jobs import classify, edits, export
    from docsort.queries import browse
    from docsort.store.storage import Collection

    res: dict = {}
    with Collection(root) as col:
        table, res["page_table_s"] = _timed(col.page_table)
        fig, res["map_figure_s"] = _timed(lambda: plots.map_figure(table))
        js, res["figure_json_s"] = _timed(fig.to_json)
        # What st.plotly_chart does with the figure on every rerun (streamlit/elements/plotly_chart.py):
        # a validated copy, then plotly.io.to_json.
        import plotly

        _, res["plotly_chart_serialise_s"] = _timed(lambda: plotly.io.to_json(
            plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True), validate=False))
        res["figure_json_mb"] = round(len(js) / 2**20, 1)
        res["traces"] = len(fig.data)
        res["trace_type"] = fig.data[0].type
        # A box over the left part of the map: the points Plotly would report (curveNumber, pointIndex, customdata).
        order = np.argsort(table["umap_x"].to_numpy())[:n_select]
        points = [{"curveNumber": 0, "pointIndex": int(i), "customdata": [int(p)]} for i, p in
                  zip(order, table["page_id"].to_numpy()[order])]
        ids, res["selection_ids_s"] = _timed(lambda: browse.selection_page_ids(points))
        res["selected"] = len(ids)
        _, res["csv_s"] = _timed(lambda: export.assignments_csv(col, page_ids=ids))
        moved, res["move_s"] = _timed(lambda: edits.move(col, ids, new=True, name="selection", log=lambda m: None))
        pids, clusters, membership = col.cluster_assignments()
        probs = np.full(len(pids), 0.9, np.float32)
        (_, _, _, _, report), res["honour_edits_s"] = _timed(
            lambda: edits.honour_edits(col, pids, clusters, membership, probs, {}))
        res["pinned_pages"] = report.pinned_pages
        _, res["undo_s"] = _timed(lambda: edits.undo(col, log=lambda m: None))
        _, res["label_s"] = _timed(lambda: classify.label_pages(col, ids, "invoice", who="bench"))
    return res


def browser_round_trip(root: Path) -> dict:
    """Seconds to draw the Map view and to answer a box selection, in Chromium (``docsort ui``)."""
    import subprocess
    import sys

    from playwright.sync_api import expect, sync_playwright

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, _serve, _settle

    out: dict = {}
    with _serve(root, "streamlit-selection-benchmark.log") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.set_default_timeout(300_000)
        expect.set_options(timeout=300_000)
        page.goto(url)
        main = page.get_by_test_id("stMain")
        expect(main.get_by_role("heading").first).to_be_visible(timeout=300_000)
        _settle(page)
        t0 = time.perf_counter()
        page.get_by_test_id("stSidebar").get_by_text("Map", exact=True).click()
        plot = main.locator(".js-plotly-plot")
        expect(plot.locator("canvas").first).to_be_visible(timeout=300_000)
        _settle(page)
        out["map_view_s"] = round(time.perf_counter() - t0, 2)
        page.locator('.modebar-btn[data-val="select"]').first.click()
        box = plot.locator(".nsewdrag").first.bounding_box()
        x0, y0 = box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.05
        x1, y1 = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.95
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
        page.mouse.move(x1, y1, steps=5)
        page.screenshot(path=str(root.parent / "selection-drag.png"))
        t0 = time.perf_counter()
        page.mouse.up()
        try:
            expect(main.get_by_text(" selected", exact=False).first).to_be_visible(timeout=300_000)
        finally:
            page.screenshot(path=str(root.parent / "selection-after.png"))
        out["selection_round_trip_s"] = round(time.perf_counter() - t0, 2)
        _settle(page)
        out["selection_settled_s"] = round(time.perf_counter() - t0, 2)
        out["selection_text"] = main.get_by_text(" selected", exact=False).first.inner_text()
        page.screenshot(path=str(root.parent / "selection.png"))
        browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=100_000)
    ap.add_argument("--select", type=int, default=10_000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--browser", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    root = a.out / "collection"
    if not root.exists():
        _, built = _timed(lambda: build(root, a.pages))
        print(f"built {a.pages} pages in {built:.1f} s", flush=True)
    res = {"pages": a.pages, "load_before": open("/proc/loadavg").read().split()[:3], **server_side(root, a.select)}
    print(json.dumps(res, indent=1), flush=True)
    if a.browser:
        res.update(browser_round_trip(root))
    res["load_after"] = open("/proc/loadavg").read().split()[:3]
    (a.out / "selection.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("DOCSORT_OFFLINE", "1")
    main()
