"""The features stage: the Mixed_5c shape, determinism, pooling, weights policy, hub backbones."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from docsort.core.features import POOLINGS, BackboneError, FeatureExtractor, pooled_dim, validate_hub_handle
from docsort.core.pages import discover_files, iter_pages, to_network_input
from docsort.config.settings import FeatureSettings, RenderSettings
from docsort.core.weights import BUNDLED_WEIGHTS, KNOWN_SHA256, WeightsError, file_sha256, resolve_weights

from .conftest import SAMPLE_DOCS

# The fast tier (pytest -m "not slow") leaves this file out: it builds the Keras network for every pooling and layer.
pytestmark = pytest.mark.slow


def _sample_batch(n: int = 4) -> np.ndarray:
    files = [f for f in discover_files([SAMPLE_DOCS / "leptonica"]) if hasattr(f, "format")][:n]
    return np.stack([to_network_input(next(iter_pages(f, RenderSettings())).image, (299, 299)) for f in files])


def test_mixed1_is_mixed_5c_35x35x288(extractor):
    batch = _sample_batch(2)
    fmap = extractor.feature_map(batch)
    assert fmap.shape == (2, 35, 35, 288) and fmap.dtype == np.float32
    assert extractor.description["layer"] == "mixed1"
    assert extractor.description["layer_output_shape"] == [35, 35, 288]
    # The default pooling (topk) is, per channel, the mean of the 37 largest of the 35x35 cells
    # (3 %), L2-normalised: recomputed here with numpy.
    assert extractor.description["pooling"] == "topk"
    cells = np.sort(fmap.reshape(2, 35 * 35, 288), axis=1)[:, -37:, :]
    topk = cells.mean(axis=1)
    topk /= np.linalg.norm(topk, axis=1, keepdims=True)
    got = extractor.embed(batch)
    if extractor.description["engine"]["precision"] == "float32":
        np.testing.assert_allclose(got, topk, atol=1e-5)
    else:  # the engine computed in bfloat16 (OpenVINO on AMX / AVX-512 BF16): same direction
        assert (got * topk).sum(axis=1).min() >= 0.9999
        np.testing.assert_allclose(got, topk, atol=5e-3)


def test_vectors_are_unit_float32_and_identical_for_identical_input(extractor, settings):
    batch = _sample_batch(5)
    a = extractor.embed(batch)
    assert a.shape == (5, 288) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # Same pages again, alone and in another batch composition: bit-identical.
    b = extractor.embed(batch[::-1])[::-1]
    c = extractor.embed(batch[2:3])
    assert np.array_equal(a, b)
    assert np.array_equal(a[2:3], c)
    # A second extractor built from the same settings gives the same vectors.
    other = FeatureExtractor(settings.features, channels=1, announce=False)
    assert np.array_equal(other.embed(batch), a)
    # Different pages give different vectors.
    assert not np.allclose(a[0], a[1])


@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_every_pooling_gives_its_documented_dimension(pooling):
    ex = FeatureExtractor(FeatureSettings(weights="random", pooling=pooling, batch_size=2), channels=1, announce=False)
    v = ex.embed(_sample_batch(2))
    assert v.shape == (2, pooled_dim(pooling, 288))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_topk_pooling_sits_between_average_and_max_and_shrugs_off_a_speck(extractor):
    """topk on a real page's Mixed_5c map: k=1 is max pooling, k=all cells is average pooling,
    and one hot cell (a speck) moves max pooling by its full height but topk by 1/37 of it."""
    from keras import ops

    from docsort.core.features import TOPK_FRACTION, _topk

    fmap = extractor.feature_map(_sample_batch(1))  # (1, 35, 35, 288)
    topk = ops.convert_to_numpy(_topk(fmap))
    gap, gmp = fmap.mean(axis=(1, 2)), fmap.max(axis=(1, 2))
    assert topk.shape == (1, 288)
    assert np.all(topk <= gmp + 1e-6) and np.all(topk >= gap - 1e-6) and np.any(topk < gmp - 1e-3)
    np.testing.assert_allclose(ops.convert_to_numpy(_topk(fmap, 1e-9)), gmp, rtol=1e-6)  # k = 1
    np.testing.assert_allclose(ops.convert_to_numpy(_topk(fmap, 1.0)), gap, rtol=1e-5)  # k = 35*35
    assert round(TOPK_FRACTION * 35 * 35) == 37
    speck = fmap.copy()
    spike = 10 * float(gmp.max())
    speck[0, 17, 17, :] = spike  # one cell lights up in every channel
    moved_max = float(np.abs(speck.max(axis=(1, 2)) - gmp).max())
    moved_topk = float(np.abs(ops.convert_to_numpy(_topk(speck)) - topk).max())
    assert moved_max > 0.8 * spike and moved_topk <= spike / 37 + 1e-4


def test_unknown_pooling_and_layer_are_refused():
    with pytest.raises(BackboneError, match="unknown pooling"):
        FeatureExtractor(FeatureSettings(weights="random", pooling="median"), announce=False)
    with pytest.raises(BackboneError, match="no layer named"):
        FeatureExtractor(FeatureSettings(weights="random", layer="mixed99"), announce=False)


def test_bundled_weights_are_checked_and_recorded(extractor):
    w = extractor.description["weights"]
    assert w["source"] == "bundled"
    assert w["sha256"] == file_sha256(BUNDLED_WEIGHTS) == KNOWN_SHA256[BUNDLED_WEIGHTS.name]
    assert extractor.description["preprocessing"] == "unit"


def test_weights_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    tampered = tmp_path / BUNDLED_WEIGHTS.name
    data = bytearray(BUNDLED_WEIGHTS.read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    # A known file name is checked against the sha256 recorded in the code...
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        resolve_weights(str(tampered), announce=False)
    # ...and so is any file against the sha256 the user gives.
    good = tmp_path / "mine.weights.h5"
    shutil.copy(BUNDLED_WEIGHTS, good)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        resolve_weights(str(good), expected_sha256="0" * 64, announce=False)
    # The bundled file itself is refused if its bytes change.
    monkeypatch.setitem(KNOWN_SHA256, BUNDLED_WEIGHTS.name, "f" * 64)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        resolve_weights("bundled", announce=False)


def test_auto_weights_offline_fall_back_to_bundled_and_say_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setenv("DOCSORT_OFFLINE", "1")
    w = resolve_weights("auto")
    assert w.source == "bundled"
    err = capsys.readouterr().err
    assert "ImageNet weights unavailable" in err and "bundled" in err
    resolve_weights("random")
    assert "RANDOM" in capsys.readouterr().err


def test_imagenet_weights_offline_fail_clearly(monkeypatch, tmp_path):
    import urllib.request

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def no_network(*a, **k):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    with pytest.raises(WeightsError, match="cannot fetch the ImageNet InceptionV3 weights"):
        resolve_weights("imagenet")


def test_pretrained_weights_beat_random_weights_on_real_scans(sample_collection):
    """Leave-one-out kNN@5 over sample_docs' labels: the bundled weights carry real signal."""
    from docsort.store.manifest import make_extractor
    from docsort.config.settings import PipelineSettings
    from docsort.store.storage import Collection

    from .conftest import sample_labels

    labels = sample_labels()
    with Collection(sample_collection) as col:
        table = col.page_table()
        ids, pretrained = col.vectors()
    cats = np.array([labels[(p, n)] for p, n in zip(table["path"], table["page"])])
    # Re-embed the same pages with random weights.
    rnd = make_extractor(PipelineSettings().with_overrides(weights="random"), announce=False)
    files = {str(f.path): f for f in discover_files([SAMPLE_DOCS]) if hasattr(f, "format")}
    imgs = {(str(f), p.page_no): p.image for f, src in files.items() for p in iter_pages(src, RenderSettings())}
    random_vecs = rnd.embed_images([imgs[(p, n)] for p, n in zip(table["path"], table["page"])])

    def knn5(v):
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        nn = np.argsort(-s, axis=1)[:, :5]
        return float((cats[nn] == cats[:, None]).mean())

    assert knn5(pretrained) > knn5(random_vecs) + 0.05
    assert knn5(pretrained) > 0.6


