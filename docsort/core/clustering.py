"""The *clusters* stage: UMAP to a few dimensions, then HDBSCAN; soft reassignment of noise,
provisional placement of new pages, and cluster ids that stay stable across re-clustering.

HDBSCAN on the raw 288-d vectors is slow and finds little (measured here: 151 s and 0 clusters on
20k points); the UMAP docs ("Using UMAP for Clustering") show UMAP first lifting the share of
clustered MNIST points from 17% to 99%. So vectors are reduced with UMAP (cosine metric, fixed
``random_state`` for reproducibility, which also makes UMAP single-threaded) to
``n_components`` dimensions, clustered with HDBSCAN (``prediction_data=True`` so new pages can later
be placed with ``hdbscan.approximate_predict``), and separately embedded in 2-D for the map.

Every page gets a *membership*:

* ``member``: HDBSCAN put it in a cluster (a confident member);
* ``noise``: HDBSCAN left it out (label -1), kept and counted, never hidden;
* ``reassigned``: HDBSCAN called it noise, but its soft-clustering membership
  (``hdbscan.all_points_membership_vectors``, the hdbscan docs' "Soft Clustering for HDBSCAN*")
  for one cluster reached ``HdbscanSettings.reassign_noise_threshold`` (off by default; see
  :func:`reassign_noise`), so it was given that cluster;
* ``provisional``: a page ingested after the last clustering, placed by the stored models without
  a re-fit (:func:`predict_clusters`); the next full clustering replaces it.

Cluster ids survive re-clustering: :func:`match_cluster_ids` maps the new clusters to the previous
ids by member overlap (Hungarian assignment), so names given by users follow their clusters.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from docsort.config.settings import HdbscanSettings, UmapSettings

__all__ = [
    "ClusteringError",
    "ClusterResult",
    "MEMBERSHIPS",
    "auto_min_cluster_size",
    "cluster_vectors",
    "cluster_embedding",
    "co_association",
    "consensus_labels",
    "consensus_seeds",
    "reassign_noise",
    "match_cluster_ids",
    "predict_clusters",
    "document_clusters",
]

#: Fewer pages than this cannot be clustered meaningfully.
MIN_PAGES = 5

#: Consensus clusters whose pages were put together by more than this share of the runs, on
#: average over their pairs of pages, are merged (Fred & Jain's (2005) majority vote). HDBSCAN on
#: 1 - co-association alone keeps every group that all runs agree on as a cluster of its own
#: (distance 0 inside it), so one dissenting run splits a cluster (tests/test_clustering.py builds
#: the case). HDBSCAN's own ``cluster_selection_epsilon = 0.5`` does not do this: it replaces a
#: cluster born below epsilon by its first ancestor born above it, which merged 40 groups of 250
#: points (10 % of each run's labels scrambled) into 31 clusters, one of 19 groups (ARI 0.55).
CONSENSUS_MAJORITY = 0.5

#: The values of a page's membership (see the module docstring).
MEMBERSHIPS = ("member", "reassigned", "noise", "provisional")


class ClusteringError(RuntimeError):
    """The collection cannot be clustered (too few pages)."""


@dataclass
class ClusterResult:
    """Output of :func:`cluster_vectors`.

    Attributes:
        labels: int64 (n,), cluster per page, -1 = noise, after soft reassignment. HDBSCAN's own
            labels (0..k-1) from :func:`cluster_vectors`; :func:`docsort.jobs.cluster.cluster` replaces
            them with the stored, stable ids (:func:`match_cluster_ids`).
        probabilities: float32 (n,) in [0, 1]: HDBSCAN's membership strength (``probabilities_``,
            0 for noise) for members, the soft-clustering membership for reassigned pages.
        membership: str (n,), ``"member"``, ``"reassigned"`` or ``"noise"`` per page.
        embedding: float32 (n, n_components), the UMAP embedding HDBSCAN clustered.
        embedding_2d: float32 (n, 2), the UMAP map coordinates.
        params: the parameters actually used (after automatic choices and clamping).
        seconds: wall time, seconds.
        models: the fitted ``umap.UMAP`` (n_components), ``umap.UMAP`` (2-D) and
            ``hdbscan.HDBSCAN`` objects, for ``transform`` / ``approximate_predict`` later; after a
            consensus, ``hdbscan`` is ``None`` and ``consensus`` holds the labels and ``k`` (the seeds
            are in ``params["umap"]["consensus_seeds"]``).
        notes: things the caller should tell the user (e.g. soft reassignment skipped).
        label_map: ``{HDBSCAN label: stored id}`` once ids are matched (empty before).
        names: ``{stored id: default name}`` from the clusters' OCR keywords, set by
            :func:`docsort.jobs.cluster.cluster` (empty without OCR text).
    """

    labels: np.ndarray
    probabilities: np.ndarray
    embedding: np.ndarray
    embedding_2d: np.ndarray
    params: dict
    seconds: float
    models: dict = field(default_factory=dict, repr=False)
    membership: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    label_map: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.membership is None:
            self.membership = np.where(np.asarray(self.labels) < 0, "noise", "member")

    @property
    def n_clusters(self) -> int:
        """Number of clusters (noise excluded)."""
        return len(set(self.labels.tolist()) - {-1})

    @property
    def n_noise(self) -> int:
        """Pages left as noise after soft reassignment."""
        return int((self.labels < 0).sum())

    @property
    def n_reassigned(self) -> int:
        """Pages HDBSCAN called noise that soft clustering gave a cluster."""
        return int((self.membership == "reassigned").sum())

    @property
    def n_members(self) -> int:
        """Confident members: pages HDBSCAN itself put in a cluster."""
        return int((self.membership == "member").sum())


def auto_min_cluster_size(n_pages: int, divisor: float = HdbscanSettings.model_fields["min_cluster_size_divisor"].default) -> int:
    """``max(3, round(sqrt(n_pages) / divisor))``: with the default 1.45, 4 at 41 pages, 10 at
    200, 22 at 1,000, 98 at 20,000 (``HdbscanSettings.min_cluster_size_divisor``).

    A heuristic (HDBSCAN's docs leave the choice to the user); issues #5 and #13 measure it
    (benchmarks/RESULTS.md).

    Raises:
        ValueError: ``divisor <= 0``.
    """
    if divisor <= 0:
        raise ValueError(f"min_cluster_size divisor must be > 0, not {divisor}")
    return max(3, int(round(math.sqrt(max(n_pages, 1)) / divisor)))


def consensus_seeds(random_state: int, runs: int) -> list[int]:
    """The UMAP seeds of a consensus of ``runs`` runs: ``random_state`` first (so run 0 is the
    single-run clustering's UMAP), then ``runs - 1`` seeds drawn by ``numpy.random.SeedSequence``
    from ``random_state``, so the runs of two different ``random_state`` values share no seed
    (``random_state + r`` would make seeds 0 and 1 share four of five runs, and look more stable
    than they are).

    Returns:
        ``runs`` ints in [0, 2**31).
    """
    extra = np.random.SeedSequence(int(random_state)).generate_state(max(runs - 1, 0), np.uint32)
    return [int(random_state)] + [int(x) >> 1 for x in extra]


def co_association(labelings: list[np.ndarray]) -> np.ndarray:
    """The co-association matrix of several clusterings of the same points (Fred & Jain 2005).

    Args:
        labelings: R int (n,) label arrays, -1 = noise.

    Returns:
        float64 (n, n): the share of the R clusterings that put points i and j in one cluster
        (noise is in no cluster), 1 on the diagonal.

    Raises:
        ValueError: no labelings, or labelings of different lengths.
    """
    if not labelings:
        raise ValueError("no labelings to combine")
    n = len(labelings[0])
    if any(len(lab) != n for lab in labelings):
        raise ValueError("labelings of different lengths")
    counts = np.zeros((n, n), np.uint8)
    for lab in labelings:
        lab = np.asarray(lab, np.int64)
        counts += (lab[:, None] == lab[None, :]) & (lab >= 0)[:, None]
    out = counts / np.float64(len(labelings))
    np.fill_diagonal(out, 1.0)
    return out


def consensus_labels(labelings: list[np.ndarray], min_cluster_size: int, min_samples: int,
                     cluster_selection_method: str = "eom") -> tuple[np.ndarray, np.ndarray]:
    """One clustering from several: HDBSCAN on ``1 - co_association(labelings)`` (evidence
    accumulation, Fred & Jain 2005, with HDBSCAN in place of single linkage; ``metric="precomputed"``,
    hdbscan docs, "Basic usage"), then clusters merged that more than half of the runs put
    together (:data:`CONSENSUS_MAJORITY`). Points that most runs put together end up together;
    points that the runs disagree on, or call noise, end up as noise. Deterministic. Memory:
    two float64 ``n x n`` matrices (1.5 GiB at 10,000 points; 12 s there on this project's 2-core
    machine).

    Args:
        labelings: R int (n,) label arrays, -1 = noise.
        min_cluster_size, min_samples, cluster_selection_method: HDBSCAN's, as for one run.

    Returns:
        ``(labels, probabilities)``: int64 (n,) (-1 = noise, clusters 0..k-1) and float32 (n,),
        HDBSCAN's membership strengths.

    Raises:
        ValueError: as :func:`co_association`.
    """
    import hdbscan

    together = co_association(labelings)
    clusterer = hdbscan.HDBSCAN(metric="precomputed", min_cluster_size=int(min_cluster_size), min_samples=int(min_samples),
                                cluster_selection_method=cluster_selection_method)
    labels = clusterer.fit_predict(1.0 - together).astype(np.int64)
    labels = _merge_by_majority(labels, together)
    return labels, np.asarray(clusterer.probabilities_, np.float32)


def _merge_by_majority(labels: np.ndarray, together: np.ndarray) -> np.ndarray:
    """``labels`` with clusters merged whose mean co-association exceeds :data:`CONSENSUS_MAJORITY`
    (transitively), renumbered 0..k-1 in order of first appearance; noise stays -1."""
    k = int(labels.max()) + 1
    if k < 2:
        return labels
    from scipy.sparse.csgraph import connected_components

    onehot = np.zeros((len(labels), k))
    member = labels >= 0
    onehot[np.flatnonzero(member), labels[member]] = 1.0
    sizes = onehot.sum(axis=0)
    mean = (onehot.T @ together @ onehot) / np.outer(sizes, sizes)
    _, merged = connected_components(mean > CONSENSUS_MAJORITY, directed=False)
    out = np.where(member, merged[np.maximum(labels, 0)], -1)
    order = {c: i for i, c in enumerate(dict.fromkeys(out[out >= 0].tolist()))}
    return np.array([order.get(int(c), -1) for c in out], np.int64)


def cluster_vectors(vectors: np.ndarray, umap_settings: UmapSettings, hdbscan_settings: HdbscanSettings,
                    on_step: Callable[[str], None] | None = None) -> ClusterResult:
    """Cluster unit-norm page vectors with UMAP + HDBSCAN, then (optionally) reassign noise.

    With ``umap_settings.consensus_runs = R > 1`` (and at most ``consensus_max_pages`` pages),
    R UMAP + HDBSCAN runs (seeds :func:`consensus_seeds`) are combined by
    :func:`consensus_labels`; the stored UMAP model and ``embedding`` are run 0's, and new pages
    are later placed by their neighbours among run 0's points (:func:`predict_clusters`). A
    consensus has no soft clustering, so with ``reassign_noise_threshold > 0`` one run is made
    (a note says so), as above ``consensus_max_pages``.

    Args:
        vectors: float32 (n, D), n >= :data:`MIN_PAGES`.
        umap_settings, hdbscan_settings: parameters; ``0`` for HDBSCAN sizes means automatic;
            ``hdbscan_settings.reassign_noise_threshold > 0`` turns on :func:`reassign_noise`.
        on_step: called with what starts next (``"UMAP run 2 of 9"``, ``"the 2-D map"``,
            ``"combining 9 runs"``), e.g. to update a spinner; a consensus of 10,000 pages takes
            minutes.

    Returns:
        A :class:`ClusterResult`. Same vectors (same order) and settings give the same labels,
        memberships and coordinates: UMAP's ``random_state`` is fixed, which also makes it run
        single-threaded (umap-learn docs, "Reproducibility"); HDBSCAN and the soft clustering are
        deterministic. ``params["umap"]["consensus_runs_used"]`` is the number of runs made.

    Raises:
        ClusteringError: fewer than :data:`MIN_PAGES` vectors.
    """
    from docsort.core.runtime import quiet_native_stderr

    with quiet_native_stderr():  # umap-learn imports TensorFlow (parametric UMAP) when it is installed
        import umap

    n = len(vectors)
    if n < MIN_PAGES:
        raise ClusteringError(f"{n} pages are too few to cluster (need at least {MIN_PAGES})")
    t0 = time.perf_counter()
    n_neighbors = min(umap_settings.n_neighbors, n - 1)
    # UMAP's spectral initialisation needs n_components < n - 1.
    n_components = min(umap_settings.n_components, n - 2)
    runs = umap_settings.consensus_runs
    notes = []
    if runs > 1 and n > umap_settings.consensus_max_pages:
        notes.append(f"one UMAP run, not a consensus of {runs}: {n} pages are more than consensus_max_pages "
                     f"({umap_settings.consensus_max_pages}; the consensus's two n x n matrices would take {16 * n * n / 2**30:.1f} GiB)")
        runs = 1
    if runs > 1 and hdbscan_settings.reassign_noise_threshold > 0:
        notes.append(f"one UMAP run, not a consensus of {runs}: reassigning noise (reassign_noise_threshold "
                     f"{hdbscan_settings.reassign_noise_threshold:g}) needs one run's soft clustering")
        runs = 1
    seeds = consensus_seeds(umap_settings.random_state, runs)
    common = dict(n_neighbors=n_neighbors, metric=umap_settings.metric)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value 1 overridden.*")
        warnings.filterwarnings("ignore", message=".*k >= N - 1.*")
        reducer, embeddings = None, []  # run 0's reducer is kept (for transform), the others' embeddings only
        step = on_step or (lambda text: None)
        for r, seed in enumerate(seeds, 1):
            step(f"UMAP run {r} of {runs}")
            fitted = umap.UMAP(n_components=n_components, min_dist=umap_settings.min_dist, random_state=seed, **common)
            embeddings.append(fitted.fit_transform(vectors).astype(np.float32))
            if reducer is None:
                reducer = fitted
        step("the 2-D map")
        mapper = umap.UMAP(n_components=2, min_dist=umap_settings.map_min_dist, random_state=umap_settings.random_state, **common)
        embedding_2d = mapper.fit_transform(vectors).astype(np.float32)
    if runs == 1:
        result = cluster_embedding(embeddings[0], hdbscan_settings)
    else:
        step(f"combining {runs} runs")
        # Each run's labels only: a consensus keeps no run's condensed tree, so no prediction data.
        parts = [cluster_embedding(e, hdbscan_settings, prediction_data=False) for e in embeddings]
        hp = parts[0].params["hdbscan"]
        labels, probabilities = consensus_labels([p.labels for p in parts], hp["min_cluster_size"], hp["min_samples"],
                                                 hdbscan_settings.cluster_selection_method)
        result = ClusterResult(labels=labels, probabilities=probabilities, embedding=embeddings[0],
                               embedding_2d=embedding_2d, params={"hdbscan": hp}, seconds=0.0,
                               models={"hdbscan": None, "consensus": {"labels": labels, "k": int(hp["min_cluster_size"])}})
    result.embedding_2d = embedding_2d
    result.notes = notes + result.notes
    result.params = {"umap": {**umap_settings.model_dump(), "n_neighbors": n_neighbors, "n_components": n_components,
                              "consensus_runs_used": runs, **({"consensus_seeds": seeds} if runs > 1 else {})},
                     **result.params}
    # "dim": the input dimension, checked by predict_clusters (UMAP keeps it only in private state).
    result.models = {"umap": reducer, "umap_2d": mapper, **result.models, "dim": int(vectors.shape[1])}
    result.seconds = time.perf_counter() - t0
    return result


def cluster_embedding(embedding: np.ndarray, hdbscan_settings: HdbscanSettings, prediction_data: bool = True) -> ClusterResult:
    """HDBSCAN (and, when asked, soft reassignment of noise) on an embedding already made.

    The second half of :func:`cluster_vectors`, apart so that it can be given any embedding: UMAP's
    output, or in tests a fixed one whose clusters and outliers are known by construction (UMAP
    is reproducible on one machine, not across CPUs; HDBSCAN on a given embedding is deterministic).

    Args:
        embedding: float (n, d) points, n >= :data:`MIN_PAGES` (d = UMAP ``n_components``).
        hdbscan_settings: ``min_cluster_size`` / ``min_samples`` 0 = automatic (see
            :class:`~docsort.config.settings.HdbscanSettings`); ``reassign_noise_threshold > 0`` turns on
            :func:`reassign_noise`.
        prediction_data: keep HDBSCAN's prediction data (``approximate_predict`` of new pages and
            the soft clustering of :func:`reassign_noise` need it; the labels are the same
            without). ``False`` also turns noise reassignment off.

    Returns:
        A :class:`ClusterResult` whose ``embedding`` is the input (float32), ``embedding_2d`` empty
        (n, 0) until :func:`cluster_vectors` sets it, ``models`` ``{"hdbscan": clusterer}`` and
        ``params`` ``{"hdbscan": ...}`` with the sizes actually used.

    Raises:
        ClusteringError: fewer than :data:`MIN_PAGES` points.
    """
    import hdbscan

    embedding = np.asarray(embedding, np.float32)
    n = len(embedding)
    if n < MIN_PAGES:
        raise ClusteringError(f"{n} pages are too few to cluster (need at least {MIN_PAGES})")
    t0 = time.perf_counter()
    mcs = hdbscan_settings.min_cluster_size or auto_min_cluster_size(n, hdbscan_settings.min_cluster_size_divisor)
    ms = hdbscan_settings.min_samples or max(1, mcs // hdbscan_settings.min_samples_divisor)
    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=mcs,
        min_samples=ms,
        cluster_selection_method=hdbscan_settings.cluster_selection_method,
        cluster_selection_epsilon=hdbscan_settings.cluster_selection_epsilon,
        prediction_data=prediction_data,
    )
    labels = clusterer.fit_predict(embedding).astype(np.int64)
    probabilities = np.asarray(clusterer.probabilities_, np.float32)
    membership = np.where(labels < 0, "noise", "member")
    notes: list[str] = []
    threshold = hdbscan_settings.reassign_noise_threshold
    if prediction_data and threshold > 0 and (labels < 0).any():
        try:
            labels, membership, probabilities = reassign_noise(clusterer, labels, probabilities, threshold)
        except ClusteringError as exc:
            notes.append(f"noise not reassigned: {exc}")
    return ClusterResult(
        labels=labels,
        probabilities=probabilities,
        embedding=embedding,
        embedding_2d=np.zeros((n, 0), np.float32),
        params={"hdbscan": {**hdbscan_settings.model_dump(), "min_cluster_size": mcs, "min_samples": ms}},
        seconds=time.perf_counter() - t0,
        models={"hdbscan": clusterer},
        membership=membership,
        notes=notes,
    )


def reassign_noise(
    clusterer, labels: np.ndarray, probabilities: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Give HDBSCAN's noise pages the cluster their soft-clustering membership favours.

    Soft clustering (hdbscan docs, "Soft Clustering for HDBSCAN*";
    ``hdbscan.all_points_membership_vectors``) gives every point a vector of membership
    probabilities, one per cluster, combining its distance to each cluster's exemplars with how
    long it stays in each cluster's branch of the condensed tree, scaled by the probability that
    it belongs to any cluster at all (so a row sums to at most 1). A noise point whose largest
    entry is ``>= threshold`` is reassigned to that cluster, as BERTopic's
    ``reduce_outliers(strategy="probabilities")`` does for topics; confident members are never
    changed. Measured on sample_docs (issue #5), reassignment mostly moved noise pages into
    clusters of another kind, so :class:`~docsort.config.settings.HdbscanSettings` keeps it off by default.

    Args:
        clusterer: a fitted ``hdbscan.HDBSCAN`` with ``prediction_data=True``.
        labels: int (n,), HDBSCAN's labels (-1 noise), in the clusterer's training order.
        probabilities: float (n,), HDBSCAN's membership strengths.
        threshold: in (0, 1]; the smallest soft membership that reassigns a noise point.

    Returns:
        ``(labels, membership, probabilities)``: int64 (n,) with reassigned points labelled;
        str (n,) ``"member"`` / ``"reassigned"`` / ``"noise"``; float32 (n,) with the soft
        membership of the chosen cluster for reassigned points (others unchanged).

    Raises:
        ClusteringError: the membership vectors do not line up with the labels (hdbscan ignores
            ``cluster_selection_epsilon`` in soft clustering, scikit-learn-contrib/hdbscan#446).
    """
    import hdbscan

    labels = np.asarray(labels, np.int64).copy()
    probabilities = np.asarray(probabilities, np.float32).copy()
    membership = np.where(labels < 0, "noise", "member").astype("<U11")
    k = int(labels.max()) + 1
    if k <= 0:
        return labels, membership, probabilities
    soft = np.asarray(hdbscan.all_points_membership_vectors(clusterer), np.float64)
    if soft.ndim != 2 or soft.shape != (len(labels), k):
        raise ClusteringError(
            f"soft membership vectors have shape {soft.shape}, expected ({len(labels)}, {k}) "
            "(hdbscan issue #446: soft clustering ignores cluster_selection_epsilon)"
        )
    best = soft.argmax(axis=1)
    strength = soft[np.arange(len(labels)), best]
    move = (labels < 0) & (strength >= threshold)
    labels[move] = best[move]
    membership[move] = "reassigned"
    probabilities[move] = strength[move].astype(np.float32)
    return labels, membership, probabilities


def match_cluster_ids(old: np.ndarray, new: np.ndarray, next_id: int) -> tuple[np.ndarray, dict[int, int]]:
    """Give the clusters of a new clustering the ids of the previous one they overlap most.

    An overlap matrix counts, for every (new cluster, old cluster) pair, the pages in both. The
    Hungarian method (Kuhn 1955, "The Hungarian method for the assignment problem", Naval Research
    Logistics Quarterly 2:83-97; ``scipy.optimize.linear_sum_assignment``) pairs new with old
    clusters one-to-one so that the total overlap is largest. A pair is kept only when its overlap
    is more than half of the old cluster's pages or more than half of the new cluster's previously
    assigned pages (old noise included), so a new cluster that merely brushes an old one does not
    inherit its id (or its user-given name). New clusters left unpaired get fresh ids
    ``next_id, next_id + 1, ...`` in the order of their HDBSCAN labels; ids of old clusters left
    unpaired are retired, never reused.

    Args:
        old: int (n,), the previous stored id of each page: >= 0 a cluster, -1 noise, -2 (or any
            value < -1) a page that had no assignment (ingested since).
        new: int (n,), the new HDBSCAN labels of the same pages, -1 noise.
        next_id: the smallest id never used in this collection.

    Returns:
        ``(ids, mapping)``: int64 (n,) stored ids (-1 stays noise) and ``{new label: stored id}``.
    """
    from scipy.optimize import linear_sum_assignment

    old = np.asarray(old, np.int64)
    new = np.asarray(new, np.int64)
    new_ids = np.unique(new[new >= 0])
    old_ids = np.unique(old[old >= 0])
    mapping: dict[int, int] = {}
    if len(new_ids) and len(old_ids):
        both = (new >= 0) & (old >= 0)
        ni = np.searchsorted(new_ids, new[both])
        oi = np.searchsorted(old_ids, old[both])
        overlap = np.zeros((len(new_ids), len(old_ids)), np.int64)
        np.add.at(overlap, (ni, oi), 1)
        old_size = np.array([(old == o).sum() for o in old_ids])
        new_seen = np.array([((new == c) & (old >= -1)).sum() for c in new_ids])
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        for r, c in zip(rows, cols):
            o = overlap[r, c]
            if o > 0 and (2 * o > old_size[c] or 2 * o > new_seen[r]):
                mapping[int(new_ids[r])] = int(old_ids[c])
    fresh = max(int(next_id), int(old_ids.max()) + 1 if len(old_ids) else 0)
    for c in new_ids:
        if int(c) not in mapping:
            mapping[int(c)] = fresh
            fresh += 1
    ids = np.array([mapping[int(c)] if c >= 0 else -1 for c in new], np.int64)
    return ids, mapping


def predict_clusters(models: dict, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Place new pages with the models of the last clustering, without re-fitting.

    Each page is embedded with the stored UMAP's ``transform`` and given a cluster by
    ``hdbscan.approximate_predict`` (hdbscan docs, "Predicting clusters for new points"), which
    places a point where it would join the condensed tree. With UMAP's tight clusters
    (``min_dist=0``) that leaves most transformed pages as noise (measured in issue #5: 75-100% of
    the pages added to a clustered half of sample_docs), so a page it leaves out falls back to its
    ``k`` nearest training points in the same UMAP space (``k`` = HDBSCAN's
    ``min_cluster_size``): when more than half of them are members of one cluster, the page joins
    it. After a consensus clustering (``models["consensus"]``: the consensus labels of the
    training points and ``k``), there is no condensed tree to predict with, and every page is
    placed by that neighbour vote in run 0's UMAP space. Map coordinates come from the stored 2-D UMAP's ``transform``. UMAP's ``transform`` is
    deterministic for a fixed ``random_state``.

    Args:
        models: the dict stored in ``clustering.joblib``: ``umap``, ``umap_2d``, ``hdbscan`` (``None`` after a
            consensus), ``dim`` (input dimension), optionally ``consensus`` and ``label_map`` (``{HDBSCAN label: stored id}``, identity if absent).
        vectors: float32 (m, D), the new pages' vectors (D as the clustered ones).

    Returns:
        ``(ids, strengths, embedding_2d, how)``: int64 (m,) stored cluster ids (-1 noise); float32
        (m,) in [0, 1], ``approximate_predict``'s strength or, for the fallback, the share of the
        ``k`` neighbours in the chosen cluster; float32 (m, 2) map coordinates; str (m,)
        ``"approximate_predict"``, ``"neighbours"`` or ``"noise"``.

    Raises:
        ValueError: ``vectors`` do not have the dimension the models were fitted on.
    """
    import hdbscan

    vectors = np.ascontiguousarray(vectors, np.float32)
    m = len(vectors)
    if m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 2), np.float32), np.zeros(0, "<U19")
    reducer, mapper, clusterer = models["umap"], models["umap_2d"], models["hdbscan"]
    consensus = models.get("consensus")
    fitted_dim = models.get("dim")  # recorded at fit (models stored before it was recorded: unchecked)
    if fitted_dim is not None and int(fitted_dim) != vectors.shape[1]:
        raise ValueError(f"vectors have {vectors.shape[1]} dimensions, the clustering models were fitted on {fitted_dim}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value 1 overridden.*")
        emb = np.asarray(reducer.transform(vectors), np.float64)
        xy = np.asarray(mapper.transform(vectors), np.float32)
    if consensus is None:
        labels, strengths = hdbscan.approximate_predict(clusterer, emb)
        train_labels, k = np.asarray(clusterer.labels_, np.int64), int(clusterer.min_cluster_size)
    else:  # a consensus has no condensed tree of run 0's points: neighbours only
        labels, strengths = np.full(m, -1, np.int64), np.zeros(m, np.float32)
        train_labels, k = np.asarray(consensus["labels"], np.int64), int(consensus["k"])
    labels = np.asarray(labels, np.int64)
    strengths = np.asarray(strengths, np.float32)
    how = np.where(labels >= 0, "approximate_predict", "noise").astype("<U19")
    k = min(k, len(train_labels))
    out = np.flatnonzero(labels < 0)
    if len(out) and (train_labels >= 0).any():
        # Nearest training points in the UMAP space HDBSCAN clustered (UMAP's public ``embedding_``),
        # found exactly with scikit-learn's KD-tree, as approximate_predict's own tree does.
        from sklearn.neighbors import KDTree

        _, near = KDTree(np.asarray(reducer.embedding_, np.float64)).query(emb[out], k=k)
        for i, row in zip(out, np.asarray(near).reshape(len(out), k)):
            votes = train_labels[row]
            votes = np.bincount(votes[votes >= 0]) if (votes >= 0).any() else np.zeros(0, np.int64)
            if len(votes) and 2 * votes.max() > k:
                labels[i] = int(votes.argmax())
                strengths[i] = votes.max() / k
                how[i] = "neighbours"
    label_map = models.get("label_map") or {}
    ids = np.array([label_map.get(int(c), int(c)) if c >= 0 else -1 for c in labels], np.int64)
    return ids, strengths, xy, how


def document_clusters(document_ids: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """Document-level cluster: the majority label of its pages.

    Ties go to a real cluster over noise, then to the smaller cluster id.

    Args:
        document_ids: int (n,), the document of each page; labels: int (n,), page clusters.

    Returns:
        ``{document_id: cluster}``.
    """
    document_ids = np.asarray(document_ids, dtype=np.int64).ravel()
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(document_ids) == 0:
        return {}
    # One grouped pass, O(n log n): count each (document, label) pair, then per document keep the
    # pair that sorts first by (more pages, real cluster before noise, smaller id).
    pairs, counts = np.unique(np.stack([document_ids, labels], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], pairs[:, 1] < 0, -counts, pairs[:, 0]))
    pairs = pairs[order]
    first = np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]
    return dict(zip(pairs[first, 0].tolist(), pairs[first, 1].tolist()))
