"""Shared fixtures: one sample_docs collection per test session, built in-process.

Building it embeds the 41 real pages of sample_docs/ with the bundled offline weights (~10 s)
and clusters them (~25 s of UMAP's numba JIT the first time in a process), so tests that only
read share it; tests that write copy it first (``collection_copy``).
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests never reach the network: 'auto' weights resolve to the bundled file without a fetch.
os.environ.setdefault("DOCSORT_OFFLINE", "1")
# The converted OpenVINO models of a test session go to a folder of their own, not the user's cache.
os.environ.setdefault("DOCSORT_CACHE_DIR", tempfile.mkdtemp(prefix="docsort-test-cache-"))

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DOCS = REPO / "sample_docs"


def sample_labels() -> dict[tuple[str, int], str]:
    """{(absolute path, page): category} from sample_docs/labels.csv."""
    with open(SAMPLE_DOCS / "labels.csv", newline="") as f:
        return {(str((SAMPLE_DOCS / r["file"]).absolute()), int(r["page"])): r["category"] for r in csv.DictReader(f)}


@pytest.fixture(scope="session")
def settings():
    from docsort.config.settings import load_pipeline

    return load_pipeline("default").with_overrides(weights="bundled")


@pytest.fixture(scope="session")
def extractor(settings):
    from docsort.store.manifest import make_extractor

    return make_extractor(settings, announce=False)


#: The training tests' small collection (tests/test_adapt.py, tests/test_finetune.py): 12 real pages.
TRAIN_FILES = ["leptonica/bois-2-5.pdf", "leptonica/book-pages.pdf", "leptonica/pageseg1.png", "leptonica/pageseg2.png",
               "leptonica/pageseg3.png"]  # 4 + 5 + 3 = 12 pages
#: Keyword arguments that turn a job's progress bar and log lines off.
QUIET = {"progress": False, "log": lambda m: None}


@pytest.fixture(scope="session")
def small_settings(settings):
    """The session's settings at a 128x128 input, batch 4, rendered in this process (no worker pool):
    what the training tests ingest and train with."""
    s = settings.with_overrides(input_size=(128, 128), batch_size=4)
    return s.model_copy(update={"render": s.render.model_copy(update={"workers": 1})})


@pytest.fixture(scope="session")
def sample_collection(tmp_path_factory, settings, extractor):
    """A clustered collection of sample_docs/ (bundled weights). Read-only for tests."""
    from docsort.jobs.cluster import cluster
    from docsort.jobs.ingest import ingest
    from docsort.store.storage import Collection

    root = tmp_path_factory.mktemp("sample") / "collection"
    col = Collection(root, create=True)
    report = ingest(col, [SAMPLE_DOCS], settings, extractor=extractor, progress=False, log=lambda m: None)
    assert report.failures == [], report.failures
    cluster(col, settings, log=lambda m: None, extractor=extractor, progress=False)
    col.close()
    return root


@pytest.fixture
def collection_copy(sample_collection, tmp_path):
    """A private, writable copy of the sample collection."""
    dst = tmp_path / "collection"
    shutil.copytree(sample_collection, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def add_noise_pages(root: Path, n: int = 2) -> list[int]:
    """Make ``n`` pages of the largest cluster of the collection at ``root`` noise pages, through the
    store (a clustering run like the last one, models token included, with those pages as noise).

    UMAP differs across CPUs (issue 12), so whether HDBSCAN leaves sample_docs pages as noise
    depends on the machine; tests that need noise pages build them with this. Returns their ids."""
    import numpy as np

    from docsort.store.storage import Collection

    with Collection(root) as col:
        table = col.page_table()
        run = col.last_cluster_run()
        labels = table["cluster"].to_numpy(np.int64)
        biggest = int(table.loc[table["cluster"] >= 0, "cluster"].value_counts().index[0])
        chosen = table.loc[labels == biggest, "page_id"].astype(int).tolist()[-n:]
        noise = table["page_id"].isin(chosen).to_numpy()
        labels[noise] = -1
        membership = np.where(noise, "noise", table["membership"].to_numpy(str))
        probabilities = np.where(noise, 0.0, table["probability"].to_numpy(float))
        col.store_clustering(table["page_id"].to_numpy(np.int64), labels, probabilities,
                             table[["umap_x", "umap_y"]].to_numpy(float), run["settings"], run["seconds"], membership=membership)
    return chosen


@pytest.fixture
def collection_with_noise(collection_copy):
    """A private copy of the sample collection with at least two noise pages (see :func:`add_noise_pages`)."""
    add_noise_pages(collection_copy)
    return collection_copy


@pytest.fixture(scope="session")
def ocr_collection(tmp_path_factory, sample_collection, settings):
    """A copy of the sample collection with all 41 pages of sample_docs/ OCR'd (default OCR
    settings: eng, 200 dpi PDFs, psm 3; ~50 s on 2 cores). Read-only for tests."""
    from docsort.jobs.ocr import backfill
    from docsort.store.storage import Collection

    root = tmp_path_factory.mktemp("ocr") / "collection"
    shutil.copytree(sample_collection, root, ignore=shutil.ignore_patterns(".lock", ".ocr.lock"))
    with Collection(root) as col:
        report = backfill(col, settings, progress=False, log=lambda m: None)
    assert (report.pages_done, report.pages_failed) == (41, 0), report.failures
    return root


#: Fixtures that build the TensorFlow feature extractor of the session (and what is built on it).
_MODEL_FIXTURES = {"extractor", "sample_collection", "collection_copy", "collection_with_noise", "ocr_collection"}


def pytest_collection_modifyitems(config, items):
    """The fast tier (``pytest -m "not slow"``): a test is ``slow`` when it is marked so, is a real-browser
    test, or uses a fixture that builds the session's feature extractor or sample collection (TensorFlow,
    ~10 s to build and ~25 s of UMAP JIT, then minutes of tests on it)."""
    for item in items:
        if item.get_closest_marker("slow") is None and (
            item.get_closest_marker("browser") is not None or _MODEL_FIXTURES & set(getattr(item, "fixturenames", ()))
        ):
            item.add_marker(pytest.mark.slow)
