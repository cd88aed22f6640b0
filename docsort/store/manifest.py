"""What a collection pins in its manifest, read and checked in one place: the settings a command runs
with (:func:`effective_settings`), the engine and probe vectors its vectors were made with
(:func:`recorded_engine`, :func:`check_engine_parity`), the manifest of a new collection and the
extractor that may add to or query it (:func:`make_extractor`, :func:`check_extractor`).

A collection pins the settings that shape its vectors (render, backbone, layer, pooling, weights and
their sha256, input size, preprocessing) in its manifest at the first ingest. Later commands reuse
them, and an ingest that would add vectors made differently is refused."""

from __future__ import annotations

import importlib.metadata as _md
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from docsort import __version__
from docsort.config.settings import PipelineSettings
from docsort.core.runtime import REPRODUCIBILITY, machine
from docsort.store.storage import Collection, CollectionError

if TYPE_CHECKING:  # the feature stage imports Keras (~6 s); settings resolution must not
    from docsort.core.features import FeatureExtractor

#: Fields of the features description that must match for vectors to be comparable.
_PINNED_FEATURE_KEYS = ("backbone", "layer", "pooling", "dim", "input_size", "channels_in", "preprocessing")


#: Feature settings free to differ between ingests: weights are compared by sha256 instead,
#: batch size does not change what a vector means, and another engine or precision is let in
#: only when its vectors pass the probe check (:func:`check_engine_parity`).
_FEATURE_KEYS_NOT_IN_VECTORS = {"weights", "weights_sha256", "batch_size", "precision", "engine", "threads"}


#: Smallest cosine, over the 8 :func:`docsort.core.features.probe_pages`, between the vectors of the
#: engine and precision a collection was built with and those of another one, for the collection
#: to take the other one's vectors: 0.9999, the loosest cosine tested that keeps kNN@5 within the
#: project's 0.005 (benchmarks/RESULTS.md, "Inference engines (issue 16)", "Quality against TensorFlow float32").
ENGINE_PROBE_MIN_COSINE = 0.9999


#: Render settings that do not change the vectors (free to differ between ingests).
_RENDER_KEYS_NOT_IN_VECTORS = ("pdf_chunk_pages", "workers", "thumbnail_px")


class Manifest(BaseModel):
    """``manifest.json``: what built a collection and what it pins (:func:`effective_settings`).

    Sections are written by the jobs through :func:`write_manifest`, which validates them with this
    model first; unknown sections are kept (``extra="allow"``), so manifests of newer versions survive.

    Attributes:
        collection_format: layout version of the collection (1).
        docsort_version, created_at: who made it, when (ISO 8601 UTC).
        pipeline: the :class:`PipelineSettings` it was built with (JSON); render: its render settings.
        features: the feature extractor's description (backbone, layer, pooling, dim, weights with
            sha256, engine with its probe vectors).
        seeds, libraries, machine, reproducibility: what reproducing its vectors needs.
        engine_checks: passed probe checks of other engines (:func:`check_engine_parity`).
        text, ocr, invariance, adaptation, classifier, clustering, fine_tune: written by the job of that name.
    """

    model_config = ConfigDict(extra="allow")

    collection_format: int = 1
    docsort_version: str | None = None
    created_at: str | None = None
    pipeline: dict[str, Any] | None = None
    features: dict[str, Any] | None = None
    render: dict[str, Any] | None = None
    seeds: dict[str, Any] | None = None
    libraries: dict[str, Any] | None = None
    machine: dict[str, Any] | None = None
    reproducibility: Any = None
    engine_checks: list[dict[str, Any]] | None = None
    text: dict[str, Any] | None = None
    ocr: dict[str, Any] | None = None
    invariance: dict[str, Any] | None = None
    adaptation: dict[str, Any] | None = None
    classifier: dict[str, Any] | None = None
    clustering: dict[str, Any] | None = None
    fine_tune: dict[str, Any] | None = None


