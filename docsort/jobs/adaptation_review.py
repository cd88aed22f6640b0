"""What the app's "Adapt to this collection" action needs around ``docsort adapt`` (issue 14, item 4):
an estimate of its time, measures of the clustering a user understands, and the job that adapts,
re-clusters and measures before and after.

* :func:`estimate_seconds`: pages x epochs x :data:`SECONDS_PER_PAGE_EPOCH` for training, plus
  re-embedding every page and re-clustering; the constants were measured on this project's
  2-core development machine (benchmarks/RESULTS.md, "Adapting the network (issue 14)").
* :func:`clustering_measures`: number of clusters, share of noise pages, and the mean
  neighbour agreement: for each clustered page, the share of its 5 nearest pages (cosine of the
  vectors search and clustering use) that are in its own cluster, averaged. A kNN-consistency
  measure of a clustering (cf. the "neighbourhood preservation" of embedding quality measures;
  here it says how often "similar documents" lands in the same pile).
* :func:`adapt_and_recluster`: refuses at once when another job holds the collection's write
  lock, else measures, runs :func:`docsort.jobs.adaptation.adapt`, then
  :func:`docsort.jobs.cluster.cluster`, and measures again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# docsort.store.storage first: it loads Python's sqlite3 (with FTS5) before TensorFlow.
from docsort.store.storage import Collection, CollectionBusyError  # noqa: I001

__all__ = ["SECONDS_PER_PAGE_EPOCH", "SECONDS_PER_PAGE_EMBED", "NEIGHBOURS", "ClusteringMeasures", "AdaptOutcome",
           "estimate_seconds", "clustering_measures", "collection_busy", "adapt_and_recluster"]

#: Training time of ``docsort adapt`` per page and epoch at a 299x299 input, ``--layers mixed1``,
#: batch 16 (two augmented views per page), seconds: 0.140 measured on the 2-core development
#: machine (32 sample_docs pages, 2 epochs, load average 3.8; benchmarks/RESULTS.md).
SECONDS_PER_PAGE_EPOCH = 0.14

#: Re-embedding time per page at 299x299, seconds: re-reading and rendering the file (~0.07 s a
#: scanned PDF page with pdf2image, /work/shared/README.md) plus the forward pass (0.012 s measured
#: with the training figure above).
SECONDS_PER_PAGE_EMBED = 0.08

#: Neighbours per page of the neighbour agreement.
NEIGHBOURS = 5

#: At most this many pages are queried for the neighbour agreement (a seeded draw; all pages are
#: candidates), so the measure costs one (2000, N) product at most.
MAX_QUERIES = 2000


@dataclass(frozen=True)
class ClusteringMeasures:
    """How a collection's last clustering looks, in terms a user reads.

    Attributes:
        clusters: number of clusters (noise excluded).
        noise_share: share of the clustered pages left as noise (0..1).
        neighbour_agreement: mean share of a clustered page's :data:`NEIGHBOURS` nearest pages
            that are in its cluster (0..1); ``None`` with too few pages.
        pages: pages in the clustering.
    """

    clusters: int
    noise_share: float
    neighbour_agreement: float | None
    pages: int


@dataclass
class AdaptOutcome:
    """What :func:`adapt_and_recluster` did: measures ``before`` (``None`` when the collection
    was never clustered) and ``after``, the :class:`docsort.jobs.adaptation.AdaptReport`, the
    clustering result and the wall time in seconds."""

    before: ClusteringMeasures | None
    after: ClusteringMeasures
    adapt: object
    cluster: object
    seconds: float


def estimate_seconds(pages: int, epochs: int, *, input_size=(299, 299), sample_pages: int = 2000,
                     minutes: float | None = None, cluster_seconds: float | None = None) -> float:
    """Expected wall time of adapting and re-clustering a collection, seconds.

    ``min(pages, sample_pages) x epochs x SECONDS_PER_PAGE_EPOCH`` (capped at ``minutes``) plus
    ``pages x SECONDS_PER_PAGE_EMBED``, both scaled by the input area relative to 299 x 299 (the
    network's cost grows with it), plus ``cluster_seconds`` (the last clustering run's time, scaled
    by the caller; 30 s when unknown).

    Args:
        pages: pages in the collection; epochs: training epochs (>= 1).
        input_size: network input (height, width), pixels.
        sample_pages: ``docsort adapt``'s cap on pages trained on.
        minutes: the training time budget, if any.
        cluster_seconds: expected clustering time, seconds.
    """
    area = float(input_size[0] * input_size[1]) / (299.0 * 299.0)
    train = min(pages, sample_pages) * max(1, epochs) * SECONDS_PER_PAGE_EPOCH * area
    if minutes is not None:
        train = min(train, 60.0 * minutes)
    return train + pages * SECONDS_PER_PAGE_EMBED * area + (30.0 if cluster_seconds is None else float(cluster_seconds))


def clustering_measures(collection: Collection, *, seed: int = 0) -> ClusteringMeasures | None:
    """:class:`ClusteringMeasures` of the collection's last clustering, ``None`` when it has none.

    The neighbours are found among every clustered page by the cosine of the vectors search and
    the classifier use (stored vectors through the active invariance projection,
    :func:`docsort.jobs.classify._vectors`); L2-normalised here.
    """
    from docsort.jobs.classify import _unit, _vectors

    table = collection.page_table()
    clustered = table[table["cluster"].notna()]
    if clustered.empty:
        return None
    ids = clustered["page_id"].astype(np.int64).to_numpy()
    labels = clustered["cluster"].astype(np.int64).to_numpy()
    noise = float(np.mean(labels < 0))
    n_clusters = int(len(np.unique(labels[labels >= 0])))
    agreement = None
    members = np.flatnonzero(labels >= 0)
    if len(ids) > NEIGHBOURS and len(members):
        got, X = _vectors(collection, ids.tolist())[:2]
        order = {int(p): i for i, p in enumerate(got)}
        X = _unit(np.asarray(X, np.float32))[[order[int(p)] for p in ids]]
        if len(members) > MAX_QUERIES:
            members = np.sort(np.random.default_rng(seed).choice(members, MAX_QUERIES, replace=False))
        shares = []
        for s in range(0, len(members), 256):
            q = members[s:s + 256]
            S = X[q] @ X.T
            S[np.arange(len(q)), q] = -np.inf  # not its own neighbour
            nn = np.argpartition(-S, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
            shares.append(np.mean(labels[nn] == labels[q][:, None], axis=1))
        agreement = float(np.mean(np.concatenate(shares)))
    return ClusteringMeasures(n_clusters, noise, agreement, int(len(ids)))


def collection_busy(collection: Collection) -> bool:
    """Whether another job holds the collection's write lock right now (tries it without waiting)."""
    try:
        with collection.write_lock(0):
            return False
    except CollectionBusyError:
        return True


