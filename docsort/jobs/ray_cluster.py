"""``docsort cluster --ray``: UMAP + HDBSCAN fitted on a seeded sample, every other page placed in
parallel Ray tasks (issue 17).

UMAP's fit is the part that does not spread over machines (its nearest-neighbour graph and layout
optimisation run in one process; single-threaded with a fixed ``random_state``), and HDBSCAN's
fit needs all its points in one process too. Both are fitted on ``ray.cluster_sample`` pages drawn
uniformly with ``numpy.random.default_rng(umap.random_state)``
(:func:`docsort.core.distributed.seeded_sample`), by :func:`docsort.core.clustering.cluster_vectors`
exactly as in one process; every other page is then placed by
:func:`docsort.core.clustering.predict_clusters` (the stored UMAP ``transform``, then
``hdbscan.approximate_predict`` with its nearest-neighbour fallback: what ``docsort ingest`` does
for pages added after a clustering), in tasks of ``ray.transform_chunk`` pages spread over the
cluster. UMAP's docs ("Transforming New Data") and hdbscan's ("Predicting clusters for new
points") describe those two calls as the way to place points a fitted model has not seen.

The price of the sample: a document type becomes a cluster only with at least HDBSCAN's
``min_cluster_size`` pages in the sample (automatic: 154 at 50,000, i.e. ~0.31% of the collection).
Why 50,000 by default (the fit's time and memory against that price): README, "More than one
machine".
"""

from __future__ import annotations

import time

import numpy as np

from docsort.config.settings import PipelineSettings
from docsort.core.clustering import ClusterResult, cluster_vectors, predict_clusters
from docsort.core.distributed import connected, seeded_sample


def _place(models: dict, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A Ray task: :func:`predict_clusters` of one chunk of pages."""
    return predict_clusters(models, vectors)


def cluster_on_ray(vectors: np.ndarray, settings: PipelineSettings) -> ClusterResult:
    """Cluster ``vectors`` (float32 (n, D), unit norm) with the fit on a seeded sample and the rest
    placed on Ray.

    With ``n <= settings.ray.cluster_sample`` this is :func:`cluster_vectors` of all of them (no Ray
    needed). Otherwise the result's ``labels`` (HDBSCAN's labels, -1 noise), ``probabilities``,
    ``membership`` (``member``/``reassigned``/``noise`` for sampled pages as HDBSCAN gave them;
    ``member`` or ``noise`` for placed pages, by whether they were placed in a cluster) and
    ``embedding_2d`` cover all ``n`` pages in order; ``embedding`` holds the sample's UMAP
    coordinates and NaN for placed pages; ``models`` are the sample's (so later ingests place new
    pages the same way); ``params["ray"]`` records ``sample``, ``placed``, ``tasks``,
    ``placed_in_clusters`` and ``seed``.

    Raises:
        ClusteringError: too few pages; RayMissingError: Ray is not installed.
    """
    from docsort.core.distributed import require_ray

    require_ray()  # asked for Ray: say so even when the collection is small enough not to need it
    n = len(vectors)
    k = settings.ray.cluster_sample
    if n <= k:
        return cluster_vectors(vectors, settings.umap, settings.hdbscan)
    t0 = time.perf_counter()
    sample = seeded_sample(n, k, settings.umap.random_state)
    rest = np.setdiff1d(np.arange(n), sample)
    fit = cluster_vectors(vectors[sample], settings.umap, settings.hdbscan)
    chunk = settings.ray.transform_chunk
    parts = [rest[i:i + chunk] for i in range(0, len(rest), chunk)]
    with connected(settings.ray) as ray:
        models = ray.put(fit.models)
        place = ray.remote(num_cpus=settings.ray.render_cpus, max_retries=3)(_place)
        refs = [place.remote(models, np.ascontiguousarray(vectors[idx])) for idx in parts]
        placed = ray.get(refs)
    labels = np.empty(n, np.int64)
    probabilities = np.empty(n, np.float32)
    embedding_2d = np.empty((n, 2), np.float32)
    embedding = np.full((n, fit.embedding.shape[1]), np.nan, np.float32)
    membership = np.empty(n, "<U10")
    labels[sample], probabilities[sample], embedding_2d[sample], embedding[sample] = (
        fit.labels, fit.probabilities, fit.embedding_2d, fit.embedding)
    membership[sample] = fit.membership
    for idx, (lab, strength, xy, _how) in zip(parts, placed):
        labels[idx], probabilities[idx], embedding_2d[idx] = lab, strength, xy
        membership[idx] = np.where(lab >= 0, "member", "noise")
    params = {**fit.params, "ray": {"sample": int(k), "placed": int(len(rest)), "tasks": len(parts),
                                    "placed_in_clusters": int((labels[rest] >= 0).sum()),
                                    "seed": settings.umap.random_state}}
    return ClusterResult(labels=labels, probabilities=probabilities, embedding=embedding, embedding_2d=embedding_2d,
                         params=params, seconds=time.perf_counter() - t0, models=fit.models, membership=membership,
                         notes=fit.notes + [f"clustered a seeded sample of {k} of {n} pages; {len(rest)} placed "
                                            f"in {len(parts)} Ray tasks"])