def read_manifest(collection: Collection) -> Manifest | None:
    """The collection's manifest as a :class:`Manifest`, or ``None`` before the first ingest.

    Raises:
        CollectionError: the manifest is unreadable or does not validate.
    """
    data = collection.manifest()
    if data is None:
        return None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise CollectionError(f"{collection.manifest_path}: invalid manifest: {exc}") from exc


def write_manifest(collection: Collection, manifest: dict[str, Any]) -> None:
    """Validate ``manifest`` (:class:`Manifest`) and replace the collection's atomically; the one
    writer of ``manifest.json`` for the jobs (the caller holds the collection's write lock). The
    dict is written as given (JSON, sorted keys), so validation changes no byte of it.

    Raises:
        CollectionError: a section does not validate (nothing is written).
    """
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise CollectionError(f"{collection.manifest_path}: refusing to write an invalid manifest: {exc}") from exc
    collection.write_manifest(manifest)


def library_versions() -> dict[str, str]:
    """Versions of Python, the libraries that shape vectors and clusters, and poppler."""
    out = {"python": platform.python_version(), "docsort": __version__}
    for dist in ("numpy", "keras", "tensorflow", "tensorflow-hub", "faiss-cpu", "umap-learn", "hdbscan",
                 "scikit-learn", "pynndescent", "numba", "pillow", "pdf2image"):
        try:
            out[dist] = _md.version(dist)
        except _md.PackageNotFoundError:
            pass
    try:
        res = subprocess.run(["pdftoppm", "-v"], capture_output=True, text=True, timeout=10)
        out["poppler"] = (res.stderr or res.stdout).splitlines()[0].split()[-1]
    except (OSError, IndexError, subprocess.SubprocessError):
        out["poppler"] = "not installed"
    return out


def recorded_settings(collection: Collection) -> PipelineSettings | None:
    """The pipeline recorded in ``collection``'s manifest at its first ingest, or ``None`` (nothing
    ingested yet). Imports no feature stage: commands that never embed (OCR, classify) use it.

    Raises:
        CollectionError: the manifest is unreadable; pydantic.ValidationError: its pipeline does not validate.
    """
    manifest = read_manifest(collection)
    if manifest is None or manifest.pipeline is None:
        return None
    return PipelineSettings(**manifest.pipeline)


