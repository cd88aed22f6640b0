"""The cluster job: fit the text model, the invariance projection when due, UMAP + HDBSCAN over
every stored page, and store labels, the 2-D map, cluster names and fitted models.

Hand edits (``docsort merge / split / move``, :mod:`docsort.jobs.edits`) are kept: the automatic
clusters are fitted on every page, then the pages the edits pinned are put where the latest edit
put them, and an automatic cluster mostly pinned to one edited cluster brings its other (new)
pages into it; edits that cannot be honoured in full are reported (``result.params["edits"]``, the
log), never dropped silently.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from docsort.config.settings import PipelineSettings
from docsort.core.clustering import ClusterResult, cluster_vectors, match_cluster_ids, predict_clusters
from docsort.core.features import FeatureExtractor
from docsort.core.invariance import stored_projection
from docsort.core.runtime import machine
from docsort.core.text import TextModel, cluster_keywords, keyword_name
from docsort.jobs.finetuning import type_after_ingest
from docsort.jobs.edits import honour_edits
from docsort.jobs.invariance import fit_invariance
from docsort.queries.vectors import _usable_texts, _vectors_of, _visual_vectors, fit_text_model_of, load_text_model, page_vectors
from docsort.store.manifest import library_versions, write_manifest
from docsort.store.models import load_model, model_path, save_model
from docsort.store.storage import Collection

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fit_text(
    collection: Collection, settings: PipelineSettings, *, persist: bool = True, log: Log = _stderr,
    texts: dict[int, str] | None = None, visual: np.ndarray | None = None,
) -> TextModel | None:
    """Fit the collection's text model on all usable OCR text (:func:`docsort.queries.vectors.fit_text_model_of`)
    and (with ``persist``) store it.

    ``persist`` needs the collection's write lock (:func:`cluster` holds it): the model is written
    atomically to ``text_model.joblib`` and described under ``"text"`` in the manifest (method,
    settings, pages it was fitted on, vocabulary size, explained variance, token, versions).

    ``texts`` (the usable texts) and ``visual`` (float32 (n, D), every stored vector) may be given by
    a caller that has already read them (:func:`cluster`).

    Returns:
        The model, or ``None`` when the collection has too little text (fewer than 3 pages with
        at least ``text.min_words`` OCR words); then fusion uses the visual vectors alone.

    Raises:
        TextModelError: a pretrained method (``minilm``, ``hub:``) cannot be loaded.
    """
    model = fit_text_model_of(collection, settings, log=log, texts=texts, visual=visual)
    if model is not None and persist:
        save_model(collection, "text", model)
        manifest = collection.manifest() or {}
        manifest["text"] = {**model.info, "settings": settings.text.model_dump(mode="json"), "dim": model.dim,
                            "pages_fitted": model.n_fitted, "token": model.token}
        write_manifest(collection, manifest)
    return model


def _name_clusters_by_keywords(collection: Collection, settings: PipelineSettings, ids: np.ndarray, labels: np.ndarray,
                               texts: dict[int, str]) -> dict[int, str]:
    """Default names from the clusters' OCR text (``texts``: the usable ones, c-TF-IDF); user-given
    names are kept."""
    if not texts:
        return {}
    words = cluster_keywords([texts.get(int(i), "") for i in ids], labels, top_n=settings.text.keywords)
    names = {cid: keyword_name(w) for cid, w in words.items()}
    collection.set_default_cluster_names(names)
    return names


def cluster(collection: Collection, settings: PipelineSettings, *, log: Log = _stderr, lock_timeout_s: float = 600.0,
            extractor: FeatureExtractor | None = None, progress: bool = True,
            on_step: Log | None = None) -> ClusterResult:
    """Run UMAP + HDBSCAN over every stored page and store labels, 2-D map and fitted models.
    ``on_step`` is told each UMAP run as it starts (:func:`~docsort.core.clustering.cluster_vectors`).

    First the scan-style-invariant projection is fitted when due (:func:`fit_invariance`, which
    re-reads a sample of pages and needs the extractor: ``extractor`` reuses a built one;
    ``progress`` shows its bar); the clustered vectors are the projected ones (fused with the
    text where there is text), and ``result.params["invariance_sha256"]`` says which projection.
    When the projection changed, a trained document-type classifier is retrained on the new
    vectors and every page re-predicted (:func:`docsort.jobs.finetuning.type_after_ingest`).

    Noise is reassigned by soft clustering when ``settings.hdbscan.reassign_noise_threshold > 0``
    (:func:`~docsort.core.clustering.reassign_noise`). Cluster ids are matched to the stored ones by
    member overlap (:func:`~docsort.core.clustering.match_cluster_ids`, Hungarian assignment), so ids
    and user-given names survive a re-clustering; provisional assignments are replaced. Then the hand
    edits' pinned assignments are applied (:func:`docsort.jobs.edits.honour_edits`); its
    :class:`~docsort.jobs.edits.EditsReport` is ``result.params["edits"]`` when there are edits. The models
    file is written before the database, both tagged with one ``models_token``, so a crash between
    the two leaves models that :func:`assign_provisional` refuses to use rather than misreads.
    With ``settings.ray.address``, UMAP + HDBSCAN are fitted on a seeded sample of
    ``ray.cluster_sample`` pages and the rest placed in Ray tasks
    (:func:`docsort.jobs.ray_cluster.cluster_on_ray`); ids are matched the same way.

    Returns:
        The :class:`~docsort.core.clustering.ClusterResult`, its ``labels`` the stored ids and
        ``label_map`` ``{HDBSCAN label: stored id}``.

    Raises:
        ClusteringError: too few pages; CollectionBusyError: another writer holds the lock.
    """
    import uuid


    with collection.write_lock(lock_timeout_s, on_wait=log):
        before = stored_projection(collection)
        inv = fit_invariance(collection, settings, extractor=extractor, progress=progress, log=log)
        projection = inv.projection if settings.invariance.enabled else None
        if (before.sha256 if before else None) != (projection.sha256 if projection else None):
            # The classifier's vectors changed: retrain it and re-predict (no-op without one).
            type_after_ingest(collection, settings, log=log)
        # Text model refitted on all OCR text so far; fused vectors when there is text (issue 6).
        # Vectors and texts are read once for the model, the fused vectors and the names.
        ids, visual = _visual_vectors(collection, settings, projection=projection)
        texts = _usable_texts(collection, settings)
        text_model = fit_text(collection, settings, log=log, texts=texts, visual=visual) if settings.text.fusion_weight > 0 else None
        if text_model is None:
            model_path(collection, "text").unlink(missing_ok=True)
        pv = _vectors_of(ids, visual, texts, settings, "fused", text_model)
        vecs = pv.vectors
        if settings.ray.address:  # issue 17: fitted on a seeded sample, the rest placed in Ray tasks
            from docsort.jobs.ray_cluster import cluster_on_ray

            result = cluster_on_ray(vecs, settings)
        else:
            result = cluster_vectors(vecs, settings.umap, settings.hdbscan, on_step=on_step)
        result.params.update(features=pv.mode, fusion_weight=pv.fusion_weight, pages_with_text=int(pv.has_text.sum()),
                             text_model_token=text_model.token if text_model else None,
                             text=settings.text.model_dump(mode="json"),
                             invariance_sha256=projection.sha256 if projection is not None else None,
                             invariance=inv.action)
        if pv.mode == "fused":
            log(f"clustering fused visual + text vectors ({int(pv.has_text.sum())} of {len(ids)} pages have OCR text, "
                f"text weight {pv.fusion_weight})")
        for note in result.notes:
            log(note)
        old_ids, old_clusters, _ = collection.cluster_assignments()
        old = np.full(len(ids), -2, np.int64)
        pos = np.searchsorted(ids, old_ids)
        known = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == old_ids)
        old[pos[known]] = old_clusters[known]
        result.labels, result.label_map = match_cluster_ids(old, result.labels, collection.next_cluster_id())
        # Hand edits (issue 18): the automatic clusters above, then the edits' pinned assignments in
        # edit order (docsort.jobs.edits, module docstring); what cannot be honoured is reported.
        result.labels, result.membership, result.probabilities, result.label_map, edits_report = honour_edits(
            collection, ids, result.labels, result.membership, result.probabilities, result.label_map)
        if edits_report.edits or edits_report.notes:
            result.params["edits"] = edits_report.as_dict()  # printed by `docsort cluster`, shown by the app
        token = uuid.uuid4().hex
        save_model(collection, "clustering", {"page_ids": ids, **result.models, "params": result.params,
                                              "label_map": result.label_map, "models_token": token})
        collection.store_clustering(ids, result.labels, result.probabilities, result.embedding_2d,
                                    {**result.params, "models_token": token}, result.seconds, membership=result.membership)
        result.names = _name_clusters_by_keywords(collection, settings, ids, result.labels, texts)
        manifest = collection.manifest() or {}
        manifest["clustering"] = {**result.params, "libraries": library_versions(), "machine": machine()}
        write_manifest(collection, manifest)
    return result


def assign_provisional(collection: Collection, *, log: Log = _stderr) -> int:
    """Give pages ingested since the last clustering a provisional cluster, without a re-fit.

    Loads the models of the last :func:`cluster` (``clustering.joblib``) and places every page
    that has no assignment with :func:`~docsort.core.clustering.predict_clusters` (stored UMAP
    ``transform`` + ``hdbscan.approximate_predict``, nearest-neighbour fallback; 2-D UMAP
    ``transform`` for the map); stored with membership ``provisional`` until the next
    :func:`cluster` replaces them. The caller must hold the collection's write lock
    (:func:`ingest` calls this at its end).

    Returns:
        The number of pages given a provisional assignment (noise included); 0 when the collection
        was never clustered, every page has an assignment, or the models file is missing,
        unreadable or not the one of the stored clustering (said in ``log``: run ``docsort
        cluster``).
    """

    pending = collection.unclustered_page_ids()
    run = collection.last_cluster_run()
    if len(pending) == 0 or run is None:
        return 0
    path = model_path(collection, "clustering")
    try:
        models = load_model(collection, "clustering")
    except Exception as exc:  # missing, truncated, or pickled by incompatible library versions
        log(f"{len(pending)} new pages not given a cluster: cannot read {path} ({exc}); run `docsort cluster`")
        return 0
    if models.get("models_token") != run["settings"].get("models_token"):
        log(f"{len(pending)} new pages not given a cluster: {path} is not the model of the stored clustering; run `docsort cluster`")
        return 0
    params = run["settings"]
    projection = stored_projection(collection)
    if (projection.sha256 if projection else None) != params.get("invariance_sha256"):
        log(f"{len(pending)} new pages not given a cluster: the invariance projection changed since the stored clustering; "
            "run `docsort cluster`")
        return 0
    if params.get("features", "visual") == "fused":
        text_model = load_text_model(collection)
        if text_model is None or text_model.token != params.get("text_model_token"):
            log(f"{len(pending)} new pages not given a cluster: the text model of the stored clustering is missing; run `docsort cluster`")
            return 0
        settings = PipelineSettings(text=params["text"])  # the text settings the clustering ran with
        pv = page_vectors(collection, settings, "fused", pending, text_model=text_model)
        page_ids, vecs = pv.ids, pv.vectors
    else:
        page_ids, vecs = _visual_vectors(collection, PipelineSettings(), pending, projection=projection)
    clusters, strengths, xy, _ = predict_clusters(models, vecs)
    return collection.store_provisional(page_ids, clusters, strengths, xy)