def adapt_and_recluster(
    collection: Collection,
    settings,
    *,
    epochs: int = 5,
    minutes: float | None = None,
    layers: str = "mixed1",
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
) -> AdaptOutcome:
    """Adapt the network to the collection (``docsort adapt``), re-cluster, and measure both sides.

    Args:
        collection: a collection with at least :data:`docsort.core.clustering.MIN_PAGES` pages.
        settings: its effective settings (:func:`docsort.store.manifest.effective_settings`); the
            re-clustering re-reads them from the adapted manifest.
        epochs, minutes, layers, seed: see :func:`docsort.jobs.adaptation.adapt`.
        log: where the jobs' one-line notices go.

    Returns:
        An :class:`AdaptOutcome`.

    Raises:
        CollectionBusyError: another job holds the write lock (checked before anything runs).
        AdaptError, ClusteringError, CollectionError, WeightsError: from the jobs.
    """
    import time

    from docsort.jobs.adaptation import adapt
    from docsort.jobs.cluster import cluster
    from docsort.store.manifest import effective_settings

    if collection_busy(collection):
        raise CollectionBusyError(f"collection {collection.root} is busy: another docsort job is writing to it; "
                                  "try again when it has finished")
    t0 = time.perf_counter()
    before = clustering_measures(collection)
    report = adapt(collection, settings, epochs=epochs, minutes=minutes, layers=layers, seed=seed, progress=False,
                   log=log, lock_timeout_s=5.0)
    adapted = effective_settings(collection, settings)
    result = cluster(collection, adapted, log=log, progress=False, lock_timeout_s=30.0)
    after = clustering_measures(collection)
    return AdaptOutcome(before, after, report, result, time.perf_counter() - t0)