def effective_settings(
    collection: Collection, requested: PipelineSettings, *, explicit: bool = False, weights: str | None = None
) -> PipelineSettings:
    """The settings a command on ``collection`` must run with.

    A new collection takes ``requested`` (with ``weights`` if given). An existing one keeps the
    render and feature settings of its manifest (its weights pinned to the resolved source, so an
    ``auto`` collection built with the bundled weights stays on them); index, UMAP, HDBSCAN,
    classifier, OCR and text settings come from ``requested`` when the user chose a pipeline (``explicit``), else from the
    manifest (a manifest from before ``umap.consensus_runs`` existed keeps one UMAP run, one from before
    ``hdbscan.min_cluster_size_divisor`` the earlier automatic sizes, ``sqrt(n) / 2`` and half of it). Where jobs run (``[ray]``) is not recorded in the manifest: the chosen pipeline's, else none (this process).

    Raises:
        CollectionError: an explicitly chosen pipeline or ``weights`` would change how vectors are
            made for a collection that already has vectors; the manifest is unreadable, does not
            validate (:class:`Manifest`) or records no pipeline or features.
    """
    manifest = read_manifest(collection)
    if manifest is None:
        if weights is not None and weights not in ("auto", "imagenet", "bundled", "random"):
            check_adapted_weights(weights)  # another collection's adapted weights: its recorded sha256
        return requested.with_overrides(weights=weights)
    if manifest.pipeline is None or manifest.features is None:
        raise CollectionError(f"{collection.manifest_path}: the manifest records no pipeline or features")
    pipeline = dict(manifest.pipeline)
    if isinstance(pipeline.get("umap"), dict) and "consensus_runs" not in pipeline["umap"]:
        # Recorded before the consensus existed (issue 13): its clusterings were one UMAP run, and
        # stay so until a pipeline is chosen (``docsort cluster -p default``).
        pipeline["umap"] = {**pipeline["umap"], "consensus_runs": 1}
    if isinstance(pipeline.get("hdbscan"), dict) and "min_cluster_size_divisor" not in pipeline["hdbscan"]:
        # Recorded before the automatic sizes were re-measured (issue 13): sqrt(n) / 2 and half of it.
        pipeline["hdbscan"] = {**pipeline["hdbscan"], "min_cluster_size_divisor": 2.0, "min_samples_divisor": 2}
    pinned = PipelineSettings(**pipeline)
    recorded = manifest.features["weights"]
    pinned_weights = recorded["source"] if recorded["source"] in ("imagenet", "bundled", "random") else recorded["spec"]
    adaptation = manifest.adaptation or {}
    if adaptation.get("state") == "done" and recorded.get("sha256") == adaptation.get("sha256"):
        pinned_weights = str(collection.adapted_weights_path)  # adapted by docsort adapt: the file inside the collection
    pinned = pinned.with_overrides(weights=pinned_weights)
    if explicit:
        a = requested.features.model_dump(exclude=_FEATURE_KEYS_NOT_IN_VECTORS)
        b = pinned.features.model_dump(exclude=_FEATURE_KEYS_NOT_IN_VECTORS)
        diffs = [f"features.{k}: collection {b[k]!r}, requested {a[k]!r}" for k in a if a[k] != b[k]]
        ra, rb = requested.render.model_dump(), pinned.render.model_dump()
        diffs += [f"render.{k}: collection {rb[k]!r}, requested {ra[k]!r}" for k in ra if ra[k] != rb[k] and k not in _RENDER_KEYS_NOT_IN_VECTORS]
        if diffs:
            raise CollectionError(
                f"{collection.root} was built with different feature settings; refusing to mix vectors:\n  "
                + "\n  ".join(diffs)
                + "\nUse a new --collection for these settings."
            )
        # Engine and precision follow the request; the probe check decides whether they may.
        features = pinned.features.model_copy(update={"engine": requested.features.engine,
                                                      "precision": requested.features.precision,
                                                      "threads": requested.features.threads})
        pinned = pinned.model_copy(update={"features": features, "index": requested.index, "umap": requested.umap, "hdbscan": requested.hdbscan,
                                           "classifier": requested.classifier, "ocr": requested.ocr, "text": requested.text,
                                           "invariance": requested.invariance, "ray": requested.ray,
                                           "name": requested.name})
    if weights is not None:
        pinned = pinned.with_overrides(weights=weights)
    return pinned


def recorded_engine(features: dict) -> dict:
    """The engine a collection's vectors were made with, from its manifest's ``features``.

    Collections made before engines were recorded (no ``engine`` key) were made by the Keras model
    on TensorFlow, in float32 unless their ``dtype_policy`` is ``mixed_bfloat16``; for them
    ``recorded`` is False and there is no stored probe.
    """
    eng = features.get("engine")
    if eng:
        return {**eng, "recorded": True}
    precision = "bfloat16" if features.get("dtype_policy") == "mixed_bfloat16" else "float32"
    return {"name": "tensorflow", "version": None, "precision": precision, "recorded": False}


def _probe_record(vectors: np.ndarray) -> dict:
    import base64

    from docsort.core.features import PROBE_SEED

    v = np.ascontiguousarray(vectors, dtype="<f4")
    return {"seed": PROBE_SEED, "shape": list(v.shape), "dtype": "float32", "base64": base64.b64encode(v.tobytes()).decode()}


def _probe_vectors_of(record: dict) -> np.ndarray | None:
    import base64

    from docsort.core.features import PROBE_SEED

    try:
        if record.get("seed") != PROBE_SEED:
            return None
        return np.frombuffer(base64.b64decode(record["base64"]), "<f4").reshape(record["shape"]).astype(np.float32)
    except (KeyError, TypeError, ValueError):
        return None


