"""bfloat16 compute (GPU default, CPU opt-in) gives vectors comparable to float32 ones."""

from __future__ import annotations

import numpy as np

from docsort.core.features import FeatureExtractor
from docsort.core.pages import discover_files, iter_pages, to_network_input
from docsort.config.settings import RenderSettings

from .conftest import SAMPLE_DOCS

import pytest

# The fast tier (pytest -m "not slow") leaves this file out: it embeds pages in two precisions.
pytestmark = pytest.mark.slow


def test_bfloat16_vectors_match_float32_neighbourhoods(settings):
    """Keras' own mixed_bfloat16 policy on the TensorFlow engine (OpenVINO's bf16: tests/test_engine.py)."""
    files = [f for f in discover_files([SAMPLE_DOCS / "leptonica"]) if hasattr(f, "format")][:12]
    batch = np.stack([to_network_input(next(iter_pages(f, RenderSettings())).image, (299, 299)) for f in files])
    tf_features = settings.features.model_copy(update={"engine": "tensorflow"})
    extractor = FeatureExtractor(tf_features, channels=1, announce=False)
    bf16 = FeatureExtractor(tf_features.model_copy(update={"precision": "bfloat16"}), channels=1, announce=False)
    assert bf16.description["dtype_policy"] == "mixed_bfloat16"
    assert extractor.description["dtype_policy"] == "float32"  # CPU, precision auto
    a, b = extractor.embed(batch), bf16.embed(batch)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert not np.array_equal(a, b)  # really computed in another precision
    np.testing.assert_allclose((a * b).sum(axis=1), 1.0, atol=2e-3)  # same direction
    # The nearest other page of each page is the same in both precisions.
    def nearest(v):
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return s.argmax(axis=1)
    assert (nearest(a) == nearest(b)).mean() >= 0.9
