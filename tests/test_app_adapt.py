"""The app's "Adapt to this collection" (issue 14, item 4), with streamlit.testing.v1.AppTest.

A private copy of the session's sample collection (41 real pages, conftest.py); a tiny budget (1
epoch, a training budget that stops after the first step), so the run is re-embedding and
re-clustering the 41 pages. Clustering outcomes are machine-dependent, so the before/after
values are checked against the measures of the stored clusterings, not against fixed numbers.
"""

from __future__ import annotations

import pytest

from docsort.jobs.adaptation_review import SECONDS_PER_PAGE_EPOCH, clustering_measures, estimate_seconds
from docsort.store.storage import Collection

from .conftest import REPO

APP = str(REPO / "app.py")


@pytest.fixture
def status_view(collection_copy, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DOCSORT_COLLECTION", str(collection_copy))
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.switch_page("docsort/faces/views/collection.py").run()
    assert not at.exception, at.exception
    return at


def test_estimate_is_pages_times_epochs_times_seconds_per_page_epoch():
    a = estimate_seconds(100, 5, cluster_seconds=0.0)
    b = estimate_seconds(100, 10, cluster_seconds=0.0)
    assert b - a == pytest.approx(100 * 5 * SECONDS_PER_PAGE_EPOCH)
    assert estimate_seconds(100, 5, input_size=(128, 128), cluster_seconds=0.0) < a
    assert estimate_seconds(100, 50, minutes=0.5, cluster_seconds=0.0) <= 30.0 + 100 * 0.08 + 1e-9


def test_adapt_button_shows_estimate_then_before_and_after(status_view, collection_copy):
    at = status_view
    assert "Adapt to this collection" in [s.value for s in at.subheader]
    est = [c.value for c in at.caption if c.value.startswith("Estimate: about")]
    assert len(est) == 1 and "41 pages × 5 epochs" in est[0] and f"{SECONDS_PER_PAGE_EPOCH:.2f} s per page-epoch" in est[0]
    with Collection(collection_copy) as col:
        before = clustering_measures(col)
    at.number_input(key="adapt-epochs").set_value(1)
    at.number_input(key="adapt-minutes").set_value(0.01)  # stops after the first training step
    at.button(key="adapt-go").click().run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == []
    done = [s.value for s in at.success if s.value.startswith("Adapted the network")]
    assert len(done) == 1 and "re-embedded and re-clustered" in done[0]
    rows = at.table[0].value
    assert list(rows.iloc[:, 0]) == ["before", "after"]
    with Collection(collection_copy) as col:
        m = col.manifest()
        after = clustering_measures(col)
    assert m["adaptation"]["state"] == "done" and m["adaptation"]["epochs_run"] == 1
    assert rows.iloc[0]["clusters"] == str(before.clusters) and rows.iloc[1]["clusters"] == str(after.clusters)
    assert rows.iloc[1]["noise pages"] == f"{100 * after.noise_share:.0f} %"
    assert rows.iloc[1]["neighbours in the same cluster"] == f"{100 * after.neighbour_agreement:.0f} %"
    assert any(w.value.startswith("Adapted weights in use: yes") for w in at.markdown)


def test_adapt_refuses_while_another_job_holds_the_lock(status_view, collection_copy):
    at = status_view
    with Collection(collection_copy) as other:
        with other.write_lock(0):
            at.button(key="adapt-go").click().run()
            assert not at.exception, at.exception
            assert [e.value for e in at.error] == [
                "Another docsort job (ingest, OCR, clustering or adapt) is writing to this collection: "
                "try again when it has finished."]
        assert "adaptation" not in (other.manifest() or {})


def test_neighbour_agreement_counts_same_cluster_neighbours(collection_copy):
    """By construction: every page put in one cluster agrees with all its neighbours; the measure
    counts noise pages in the noise share and never as agreeing."""
    import numpy as np

    with Collection(collection_copy) as col:
        m = clustering_measures(col)
        assert m.pages == 41 and 0.0 <= m.noise_share <= 1.0 and 0.0 <= m.neighbour_agreement <= 1.0
        run = col.query("SELECT MAX(id) FROM cluster_runs")[0][0]
        with col.transaction() as c:
            c.execute("UPDATE page_clusters SET cluster = 0 WHERE run_id = ?", (run,))
        one = clustering_measures(col)
        assert one.clusters == 1 and one.noise_share == 0.0 and one.neighbour_agreement == 1.0
        with col.transaction() as c:
            c.execute("UPDATE page_clusters SET cluster = -1 WHERE run_id = ? AND page_id IN "
                      "(SELECT page_id FROM page_clusters WHERE run_id = ? ORDER BY page_id LIMIT 10)", (run, run))
        part = clustering_measures(col)
        assert part.clusters == 1 and part.noise_share == pytest.approx(10 / 41)
        # brute force: a full sort of the cosines, the 10 noise pages never agree
        from docsort.jobs.classify import _unit, _vectors

        ids, X, _ = _vectors(col)
        X = _unit(X)
        noise = set(int(i) for i in sorted(ids)[:10])
        S = X @ X.T
        np.fill_diagonal(S, -np.inf)
        shares = [np.mean([int(ids[j]) not in noise for j in np.argsort(-S[i])[:5]])
                  for i in range(len(ids)) if int(ids[i]) not in noise]
        assert part.neighbour_agreement == pytest.approx(float(np.mean(shares)))
        assert part.neighbour_agreement < 1.0
