"""The *invariance* stage: a linear projection of page vectors that ignores scan style.

Fitted on the collection itself, without labels: every sampled page is rendered in several scan
styles (:mod:`docsort.core.styles`), each rendering is embedded with the collection's own extractor, and
the projection keeps the directions in which *pages differ from one another more than the
renderings of one page differ*. That is Fisher's linear discriminant (R. A. Fisher, "The use of
multiple measurements in taxonomic problems", Annals of Eugenics 7, 1936; the multi-class form of
C. R. Rao 1948, as in Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*, 2nd
ed., section 4.3.3) with **each page as its own class**: the classes are known by construction
(renderings of one page), so no document-type label is used.

With ``n`` pages, ``v`` renderings each, vectors ``x_ij`` (D-d), page means ``m_i`` and grand mean
``m``:

* within-page scatter ``S_w = 1/(n v) sum_ij (x_ij - m_i)(x_ij - m_i)^T`` (scan-style variation),
* between-page scatter ``S_b = 1/n sum_i (m_i - m)(m_i - m)^T`` (content variation),
* directions ``w`` solving ``S_b w = lambda (S_w + eps I) w`` with the largest ``lambda``
  (``scipy.linalg.eigh(S_b, S_w + eps I)``), ``eps = shrinkage * trace(S_w) / D``: shrinkage toward
  a scaled identity as in regularised discriminant analysis (J. H. Friedman, "Regularized
  Discriminant Analysis", JASA 84, 1989), needed because ``S_w`` is singular when ``n (v-1) < D``.

Projected vectors are centred on the fitted mean, projected and L2-normalised, so their cosine is
spread over [-1, 1] (raw pooled activations are all positive, so every raw cosine is near 1).

The measurement behind it: issue 13's held-out real pages in mixed scan styles (benchmarks/RESULTS.md,
"Figures from docstrings (moved here, issue 15)", ``InvarianceSettings.dims``).
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

import numpy as np

__all__ = ["InvarianceProjection", "InvarianceError", "fit_projection", "within_between_ratio", "stored_projection", "FORMAT"]

#: Leading bytes of :meth:`InvarianceProjection.to_bytes`.
FORMAT = b"DOCSORT-INVARIANCE-1\n"


class InvarianceError(ValueError):
    """The views cannot be fitted (too few pages or renderings), or bytes are not a projection."""


@dataclass(frozen=True)
class InvarianceProjection:
    """A fitted projection ``D -> dims``.

    Attributes:
        mean: float32 (D,), the grand mean of the fitted renderings.
        components: float32 (D, dims), the discriminant directions, largest eigenvalue first.
        eigenvalues: float64 (dims,), the generalised eigenvalues ``lambda`` of the kept
            directions (between-page over within-page scatter along each), descending.
        meta: JSON-able facts about the fit (styles, pages fitted, seed, shrinkage...), part of
            the bytes and hence of :attr:`sha256`.
    """

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        """D, the dimension of the vectors it takes."""
        return int(self.components.shape[0])

    @property
    def dims(self) -> int:
        """The dimension of the vectors it gives."""
        return int(self.components.shape[1])

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Project page vectors.

        Args:
            X: float32 (n, D) vectors as the extractor makes them (stored vectors).

        Returns:
            float32 (n, dims), ``(X - mean) @ components`` with rows L2-normalised (a row that
            projects to zero stays zero).

        Raises:
            ValueError: ``X`` is not (n, D).
        """
        X = np.asarray(X, np.float32)
        if X.ndim != 2 or X.shape[1] != self.input_dim:
            raise ValueError(f"vectors of shape {X.shape} do not fit a projection fitted on {self.input_dim}-d vectors")
        Y = (X - self.mean) @ self.components
        norms = np.linalg.norm(Y, axis=1, keepdims=True)
        return np.where(norms > 1e-12, Y / np.maximum(norms, 1e-12), 0.0).astype(np.float32)

    def to_bytes(self) -> bytes:
        """Serialise: :data:`FORMAT`, a little-endian uint32 header length, a JSON header (sorted
        keys: shapes, meta), then the raw little-endian arrays (mean float32, components float32,
        eigenvalues float64). No timestamps, so equal projections give equal bytes."""
        header = json.dumps({"input_dim": self.input_dim, "dims": self.dims, "meta": self.meta}, sort_keys=True).encode()
        return b"".join([
            FORMAT, struct.pack("<I", len(header)), header,
            np.ascontiguousarray(self.mean, "<f4").tobytes(),
            np.ascontiguousarray(self.components, "<f4").tobytes(),
            np.ascontiguousarray(self.eigenvalues, "<f8").tobytes(),
        ])

    @classmethod
    def from_bytes(cls, data: bytes) -> "InvarianceProjection":
        """Read bytes written by :meth:`to_bytes`.

        Raises:
            InvarianceError: the bytes are not a projection or are truncated.
        """
        if not data.startswith(FORMAT):
            raise InvarianceError("not a docsort invariance projection")
        try:
            at = len(FORMAT)
            (n,) = struct.unpack_from("<I", data, at)
            at += 4
            header = json.loads(data[at : at + n])
            at += n
            D, k = int(header["input_dim"]), int(header["dims"])
            need = at + 4 * D + 4 * D * k + 8 * k
            if len(data) != need:
                raise InvarianceError(f"projection is {len(data)} bytes, expected {need}")
            mean = np.frombuffer(data, "<f4", D, at).astype(np.float32)
            at += 4 * D
            comps = np.frombuffer(data, "<f4", D * k, at).astype(np.float32).reshape(D, k)
            at += 4 * D * k
            eig = np.frombuffer(data, "<f8", k, at).astype(np.float64)
        except (struct.error, ValueError, KeyError) as exc:
            raise InvarianceError(f"unreadable invariance projection: {exc}") from exc
        return cls(mean, comps, eig, header.get("meta", {}))

    @property
    def sha256(self) -> str:
        """sha256 (hex) of :meth:`to_bytes`."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def describe(self) -> dict:
        """A JSON-able summary for the manifest: dims, input dim, the meta of the fit (styles,
        pages fitted, seed, shrinkage), the eigenvalues' largest / median / smallest kept value,
        and the sha256."""
        ev = self.eigenvalues
        return {
            "method": "fisher_lda_pages_as_classes",
            "dims": self.dims,
            "input_dim": self.input_dim,
            **self.meta,
            "eigenvalues": {"max": float(ev.max()), "median": float(np.median(ev)), "min": float(ev.min())} if len(ev) else {},
            "sha256": self.sha256,
        }


def fit_projection(views: np.ndarray, dims: int = 32, shrinkage: float = 0.1, meta: dict | None = None) -> InvarianceProjection:
    """Fit the scan-style-invariant projection (module docstring: Fisher LDA, pages as classes).

    Args:
        views: float32 (n_pages, n_views, D): each page's vectors in ``n_views`` renderings.
        dims: directions kept; at most ``n_pages - 1`` (the rank of ``S_b``), lowered to it.
        shrinkage: ``eps = shrinkage * trace(S_w) / D`` added to the diagonal of ``S_w``
            (regularised discriminant analysis, Friedman 1989); > 0.
        meta: JSON-able facts recorded with the projection (styles, seed, ...).

    Returns:
        An :class:`InvarianceProjection`; on one machine the same ``views`` give byte-identical
        :meth:`~InvarianceProjection.to_bytes` (float64 scatter, LAPACK ``eigh``, each
        direction's sign fixed so its largest-magnitude coordinate is positive).

    Raises:
        InvarianceError: fewer than 3 pages, fewer than 2 views, non-finite values, or
            ``shrinkage <= 0``.
    """
    from scipy.linalg import eigh

    X = np.asarray(views, np.float64)
    if X.ndim != 3 or X.shape[0] < 3 or X.shape[1] < 2:
        raise InvarianceError(f"need views of shape (pages >= 3, views >= 2, D), got {X.shape}")
    if not np.isfinite(X).all():
        raise InvarianceError("views contain NaN or infinite values")
    if shrinkage <= 0:
        raise InvarianceError(f"shrinkage must be > 0, got {shrinkage}")
    n, v, D = X.shape
    page_means = X.mean(axis=1)  # (n, D)
    mean = page_means.mean(axis=0)
    within = (X - page_means[:, None, :]).reshape(n * v, D)
    S_w = within.T @ within / (n * v)
    between = page_means - mean
    S_b = between.T @ between / n
    eps = shrinkage * max(np.trace(S_w) / D, 1e-12)
    k = int(max(1, min(dims, n - 1, D)))
    evals, evecs = eigh(S_b, S_w + eps * np.eye(D), subset_by_index=[D - k, D - 1])
    order = np.argsort(-evals, kind="stable")
    evals, evecs = evals[order], evecs[:, order]
    signs = np.sign(evecs[np.argmax(np.abs(evecs), axis=0), np.arange(k)])
    evecs = evecs * np.where(signs == 0, 1.0, signs)
    info = {"n_pages_fitted": int(n), "n_views": int(v), "shrinkage": float(shrinkage), **(meta or {})}
    return InvarianceProjection(mean.astype(np.float32), evecs.astype(np.float32), evals.astype(np.float64), info)


def within_between_ratio(views: np.ndarray, transform=None) -> float:
    """Mean cosine between renderings of the same page minus mean cosine between renderings of
    different pages (a diagnostic, used in tests and benchmarks; larger = more style-invariant).

    Args:
        views: float32 (n_pages, n_views, D).
        transform: optional callable (m, D) -> (m, d) applied first (e.g. a projection's
            :meth:`~InvarianceProjection.transform`); else rows are L2-normalised as they are.

    Returns:
        The margin, a float in [-2, 2].
    """
    n, v, D = views.shape
    flat = np.asarray(views, np.float32).reshape(n * v, D)
    Y = transform(flat) if transform is not None else flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    C = Y @ Y.T
    page = np.repeat(np.arange(n), v)
    same = (page[:, None] == page[None, :]) & ~np.eye(n * v, dtype=bool)
    other = page[:, None] != page[None, :]
    return float(C[same].mean() - C[other].mean())



_LOADED: dict[str, InvarianceProjection] = {}


def stored_projection(collection) -> InvarianceProjection | None:
    """The collection's active projection (:meth:`docsort.store.storage.Collection.read_invariance`:
    recorded as active in the manifest, file present, sha256 matching), or ``None``: then the
    raw stored vectors are used everywhere. Parsed projections are kept per sha256 for the
    process (a few tens of KB each).

    Args:
        collection: a :class:`docsort.store.storage.Collection`.
    """
    import hashlib

    data = collection.read_invariance()
    if data is None:
        return None
    sha = hashlib.sha256(data).hexdigest()
    if sha not in _LOADED:
        try:
            proj = InvarianceProjection.from_bytes(data)
        except InvarianceError:
            return None
        if len(_LOADED) >= 8:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[sha] = proj
    return _LOADED[sha]
