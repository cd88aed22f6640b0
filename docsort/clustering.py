"""The *clusters* stage: UMAP to a few dimensions, then HDBSCAN.

HDBSCAN on the raw 288-d vectors is slow and finds little (measured here: 151 s and 0 clusters on
20k points); the UMAP docs ("Using UMAP for Clustering") show UMAP first lifting the share of
clustered MNIST points from 17% to 99%. So vectors are reduced with UMAP (cosine metric, fixed
``random_state`` for reproducibility, which also makes UMAP single-threaded) to
``n_components`` dimensions, clustered with HDBSCAN (``prediction_data=True`` so new pages can later
be placed with ``hdbscan.approximate_predict``), and separately embedded in 2-D for the map.

Noise (label -1) is kept and counted, never hidden.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .settings import HdbscanSettings, UmapSettings

__all__ = ["ClusteringError", "ClusterResult", "auto_min_cluster_size", "cluster_vectors", "document_clusters"]

#: Fewer pages than this cannot be clustered meaningfully.
MIN_PAGES = 5


class ClusteringError(RuntimeError):
    """The collection cannot be clustered (too few pages)."""


@dataclass
class ClusterResult:
    """Output of :func:`cluster_vectors`.

    Attributes:
        labels: int64 (n,), cluster per page, -1 = noise.
        probabilities: float32 (n,), HDBSCAN membership strength in [0, 1] (0 for noise).
        embedding: float32 (n, n_components), the UMAP embedding HDBSCAN clustered.
        embedding_2d: float32 (n, 2), the UMAP map coordinates.
        params: the parameters actually used (after automatic choices and clamping).
        seconds: wall time, seconds.
        models: the fitted ``umap.UMAP`` (n_components), ``umap.UMAP`` (2-D) and
            ``hdbscan.HDBSCAN`` objects, for ``transform`` / ``approximate_predict`` later.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    embedding: np.ndarray
    embedding_2d: np.ndarray
    params: dict
    seconds: float
    models: dict = field(default_factory=dict, repr=False)

    @property
    def n_clusters(self) -> int:
        return len(set(self.labels.tolist()) - {-1})

    @property
    def n_noise(self) -> int:
        return int((self.labels < 0).sum())


def auto_min_cluster_size(n_pages: int) -> int:
    """``max(3, round(sqrt(n_pages) / 2))``: 3 at 36 pages, 16 at 1,000, 71 at 20,000.

    A heuristic (HDBSCAN's docs leave the choice to the user); issue #5 measures it.
    """
    return max(3, int(round(math.sqrt(max(n_pages, 1)) / 2)))


def cluster_vectors(vectors: np.ndarray, umap_settings: UmapSettings, hdbscan_settings: HdbscanSettings) -> ClusterResult:
    """Cluster unit-norm page vectors with UMAP + HDBSCAN.

    Args:
        vectors: float32 (n, D), n >= :data:`MIN_PAGES`.
        umap_settings, hdbscan_settings: parameters; ``0`` for HDBSCAN sizes means automatic.

    Returns:
        A :class:`ClusterResult`. Same vectors and settings give the same labels and coordinates
        (UMAP ``random_state`` fixed; HDBSCAN is deterministic).

    Raises:
        ClusteringError: fewer than :data:`MIN_PAGES` vectors.
    """
    import hdbscan
    import umap

    n = len(vectors)
    if n < MIN_PAGES:
        raise ClusteringError(f"{n} pages are too few to cluster (need at least {MIN_PAGES})")
    t0 = time.perf_counter()
    n_neighbors = min(umap_settings.n_neighbors, n - 1)
    # UMAP's spectral initialisation needs n_components < n - 1.
    n_components = min(umap_settings.n_components, n - 2)
    common = dict(n_neighbors=n_neighbors, metric=umap_settings.metric, random_state=umap_settings.random_state)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value 1 overridden.*")
        warnings.filterwarnings("ignore", message=".*k >= N - 1.*")
        reducer = umap.UMAP(n_components=n_components, min_dist=umap_settings.min_dist, **common)
        embedding = reducer.fit_transform(vectors).astype(np.float32)
        mapper = umap.UMAP(n_components=2, min_dist=umap_settings.map_min_dist, **common)
        embedding_2d = mapper.fit_transform(vectors).astype(np.float32)
    mcs = hdbscan_settings.min_cluster_size or auto_min_cluster_size(n)
    ms = hdbscan_settings.min_samples or max(1, mcs // 2)
    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=mcs,
        min_samples=ms,
        cluster_selection_method=hdbscan_settings.cluster_selection_method,
        cluster_selection_epsilon=hdbscan_settings.cluster_selection_epsilon,
        prediction_data=True,
    )
    labels = clusterer.fit_predict(embedding).astype(np.int64)
    params = {
        "umap": {**umap_settings.model_dump(), "n_neighbors": n_neighbors, "n_components": n_components},
        "hdbscan": {**hdbscan_settings.model_dump(), "min_cluster_size": mcs, "min_samples": ms},
    }
    return ClusterResult(
        labels=labels,
        probabilities=np.asarray(clusterer.probabilities_, np.float32),
        embedding=embedding,
        embedding_2d=embedding_2d,
        params=params,
        seconds=time.perf_counter() - t0,
        models={"umap": reducer, "umap_2d": mapper, "hdbscan": clusterer},
    )


def document_clusters(document_ids: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Document-level cluster: the majority label of its pages.

    Ties go to a real cluster over noise, then to the smaller cluster id.

    Args:
        document_ids: int (n,), the document of each page; labels: int (n,), page clusters.

    Returns:
        ``{document_id: cluster}``.
    """
    out: dict[int, int] = {}
    for doc in np.unique(document_ids):
        labs, counts = np.unique(labels[document_ids == doc], return_counts=True)
        order = sorted(zip(counts.tolist(), labs.tolist()), key=lambda t: (-t[0], t[1] < 0, t[1]))
        out[int(doc)] = int(order[0][1])
    return out
