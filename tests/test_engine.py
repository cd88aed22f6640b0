"""Inference engines (issue 16): selection, parity with TensorFlow, the IR cache, fallback, refusal to mix."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from docsort.core import openvino_engine as ove
from docsort.core.features import BackboneError, FeatureExtractor, probe_pages
from docsort.core.pages import discover_files, iter_pages, to_network_input
from docsort.store.manifest import ENGINE_PROBE_MIN_COSINE, make_extractor
from docsort.queries.tables import info
from docsort.jobs.ingest import ingest
from docsort.config.settings import FeatureSettings, RenderSettings
from docsort.store.storage import Collection, CollectionError

from .conftest import SAMPLE_DOCS

# The fast tier (pytest -m "not slow") leaves this file out: it converts and compiles the network with OpenVINO.
pytestmark = pytest.mark.slow


def _pages(n: int = 12) -> np.ndarray:
    files = [f for f in discover_files([SAMPLE_DOCS / "leptonica"]) if hasattr(f, "format")][:n]
    return np.stack([to_network_input(next(iter_pages(f, RenderSettings())).image, (299, 299)) for f in files])


def _with(settings, **features):
    return settings.model_copy(update={"features": settings.features.model_copy(update=features)})


def _nearest(v: np.ndarray) -> np.ndarray:
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(axis=1)


@pytest.fixture(scope="module")
def tf_extractor(settings):
    return make_extractor(_with(settings, engine="tensorflow"), announce=False)


def test_auto_picks_openvino_on_a_cpu_and_bf16_where_the_cpu_has_it(extractor):
    import openvino as ov  # a dependency of docsort: its absence is a broken install, not a skip

    if extractor.description["engine"]["device"] != "CPU":
        pytest.skip("a GPU is visible: engine 'auto' takes the TensorFlow GPU path there")
    eng = extractor.description["engine"]
    assert eng["name"] == "openvino" and eng["version"] == str(ov.get_version())
    expected = "bfloat16" if ove.supports_bf16(ov.Core()) else "float32"
    assert eng["precision"] == expected
    assert eng["inference_precision"] == {"bfloat16": "bf16", "float32": "f32"}[expected]
    assert set(eng["cpu_flags"]) <= set(ove.CPU_FLAGS_OF_INTEREST)


def test_auto_precision_is_float32_where_the_cpu_has_no_bf16(settings, monkeypatch):
    monkeypatch.setattr(ove, "supports_bf16", lambda core: False)
    ex = make_extractor(settings, announce=False)
    assert ex.description["engine"]["name"] == "openvino"
    assert ex.description["engine"]["precision"] == "float32"
    assert ex.description["engine"]["inference_precision"] == "f32"


def test_explicit_tensorflow_engine_and_parity_within_the_stated_tolerance(settings, extractor, tf_extractor):
    assert tf_extractor.description["engine"]["name"] == "tensorflow"
    assert tf_extractor.description["engine"]["precision"] == "float32"
    batch = _pages(12)
    ref = tf_extractor.embed(batch)
    got = extractor.embed(batch)
    assert got.dtype == np.float32 and got.shape == ref.shape == (12, 288)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * ref).sum(axis=1)
    # Measured on the 41 sample_docs pages: bf16 >= 0.99997, f32 >= 0.9999999 (benchmarks/RESULTS.md).
    assert cos.min() >= (0.9999 if extractor.description["engine"]["precision"] == "bfloat16" else 0.99999)
    assert (_nearest(got) == _nearest(ref)).all()
    # OpenVINO float32 is the same network as TensorFlow float32 up to summation order.
    ov32 = make_extractor(_with(settings, engine="openvino", precision="float32"), announce=False)
    assert ((ov32.embed(batch) * ref).sum(axis=1)).min() >= 0.99999
    # The probe the collections compare is in the same tolerance.
    assert (extractor.probe_vectors() * tf_extractor.probe_vectors()).sum(axis=1).min() >= ENGINE_PROBE_MIN_COSINE


def test_openvino_vector_of_a_page_does_not_depend_on_its_batch(extractor):
    batch = _pages(6)
    alone = extractor.embed(batch[3:4])
    for arranged in (batch, batch[::-1], np.concatenate([batch[3:4]] * 40)):
        row = int(np.flatnonzero((arranged == batch[3]).all(axis=(1, 2, 3)))[0])
        assert np.array_equal(extractor.embed(arranged)[row], alone[0])


def test_probe_pages_are_fixed_and_document_like():
    a, b = probe_pages(), probe_pages()
    assert a.dtype == np.uint8 and a.shape == (8, 299, 299, 1) and np.array_equal(a, b)
    ink = (a < 128).mean(axis=(1, 2, 3))
    assert ((ink > 0.02) & (ink < 0.6)).all()  # text on paper, not blank or black
    assert len({p.tobytes() for p in a}) == 8
    assert probe_pages((320, 256), 3).shape == (8, 320, 256, 3)


def test_converted_model_is_cached_and_keyed_by_the_weights_sha256(settings, tmp_path, monkeypatch):
    import keras

    from docsort.core.features import build_inception_backbone
    from docsort.core.weights import resolve_weights

    monkeypatch.setenv("DOCSORT_CACHE_DIR", str(tmp_path / "cache"))
    first = make_extractor(settings, announce=False)
    second = make_extractor(settings, announce=False)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.cache_entry == second.cache_entry and first.cache_entry.parent == tmp_path / "cache" / "openvino"
    batch = _pages(3)
    assert np.array_equal(first.embed(batch), second.embed(batch))
    # Other weights (one kernel nudged, saved as a file): a new sha256, a new entry, other vectors.
    model = build_inception_backbone(resolve_weights("bundled", announce=False))
    kernel = next(layer for layer in model.layers if layer.name.startswith("conv2d")).kernel
    kernel.assign(kernel.numpy() * 1.5)
    path = tmp_path / "nudged.weights.h5"
    model.save_weights(str(path))
    keras.backend.clear_session()
    other = make_extractor(settings.with_overrides(weights=str(path)), announce=False)
    assert other.cache_hit is False and other.cache_entry != first.cache_entry
    assert other.description["weights"]["sha256"] != first.description["weights"]["sha256"]
    assert len([p for p in (tmp_path / "cache" / "openvino").iterdir() if not p.name.startswith(".")]) == 2
    assert not np.allclose(other.embed(batch), first.embed(batch), atol=1e-3)


def test_damaged_cache_entry_is_rebuilt(settings, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCSORT_CACHE_DIR", str(tmp_path))
    first = make_extractor(settings, announce=False)
    batch = _pages(2)
    expected = first.embed(batch)
    binfile = first.cache_entry / "model.bin"
    binfile.write_bytes(binfile.read_bytes()[: binfile.stat().st_size // 2])  # truncated, as by a full disk
    capsys.readouterr()
    again = make_extractor(settings, announce=False)
    assert again.cache_hit is False and again.description["engine"]["name"] == "openvino"
    assert "rebuilding the damaged OpenVINO cache entry" in capsys.readouterr().err
    assert np.array_equal(again.embed(batch), expected)
    meta = json.loads((again.cache_entry / "meta.json").read_text())
    assert meta["parts"]["weights_sha256"] == first.description["weights"]["sha256"]
    assert make_extractor(settings, announce=False).cache_hit is True


def test_missing_openvino_falls_back_to_tensorflow_with_a_notice(settings, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    capsys.readouterr()
    ex = make_extractor(settings, announce=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.description["engine"]["name"] == "tensorflow"
    assert len(err) == 1 and "OpenVINO cannot be imported" in err[0] and "TensorFlow" in err[0]
    assert ex.embed(_pages(2)).shape == (2, 288)
    with pytest.raises(BackboneError, match="engine 'openvino'.*cannot be imported"):
        make_extractor(_with(settings, engine="openvino"), announce=False)


def test_openvino_failing_to_compile_falls_back_to_tensorflow(settings, monkeypatch, capsys):
    import openvino as ov

    def broken(self, *a, **k):
        raise RuntimeError("simulated plugin failure")

    monkeypatch.setattr(ov.Core, "compile_model", broken)
    ex = make_extractor(settings, announce=False)
    assert ex.description["engine"]["name"] == "tensorflow"
    assert "cannot compile" in capsys.readouterr().err


def test_jax_and_torch_are_not_engines_of_their_own():
    with pytest.raises(ValueError, match="KERAS_BACKEND=jax"):
        FeatureSettings(engine="jax")
    with pytest.raises(ValueError, match="engine"):
        FeatureSettings(engine="onnx")


# --- collections: provenance and refusal to mix -----------------------------------------------


def _copy_docs(tmp_path, names):
    out = tmp_path / "docs"
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(SAMPLE_DOCS / "leptonica" / n, out / n)
    return out


def _tf_collection(tmp_path, settings, tf_extractor):
    root = tmp_path / "col"
    docs = _copy_docs(tmp_path / "a", ["map1.jpg", "comap.063.jpg", "ortiz-02.png"])
    with Collection(root, create=True) as col:
        ingest(col, [docs], _with(settings, engine="tensorflow"), extractor=tf_extractor, progress=False, log=lambda m: None)
    return root


def test_collection_records_its_engine_and_takes_another_within_tolerance(tmp_path, settings, extractor, tf_extractor):
    root = _tf_collection(tmp_path, settings, tf_extractor)
    with Collection(root) as col:
        feats = col.manifest()["features"]
        assert feats["engine"]["name"] == "tensorflow" and feats["engine"]["precision"] == "float32"
        assert feats["engine"]["probe"]["shape"] == [8, 288]
        more = _copy_docs(tmp_path / "b", ["ortiz-03.png", "map.057.jpg"])
        report = ingest(col, [more], settings, extractor=extractor, progress=False, log=lambda m: None)
        assert report.pages_added == 2
        manifest = col.manifest()
        if extractor.description["engine"]["name"] == "openvino":
            (check,) = manifest["engine_checks"]
            assert check["passed"] and check["name"] == "openvino" and check["reference"] == "stored probe"
            assert check["probe_min_cosine"] >= ENGINE_PROBE_MIN_COSINE
            assert manifest["features"]["engine"]["name"] == "tensorflow"  # what built it stays recorded
            summary = info(col)
            assert summary["engine"].startswith("tensorflow ") and summary["precision"] == "float32"
            assert "openvino" in summary["engine_checks"]


def test_legacy_collection_without_an_engine_record_keeps_working(tmp_path, settings, extractor, tf_extractor):
    root = _tf_collection(tmp_path, settings, tf_extractor)
    with Collection(root) as col:  # as written by docsort before engines were recorded
        manifest = col.manifest()
        del manifest["features"]["engine"]
        del manifest["pipeline"]["features"]["engine"]
        col.write_manifest(manifest)
        assert info(col)["precision"] == "float32" and info(col)["engine"].startswith("tensorflow")
        more = _copy_docs(tmp_path / "b", ["ortiz-04.png"])
        assert ingest(col, [more], settings, extractor=extractor, progress=False, log=lambda m: None).pages_added == 1
        checks = col.manifest().get("engine_checks", [])
        if extractor.description["engine"]["name"] != "tensorflow":
            assert checks and checks[0]["reference"].startswith("keras float32") and checks[0]["passed"]


def test_collection_refuses_an_engine_whose_probe_vectors_differ(tmp_path, settings, extractor, tf_extractor):
    if extractor.description["engine"]["name"] == "tensorflow":
        pytest.skip("engine 'auto' is TensorFlow here (OpenVINO unavailable or a GPU): no second engine to refuse")
    root = _tf_collection(tmp_path, settings, tf_extractor)
    import base64

    with Collection(root) as col:
        manifest = col.manifest()
        probe = manifest["features"]["engine"]["probe"]
        v = np.frombuffer(base64.b64decode(probe["base64"]), "<f4").reshape(probe["shape"]).copy()
        v[:, :20] = v[:, :20][:, ::-1]  # another network's probe vectors, still unit vectors
        probe["base64"] = base64.b64encode(v.astype("<f4").tobytes()).decode()
        col.write_manifest(manifest)
        before = col.counts()["pages"]
        more = _copy_docs(tmp_path / "b", ["ortiz-05.png"])
        with pytest.raises(CollectionError, match="refusing to mix"):
            ingest(col, [more], settings, extractor=extractor, progress=False, log=lambda m: None)
        assert col.counts()["pages"] == before and "engine_checks" not in col.manifest()
        # The engine it was built with is still welcome: same engine, nothing to check.
        ingest(col, [more], _with(settings, engine="tensorflow"), extractor=tf_extractor, progress=False, log=lambda m: None)
        assert col.counts()["pages"] == before + 1