def test_hub_backbone_on_a_locally_exported_savedmodel(tmp_path, settings):
    """A TF2 image feature-vector SavedModel exported here, loaded through tensorflow_hub."""
    import tensorflow as tf

    class TinyFeatureVector(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([5, 5, 3, 16], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            fmap = tf.nn.relu(tf.nn.conv2d(images, self.kernel, strides=4, padding="SAME"))
            return tf.reduce_mean(fmap, axis=[1, 2])  # (batch, 16) feature vector

    export = tmp_path / "tiny_fv"
    tf.saved_model.save(TinyFeatureVector(), str(export))
    fs = FeatureSettings(backbone=f"hub:{export}", input_size=(128, 128), batch_size=4)
    ex = FeatureExtractor(fs, channels=1, announce=False)
    v = ex.embed(np.stack([np.asarray(_sample_batch(3)[i, :128, :128]) for i in range(3)]))
    assert v.shape == (3, 16) and ex.dim == 16
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert ex.description["backbone"] == f"hub:{export.resolve()}"
    assert len(ex.description["weights"]["sha256"]) == 64

    # And end to end: ingest two files into a collection with this backbone.
    from docsort.jobs.ingest import ingest
    from docsort.store.storage import Collection

    pipeline = settings.model_copy(update={"features": fs})
    with Collection(tmp_path / "hubcol", create=True) as col:
        report = ingest(col, [SAMPLE_DOCS / "leptonica" / "map1.jpg", SAMPLE_DOCS / "leptonica" / "bois-2-5.pdf"], pipeline, progress=False)
        assert (report.documents_added, report.pages_added) == (2, 5)
        assert col.vectors()[1].shape == (5, 16)


def test_hub_handles_must_be_versioned_https_or_a_local_savedmodel(tmp_path):
    assert validate_hub_handle("https://tfhub.dev/google/imagenet/inception_v3/feature_vector/5")
    for bad in ("https://tfhub.dev/google/imagenet/inception_v3/feature_vector", "http://example.com/m/1", str(tmp_path / "nope")):
        with pytest.raises(BackboneError):
            validate_hub_handle(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="not a SavedModel"):
        validate_hub_handle(str(tmp_path / "empty"))
