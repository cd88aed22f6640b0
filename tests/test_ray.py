"""docsort on Ray (issue 17): the same pages and vectors as in one process, a lost node and a killed
driver leave every page stored once, and clustering on a sample keeps the in-process quality.

One Ray for the module (``ray.cluster_utils.Cluster``: a head node of 2 CPUs, to which a test adds
and removes a second node), started once: Ray's start-up costs seconds. Every test is in the slow
tier. Without Ray installed the module is skipped, loudly (``pip install 'docsort[ray]'``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from docsort.store.storage import Collection

from .conftest import SAMPLE_DOCS
from .test_crash_safety import check_collection

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'docsort[ray]' (the test extra pulls it)")

DOCSORT = str(Path(sys.executable).with_name("docsort"))
ENV = {**os.environ, "DOCSORT_OFFLINE": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "200"}

#: A few real files of each kind: a 3-page PDF (in chunks of 2: one document over two Ray tasks), a
#: TIFF, JPEGs and PNGs; 12 documents, 15 pages.
FILES = [SAMPLE_DOCS / "leptonica" / n for n in (
    "bois-2-5.pdf", "comap.063.jpg", "map1.jpg", "ortiz-02.png", "1555.003.jpg", "brothers.150.jpg",
    "cavalerie.29.jpg", "amoris.2.150.jpg", "ortiz-03.png", "map.057.jpg", "lapide.052.100.jpg")] + [
    SAMPLE_DOCS / "jbigkit" / "ccitt-1-3-4-5-7.tif"]


@pytest.fixture(scope="module")
def ray_cluster():
    """A one-node Ray "cluster" (2 CPUs) that this process is connected to; tests may add nodes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def ray_settings(settings):
    """The tests' pipeline on Ray: small chunks and batches, so a few files make many Ray tasks."""
    from docsort.config.settings import RaySettings

    return settings.model_copy(update={
        "render": settings.render.model_copy(update={"pdf_chunk_pages": 2}),
        "features": settings.features.model_copy(update={"batch_size": 4}),
        "ray": RaySettings(address="local"),  # connected() reuses the module's connection
    })


def _ingest(root: Path, settings, extractor, files=FILES):
    from docsort.jobs.ingest import ingest

    col = Collection(root, create=True)
    try:
        return ingest(col, files, settings, extractor=extractor, progress=False, log=lambda m: None)
    finally:
        col.close()


def _vectors_by_page(root: Path) -> dict[tuple[str, int], np.ndarray]:
    col = Collection(root)
    try:
        pages = col.pages()
        ids, vecs = col.vectors([p.page_id for p in pages])
        by_id = dict(zip(ids.tolist(), vecs))
        return {(p.path, p.page_no): by_id[p.page_id] for p in pages}
    finally:
        col.close()


def _total_pages(files=FILES) -> int:
    from docsort.core.pages import count_pages, discover_files

    return sum(count_pages(src) for src in discover_files(files))


def test_ray_ingest_gives_the_in_process_pages_and_vectors(ray_cluster, ray_settings, extractor, sample_collection, tmp_path):
    report = _ingest(tmp_path / "col", ray_settings, extractor)
    assert report.failures == [] and report.documents_added == len(FILES)
    on_ray, in_process = _vectors_by_page(tmp_path / "col"), _vectors_by_page(sample_collection)
    assert len(on_ray) == report.pages_added == _total_pages()
    for key, vec in on_ray.items():
        assert key in in_process, f"{key} stored on Ray, not in process"
        cos = float(vec @ in_process[key] / (np.linalg.norm(vec) * np.linalg.norm(in_process[key])))
        assert cos >= 0.9999, f"{key}: cosine {cos:.6f} between the Ray and the in-process vector"
    check_collection(tmp_path / "col", complete=True)
    # Re-running adds nothing.
    again = _ingest(tmp_path / "col", ray_settings, extractor)
    assert again.documents_added == 0 and again.already_stored == len(FILES)


def test_a_node_lost_mid_ingest_leaves_every_page_stored_once(ray_cluster, ray_settings, extractor, tmp_path):
    node = ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    root = tmp_path / "col"
    Collection(root, create=True).close()
    removed = threading.Event()

    def remove_when_pages_are_stored():
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with sqlite3.connect(root / Collection.DB, timeout=5) as db:
                    if db.execute("SELECT COUNT(*) FROM pages").fetchone()[0] >= 1:
                        break
            except sqlite3.Error:
                pass
            time.sleep(0.05)
        ray_cluster.remove_node(node)
        removed.set()

    watcher = threading.Thread(target=remove_when_pages_are_stored, daemon=True)
    watcher.start()
    report = _ingest(root, ray_settings, extractor)
    watcher.join(timeout=60)
    assert removed.is_set(), "the node was not removed"
    assert len(ray.nodes()) >= 2 and sum(n["Alive"] for n in ray.nodes()) == 1, "the second node is still alive"
    assert report.failures == []
    assert check_collection(root, complete=True) == _total_pages()
    assert Collection(root).counts()["documents"] == len(FILES)


def test_a_killed_driver_resumes_with_every_page_stored_once(ray_cluster, ray_settings, extractor, tmp_path):
    """``docsort ingest --ray local`` (its own Ray on this machine) killed with SIGKILL once pages are
    stored; its Ray processes are ended by their ids. The resumed run stores the rest, each page once."""
    import psutil  # a dependency of Ray

    pipeline = tmp_path / "ray-small.toml"
    pipeline.write_text('[render]\npdf_chunk_pages = 2\n[features]\nbatch_size = 2\nweights = "bundled"\n'
                        '[ray]\naddress = "local"\nnum_cpus = 2\n')
    root = tmp_path / "col"
    proc = subprocess.Popen([DOCSORT, "ingest", *map(str, FILES), "-c", str(root), "-p", str(pipeline), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    deadline = time.time() + 300
    stored = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                with sqlite3.connect(root / Collection.DB, timeout=5) as db:
                    stored = db.execute("SELECT COUNT(*) FROM pages").fetchone()[0]
            except sqlite3.Error:
                stored = 0
            if stored >= 1:
                break
            time.sleep(0.05)
    finally:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for child in children:  # the Ray it started (raylet, GCS, workers), by id
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    assert proc.returncode == -signal.SIGKILL, "ingest finished before it could be killed"
    total = _total_pages()
    assert 0 < check_collection(root, complete=False) < total, "the kill did not land mid-ingest"
    report = _ingest(root, ray_settings, extractor)
    assert report.failures == [] and report.already_stored >= 1
    assert check_collection(root, complete=True) == total
