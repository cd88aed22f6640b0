"""What is reproducible, as the README and every manifest state it (issue 12): on one machine the
same files and settings give bit-identical vectors (tests/test_features.py, test_collection.py);
computed by other kernels, as on another CPU, the vectors agree within
``docsort.core.runtime.CROSS_MACHINE_VECTOR_TOLERANCE`` and rank the same neighbours."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from docsort.jobs.ingest import ingest
from docsort.core.runtime import CROSS_MACHINE_VECTOR_TOLERANCE, REPRODUCIBILITY
from docsort.store.storage import Collection

from .conftest import SAMPLE_DOCS

FILES = [SAMPLE_DOCS / "leptonica" / "bois-2-5.pdf", SAMPLE_DOCS / "jbigkit", SAMPLE_DOCS / "leptonica" / "map1.jpg",
         SAMPLE_DOCS / "leptonica" / "comap.063.jpg", SAMPLE_DOCS / "ocrmypdf"]

CHILD = r"""
import sys, numpy as np
from docsort.jobs.ingest import ingest
from docsort.store.manifest import make_extractor
from docsort.config.settings import load_pipeline
from docsort.store.storage import Collection
s = load_pipeline("default").with_overrides(weights="bundled")
s = s.model_copy(update={"features": s.features.model_copy(update={"engine": "tensorflow", "precision": "float32"})})
with Collection(sys.argv[1], create=True) as col:
    ingest(col, sys.argv[3:], s, extractor=make_extractor(s, announce=False), progress=False, log=lambda m: None)
    np.save(sys.argv[2], col.vectors()[1])
"""


@pytest.mark.slow
def test_vectors_from_other_kernels_agree_within_the_stated_tolerance(tmp_path, settings):
    from docsort.store.manifest import make_extractor

    # TensorFlow float32 both times: the tolerance is about kernels, not about precision (an
    # engine or precision of its own is checked by the collection's probe, tests/test_engine.py).
    tf32 = settings.model_copy(update={"features": settings.features.model_copy(update={"engine": "tensorflow", "precision": "float32"})})
    with Collection(tmp_path / "here", create=True) as col:
        ingest(col, FILES, tf32, extractor=make_extractor(tf32, announce=False), progress=False, log=lambda m: None)
        here = col.vectors()[1]
        manifest = col.manifest()
    assert manifest["reproducibility"] == REPRODUCIBILITY
    assert f"{CROSS_MACHINE_VECTOR_TOLERANCE:g}" in manifest["reproducibility"]["other_cpu"]
    # TensorFlow's own Eigen kernels instead of oneDNN: another code path, as on another CPU.
    out = tmp_path / "eigen.npy"
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "DOCSORT_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "eigen"), str(out), *map(str, FILES)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    there = np.load(out)
    assert there.shape == here.shape and len(here) >= 10
    assert np.abs(there - here).max() <= CROSS_MACHINE_VECTOR_TOLERANCE
    # Close enough that every page ranks the same nearest neighbours (ties aside).
    sims_here, sims_there = here @ here.T, there @ there.T
    np.fill_diagonal(sims_here, -1)
    np.fill_diagonal(sims_there, -1)
    gap = np.sort(sims_here, axis=1)[:, -1] - np.sort(sims_here, axis=1)[:, -2]
    clear = gap > 10 * CROSS_MACHINE_VECTOR_TOLERANCE
    assert clear.sum() >= len(here) // 2
    assert (sims_here.argmax(1) == sims_there.argmax(1))[clear].all()