def _same_engine(a: dict, b: dict) -> bool:
    keys = ("name", "precision") if not (a.get("version") and b.get("version")) else ("name", "precision", "version")
    return all(a.get(k) == b.get(k) for k in keys)


def check_engine_parity(collection: Collection, extractor: FeatureExtractor, *, store: bool = False) -> dict | None:
    """Let ``extractor`` add or query vectors of ``collection`` only if its engine matches.

    Same engine, precision and version as recorded: nothing to check (``None``). Otherwise the 8
    :func:`docsort.core.features.probe_pages` are embedded by ``extractor`` and compared with the
    reference: the probe vectors stored at the collection's creation, or, for a collection made
    before engines were recorded (TensorFlow float32), the Keras model run eagerly in float32.
    A passed check is remembered in the manifest's ``engine_checks`` (with ``store``), so the next
    run with that engine does not repeat it.

    Returns:
        The check (engine, version, precision, CPU flags, reference, probe cosine min/mean,
        threshold, passed), or ``None`` when none was needed.

    Raises:
        CollectionError: the probe's smallest cosine is below :data:`ENGINE_PROBE_MIN_COSINE`,
            or there is no reference to check against.
    """
    import datetime as dt

    recorded = read_manifest(collection)
    if recorded is None:
        return None
    old, new = recorded_engine(recorded.features or {}), extractor.description.get("engine", {})
    if _same_engine(old, new):
        return None
    ident = {k: new.get(k) for k in ("name", "version", "precision", "cpu_flags")}
    for check in recorded.engine_checks or []:
        if check.get("passed") and all(check.get(k) == v for k, v in ident.items()):
            return check
    ref = _probe_vectors_of(old.get("probe") or {})
    source = "stored probe"
    if ref is None:
        if old["recorded"] or old["precision"] != "float32" or extractor.description.get("dtype_policy") != "float32":
            raise CollectionError(
                f"{collection.root} was built with {old['name']} {old['precision']} and holds no probe to compare "
                f"{new.get('name')} {new.get('precision')} vectors with; refusing to mix them. "
                f"Use [features] engine = {old['name']!r}, precision = {old['precision']!r}, or a new --collection."
            )
        ref, source = extractor.reference_probe_vectors(), "keras float32 (collection made before engines were recorded)"
    got = extractor.probe_vectors()
    if ref.shape != got.shape:
        raise CollectionError(f"{collection.root}: stored probe has shape {ref.shape}, this extractor gives {got.shape}")
    cos = (ref * got).sum(axis=1)
    check = {
        **ident,
        "reference": source,
        "reference_engine": f"{old['name']} {old.get('version') or ''} {old['precision']}".replace("  ", " "),
        "probe_min_cosine": round(float(cos.min()), 7),
        "probe_mean_cosine": round(float(cos.mean()), 7),
        "threshold": ENGINE_PROBE_MIN_COSINE,
        "passed": bool(cos.min() >= ENGINE_PROBE_MIN_COSINE),
        "checked_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if not check["passed"]:
        raise CollectionError(
            f"{collection.root} was built with {check['reference_engine']}; {new.get('name')} {new.get('precision')} "
            f"vectors of the probe pages differ from its own (smallest cosine {cos.min():.6f} < {ENGINE_PROBE_MIN_COSINE}); "
            f"refusing to mix them. Use [features] engine = {old['name']!r}, precision = {old['precision']!r}, "
            f"or a new --collection."
        )
    if store:
        manifest = collection.manifest() or recorded.model_dump(exclude_unset=True)  # read-modify-write of the JSON as stored
        manifest["engine_checks"] = [*manifest.get("engine_checks", []), check]
        write_manifest(collection, manifest)
    return check


def _check_extractor(collection: Collection, extractor: FeatureExtractor, *, store: bool = False) -> None:
    manifest = read_manifest(collection)
    if manifest is None:
        return
    old, new = manifest.features or {}, extractor.description
    diffs = [f"{k}: collection {old.get(k)!r}, now {new.get(k)!r}" for k in _PINNED_FEATURE_KEYS if old.get(k) != new.get(k)]
    if old["weights"]["sha256"] != new["weights"]["sha256"]:
        diffs.append(
            f"weights sha256: collection {old['weights']['sha256']} ({old['weights']['source']}), "
            f"now {new['weights']['sha256']} ({new['weights']['source']})"
        )
    if diffs:
        raise CollectionError(
            f"{collection.root} holds vectors made with other weights or settings; refusing to mix them:\n  "
            + "\n  ".join(diffs)
            + "\nUse a new --collection, or the weights the collection was built with."
        )
    check_engine_parity(collection, extractor, store=store)


def make_extractor(settings: PipelineSettings, *, announce: bool = True) -> FeatureExtractor:
    """Build the feature extractor for a pipeline (channels follow ``render.color``)."""
    from docsort.core.features import FeatureExtractor

    return FeatureExtractor(settings.features, channels=1 if settings.render.color == "gray" else 3, announce=announce)


def _features_record(extractor: FeatureExtractor) -> dict:
    """The manifest's ``features``: the extractor's description, its engine with the probe vectors."""
    desc = dict(extractor.description)
    if "engine" in desc and desc.get("backbone") == "keras.applications.InceptionV3":
        desc["engine"] = {**desc["engine"], "probe": _probe_record(extractor.probe_vectors())}
    return desc


def _new_manifest(settings: PipelineSettings, extractor: FeatureExtractor) -> dict:
    import datetime as dt

    return {
        "collection_format": 1,
        "docsort_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        # Not [ray]: where a job runs is chosen per command (--ray), never pinned by the collection.
        "pipeline": settings.model_dump(mode="json", exclude={"ray"}),
        "features": _features_record(extractor),
        "render": settings.render.model_dump(mode="json"),
        "seeds": {"weights_init": settings.features.seed, "umap_random_state": settings.umap.random_state},
        "libraries": library_versions(),
        "machine": machine(),
        "reproducibility": REPRODUCIBILITY,
    }


def check_adapted_weights(path: str | os.PathLike[str]) -> str:
    """Check a weights file given with ``--weights PATH``: when a collection's ``manifest.json``
    sits next to it and records an adaptation, the file's sha256 must be the one recorded.

    Returns:
        The file's hex sha256.

    Raises:
        WeightsError: the file is missing, or its sha256 differs from its collection's record.
    """
    import json

    from docsort.core.weights import WeightsError, file_sha256

    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"{p}: weights file not found")
    sha = file_sha256(p)
    manifest = p.parent / Collection.MANIFEST
    if p.name == Collection.ADAPTED_WEIGHTS and manifest.is_file():
        try:
            entry = json.loads(manifest.read_text(encoding="utf-8")).get("adaptation") or {}
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{manifest}: unreadable manifest next to {p.name}: {exc}") from exc
        if entry.get("sha256") and entry["sha256"] != sha:
            raise WeightsError(f"{p}: sha256 {sha} differs from the one its collection recorded ({entry['sha256']})")
    return sha


def fine_tuned_in_use(collection: Collection) -> bool:
    """Whether the collection's predictions come from a kept fine-tuned classifier (manifest)."""
    manifest = read_manifest(collection)
    return manifest is not None and (manifest.fine_tune or {}).get("in_use") == "fine-tuned"


def forget_fine_tuned(collection: Collection) -> bool:
    """Mark the fine-tuned classifier as no longer in use (a plain ``docsort classify`` typed the
    pages with the frozen one); its weights file stays. The caller holds the write lock.

    Returns:
        Whether it was in use.
    """
    manifest = collection.manifest() or {}
    entry = manifest.get("fine_tune") or {}
    if entry.get("in_use") != "fine-tuned":
        return False
    entry["in_use"] = "frozen"
    manifest["fine_tune"] = entry
    if manifest.get("classifier"):
        manifest["classifier"]["in_use"] = "frozen"
    write_manifest(collection, manifest)
    return True
