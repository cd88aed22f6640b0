"""The *labels/classifier* stage: name a few pages or clusters, and sort the rest by document type.

Transfer learning with little labelled data: the backbone stays frozen, the stored page vectors
(see :mod:`docsort.core.features`) are the features, and a small scikit-learn classifier on top learns the
user's document types from a handful of labelled pages.

* **Labels** (table ``page_labels``): one document type per page, given to a page
  (``source='page'``) or to every current member of a cluster (``source='cluster'``), with who and
  when. :func:`label_pages`, :func:`label_cluster`, :func:`unlabel`, :func:`labels`,
  :func:`export_labels`.
* **Classifier** (file ``classifier.joblib``): :func:`train` fits
  ``StandardScaler -> LogisticRegression(class_weight="balanced")`` (multinomial: scikit-learn's
  ``newton-cg`` solver minimises the multinomial cross-entropy for three or more classes) on the
  labelled pages' vectors, calibrates its probabilities when there are enough labels, and reports
  cross-validated accuracy. The model stores the hash of the label set it was trained on;
  :func:`ensure_classifier` retrains whenever the labels (or the training settings) change.
* **Predictions** (table ``page_predictions``): :func:`classify_collection` gives every unlabelled
  page a type, a probability and an ``unsure`` flag, with the model version. :func:`after_ingest`
  does it for new pages at the end of every ingest once a classifier exists.
* **Active suggestions**: :func:`suggestions` lists the pages whose label would help most
  (uncertainty sampling).
* **Sorting**: :func:`sort_by_type` copies every document into ``OUT/<type>/`` with a CSV of the
  decisions and probabilities.

Nothing here imports TensorFlow: labelling, training and classifying run on stored vectors, in
seconds (the fine-tuned classifier, which types pages from their pixels, is
:mod:`docsort.jobs.finetuning`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import getpass
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from docsort.config.settings import ClassifierSettings
from docsort.core.invariance import stored_projection
from docsort.store import labels as store_labels
from docsort.store.manifest import fine_tuned_in_use, forget_fine_tuned, recorded_settings, write_manifest
from docsort.store.models import load_model, model_path, save_model
from docsort.store.storage import Collection, CollectionError, atomic_write_bytes

__all__ = [
    "UNSURE",
    "UNCLASSIFIED",
    "LOO_MAX_LABELS",
    "ClassifierError",
    "ClusterLabelResult",
    "CrossValidation",
    "TrainedClassifier",
    "ClassifyReport",
    "TypeRow",
    "normalise_type",
    "label_pages",
    "label_cluster",
    "unlabel",
    "labels",
    "label_counts",
    "labels_csv",
    "export_labels",
    "label_set_hash",
    "train",
    "fit_collection",
    "load_classifier",
    "is_current",
    "ensure_classifier",
    "classifier_settings",
    "classify_collection",
    "after_ingest",
    "type_table",
    "type_summary",
    "suggestions",
    "document_types",
    "type_folders",
    "sort_by_type",
    "describe",
]

#: Where a page goes when it fits none of the types well enough (a reserved name: no label may use it).
UNSURE = "unsure"

#: The type shown for a page that has neither a label nor a prediction yet.
UNCLASSIFIED = "unclassified"

#: Up to this many labelled pages, cross-validation is leave-one-out; above it, stratified k-fold.
LOO_MAX_LABELS = 50

#: Longest document type name, characters.
MAX_TYPE_LEN = 120

#: Version of the stored model's layout; a ``classifier.joblib`` of another one is retrained.
MODEL_FORMAT = 1

#: The CSV written next to the folders by :func:`sort_by_type`.
DECISIONS_CSV = "docsort-types.csv"

_PREDICT_CHUNK = 4096


class ClassifierError(CollectionError):
    """A classifier cannot be trained or used: fewer than two document types are labelled, or no
    classifier has been trained yet."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _who(who: str | None) -> str:
    if who:
        return str(who)
    try:
        return os.environ.get("DOCSORT_USER") or getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"


def normalise_type(name: str, existing: Iterable[str] = ()) -> str:
    """A document type name as stored: whitespace collapsed, and the spelling of an existing type
    that differs only in case (so "Invoice" and "invoice" are one type).

    Args:
        name: what the user typed.
        existing: the types already in use.

    Returns:
        The name to store (str, 1..:data:`MAX_TYPE_LEN` characters).

    Raises:
        ValueError: empty, longer than :data:`MAX_TYPE_LEN` characters, containing control
            characters, or the reserved name :data:`UNSURE`.
    """
    text = " ".join(str(name).split())
    if not text:
        raise ValueError("a document type cannot be empty")
    if len(text) > MAX_TYPE_LEN:
        raise ValueError(f"a document type has at most {MAX_TYPE_LEN} characters")
    if not text.isprintable():
        raise ValueError("a document type cannot contain control characters")
    if text.casefold() in (UNSURE, UNCLASSIFIED):
        raise ValueError(f"{text!r} is reserved for pages that fit no type; choose another name")
    for other in existing:
        if other.casefold() == text.casefold():
            return other
    return text


def _existing_types(collection: Collection) -> list[str]:
    return store_labels.existing_types(collection)


def label_pages(
    collection: Collection,
    page_ids: Iterable[int],
    doc_type: str,
    *,
    who: str | None = None,
    source: str = "page",
    cluster: int | None = None,
) -> int:
    """Give pages a document type (replacing any label they had), in one transaction.

    Args:
        collection: an open collection.
        page_ids: stored page ids.
        doc_type: the type; see :func:`normalise_type`.
        who: recorded with the label; default ``$DOCSORT_USER`` or the login name
            (``getpass.getuser()``). The app passes ``"ui"``.
        source: ``"page"`` (a page was labelled) or ``"cluster"`` (via :func:`label_cluster`).
        cluster: the cluster id when ``source`` is ``"cluster"``.

    Returns:
        The number of pages labelled.

    Raises:
        ValueError: a bad type name, no page ids, or an unknown ``source``.
        CollectionError: a page id that is not in the collection (nothing is written then).
    """
    ids = list(dict.fromkeys(int(i) for i in page_ids))
    if not ids:
        raise ValueError("no pages to label")
    if source not in ("page", "cluster"):
        raise ValueError(f"source must be 'page' or 'cluster', not {source!r}")
    normalise_type(doc_type)  # a bad name fails before the write lock is taken
    now, by = _now(), _who(who)
    # The type is normalised against the stored ones inside the write transaction, which writers take
    # in turn: "Invoice" and "invoice" labelled at once by two app sessions are stored as one type.
    store_labels.upsert_labels(collection, ids, lambda existing: normalise_type(doc_type, existing), source, cluster, by, now)
    return len(ids)


@dataclass(frozen=True)
class ClusterLabelResult:
    """What :func:`label_cluster` did.

    Attributes:
        doc_type: the type as stored; labelled: pages given the type now;
        kept: member pages that keep a different label given to them one by one.
    """

    doc_type: str
    labelled: int
    kept: int


def label_cluster(
    collection: Collection, cluster_id: int, doc_type: str, *, who: str | None = None, overwrite_page_labels: bool = False
) -> ClusterLabelResult:
    """Give every current member page of a cluster a document type (``source='cluster'``).

    A page labelled one by one (``source='page'``) with another type keeps its label unless
    ``overwrite_page_labels``: a user's decision about a single page is more specific than one
    about a whole cluster. Later re-clustering does not move labels: they belong to pages.

    Args:
        collection: an open, clustered collection.
        cluster_id: a cluster id (>= 0).
        doc_type: the type; see :func:`normalise_type`.
        who: as in :func:`label_pages`.
        overwrite_page_labels: also relabel members that carry their own page label.

    Returns:
        A :class:`ClusterLabelResult`.

    Raises:
        CollectionError: ``cluster_id`` is noise (-1) or not a cluster of the last clustering run.
        ValueError: a bad type name.
    """
    cluster_id = int(cluster_id)
    if cluster_id < 0:
        raise CollectionError("noise (-1) is not a cluster: label its pages one by one")
    table = collection.page_table()
    members = table.loc[table["cluster"].notna() & (table["cluster"].fillna(-2) == cluster_id), "page_id"].astype(int).tolist()
    if not members:
        raise CollectionError(f"no cluster {cluster_id} in {collection.root}")
    name = normalise_type(doc_type, _existing_types(collection))
    kept: set[int] = set()
    if not overwrite_page_labels:
        kept = store_labels.pages_with_other_page_label(collection, members, name)
    todo = [i for i in members if i not in kept]
    n = label_pages(collection, todo, name, who=who, source="cluster", cluster=cluster_id) if todo else 0
    return ClusterLabelResult(name, n, len(kept))


def unlabel(collection: Collection, page_ids: Iterable[int]) -> int:
    """Remove the labels of these pages (pages without a label are ignored). They have no
    prediction until the next :func:`classify_collection`, which retrains on the remaining labels.

    Returns:
        The number of labels removed.
    """
    ids = list(dict.fromkeys(int(i) for i in page_ids))
    return store_labels.delete_labels(collection, ids)


def labels(collection: Collection):
    """Every label, by page id.

    Returns:
        A ``pandas.DataFrame`` with columns page_id (int64), document_id (int64), path (str), page
        (int64, 1-based), sha256 (str, of the document's file), type (str), source ('page' or
        'cluster'), cluster (Int64, the cluster labelled; <NA> for page labels), who (str),
        at (str, ISO 8601 UTC).
    """
    import pandas as pd

    rows = store_labels.label_rows(collection)
    cols = ["page_id", "document_id", "path", "page", "sha256", "type", "source", "cluster", "who", "at"]
    df = pd.DataFrame(rows, columns=cols)
    for c in ("page_id", "document_id", "page"):
        df[c] = df[c].astype("int64")
    df["cluster"] = df["cluster"].astype("Int64")
    return df


def label_counts(collection: Collection) -> dict[str, int]:
    """``{type: labelled pages}``, types in name order."""
    return store_labels.label_counts(collection)


def labels_csv(collection: Collection) -> bytes:
    """:func:`labels` as UTF-8 CSV bytes (what :func:`export_labels` writes)."""
    return labels(collection).to_csv(index=False).encode("utf-8")


def export_labels(collection: Collection, out: str | os.PathLike[str]) -> int:
    """Write every label to a CSV file (columns of :func:`labels`), atomically.

    Returns:
        The number of labels written.

    Raises:
        ValueError: ``out`` does not end in ``.csv``.
        OSError: the file cannot be written.
    """
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"{out}: labels are exported to a .csv file")
    data = labels_csv(collection)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    return max(0, data.count(b"\n") - 1) if data else 0


def label_set_hash(collection: Collection) -> str:
    """sha256 (hex) of the sorted ``(page id, type)`` pairs: it changes whenever a label does."""
    h = hashlib.sha256()
    for pid, t in store_labels.label_pairs(collection):
        h.update(f"{pid}\t{t}\n".encode("utf-8"))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossValidation:
    """Cross-validated accuracy of the classifier on its own labelled pages.

    Attributes:
        accuracy: share of held-out labelled pages predicted right (0..1), or ``None`` when there
            are not enough labels to cross-validate.
        per_type: ``{type: share of its held-out pages predicted right}`` (empty when ``None``).
        method: how it was split, e.g. ``"leave-one-out (18 labelled pages)"``.
        note: why there is no accuracy, or ``""``.
    """

    accuracy: float | None
    per_type: dict[str, float]
    method: str
    note: str = ""

    def describe(self) -> str:
        """One line for people: ``"0.83 (leave-one-out, 18 labelled pages)"`` or the note."""
        return f"{self.accuracy:.2f} ({self.method})" if self.accuracy is not None else self.note


def _base_model(settings: ClassifierSettings):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardised inputs: L2-normalised pooled activations are small and all positive, and an L2
    # penalty treats every coordinate alike only on a common scale (scikit-learn user guide 6.3).
    # newton-cg minimises the same multinomial L2-penalised loss as the default lbfgs; on a few
    # hundred standardised dimensions it converged in ~10 iterations vs ~30, 5x faster here.
    return make_pipeline(
        StandardScaler(),
        LogisticRegression(C=settings.C, class_weight="balanced", solver="newton-cg", max_iter=1000),
    )


def _cross_validate(settings: ClassifierSettings, X: np.ndarray, y: np.ndarray) -> CrossValidation:
    """Leave-one-out up to :data:`LOO_MAX_LABELS` labelled pages, else stratified
    ``k = min(5, fewest labels of a type)``-fold (scikit-learn ``LeaveOneOut`` /
    ``StratifiedKFold(shuffle=True, random_state=0)``, see the user guide's "Cross-validation:
    evaluating estimator performance"). A type with one labelled page cannot be held out and still
    be learnt, so then there is no estimate."""
    from sklearn.model_selection import LeaveOneOut, StratifiedKFold, cross_val_predict

    types, counts = np.unique(y, return_counts=True)
    if counts.min() < 2:
        few = ", ".join(repr(str(t)) for t, c in zip(types, counts) if c < 2)
        return CrossValidation(
            None, {}, "none",
            f"not enough labels to cross-validate: {few} {'has' if (counts < 2).sum() == 1 else 'have'} only one "
            "labelled page (at least 2 per type are needed)",
        )
    if len(y) <= LOO_MAX_LABELS:
        splitter, method = LeaveOneOut(), f"leave-one-out, {len(y)} labelled pages"
    else:
        k = int(min(5, counts.min()))
        splitter, method = StratifiedKFold(k, shuffle=True, random_state=0), f"stratified {k}-fold, {len(y)} labelled pages"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        pred = cross_val_predict(_base_model(settings), X, y, cv=splitter)
    per_type = {str(t): float(np.mean(pred[y == t] == t)) for t in types}
    return CrossValidation(float(np.mean(pred == y)), per_type, method)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


@dataclass
class TrainedClassifier:
    """A fitted document-type classifier and what it was fitted on.

    Attributes:
        model: the fitted scikit-learn estimator (``predict_proba`` over :attr:`classes`).
        classes: the document types, in the order of the probability columns.
        counts: ``{type: labelled pages}`` it was trained on.
        label_hash: :func:`label_set_hash` of those labels.
        params: the :class:`~docsort.config.settings.ClassifierSettings` training fields it used.
        version: 12 hex digits of sha256 over labels, parameters and centre: the model version
            stored with every prediction.
        calibration: how probabilities were calibrated (or why they were not).
        cv: the :class:`CrossValidation`.
        centre: float32 (D,), the mean of every stored vector at training time; similarities are
            cosines of centred vectors (the raw pooled activations are all positive, so raw
            cosines of any two pages are close to 1).
        references: float32 (n_labels, D), the labelled pages' centred unit vectors.
        reference_types: str (n_labels,), their types.
        similarity_floor: the median, over labelled pages, of the cosine to the nearest labelled
            page of another type (centred vectors); a page less like its best type's nearest
            labelled page than this is unlike that type.
        trained_at: ISO 8601 UTC; seconds: training wall time; sklearn: scikit-learn version;
        format: :data:`MODEL_FORMAT` when saved.
        projection_sha256: sha256 of the collection's invariance projection the vectors went
            through (:func:`docsort.core.invariance.stored_projection`), ``None`` for raw vectors; a
            classifier whose projection is not the collection's active one is retrained.
    """

    model: object
    classes: list[str]
    counts: dict[str, int]
    label_hash: str
    params: dict
    version: str
    calibration: str
    cv: CrossValidation
    centre: np.ndarray
    references: np.ndarray
    reference_types: np.ndarray
    similarity_floor: float
    trained_at: str = ""
    seconds: float = 0.0
    sklearn: str = ""
    format: int = MODEL_FORMAT
    projection_sha256: str | None = None

    @property
    def n_labels(self) -> int:
        """Labelled pages trained on."""
        return int(sum(self.counts.values()))

    def predict(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best type, its probability and the similarity to that type's nearest labelled page.

        Args:
            vectors: float32 (n, D) stored page vectors (D as trained).

        Returns:
            ``(types, probabilities, similarities)``: str (n,), float64 (n,) in [0, 1], float32
            (n,) cosine in [-1, 1] of centred vectors.

        Raises:
            ValueError: vectors of another dimension than the model's.
        """
        X = np.asarray(vectors, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.centre.shape[0]:
            raise ValueError(f"vectors of shape {X.shape} do not fit a classifier trained on {self.centre.shape[0]}-d vectors")
        types = np.empty(len(X), dtype=object)
        probs = np.empty(len(X), dtype=np.float64)
        sims = np.empty(len(X), dtype=np.float32)
        classes = np.asarray(self.classes, dtype=object)
        masks = [self.reference_types == t for t in self.classes]
        for start in range(0, len(X), _PREDICT_CHUNK):
            x = X[start : start + _PREDICT_CHUNK]
            P = self.model.predict_proba(x)
            best = P.argmax(axis=1)
            rows = np.arange(len(x))
            S = _unit(x - self.centre) @ self.references.T
            nearest = np.stack([S[:, m].max(axis=1) for m in masks], axis=1)  # (n, types)
            types[start : start + len(x)] = classes[best]
            probs[start : start + len(x)] = P[rows, best]
            sims[start : start + len(x)] = nearest[rows, best]
        return types, probs, sims

    def unsure(self, probabilities: np.ndarray, similarities: np.ndarray, threshold: float, reject_unlike: bool) -> np.ndarray:
        """bool (n,): below ``threshold`` probability, or (with ``reject_unlike``) below
        :attr:`similarity_floor` similarity."""
        out = np.asarray(probabilities) < threshold
        if reject_unlike:
            out |= np.asarray(similarities) < self.similarity_floor
        return out


def _params(settings: ClassifierSettings) -> dict:
    return settings.model_dump(mode="json", exclude={"threshold", "reject_unlike"})


def train(
    vectors: np.ndarray,
    types: Iterable[str],
    settings: ClassifierSettings,
    *,
    centre: np.ndarray | None = None,
    label_hash: str = "",
    cross_validate: bool = True,
) -> TrainedClassifier:
    """Fit the classifier on labelled pages' frozen feature vectors.

    The model is ``StandardScaler -> LogisticRegression(C, class_weight="balanced",
    solver="newton-cg")`` (scikit-learn; the loss is multinomial for three or more types, binary
    logistic for two, which is the same model). Balanced class weights keep a type with many
    labels from drowning a type with few.

    Probabilities: a logistic regression fitted by log-loss gives fairly well calibrated
    probabilities by itself (Niculescu-Mizil & Caruana 2005, "Predicting good probabilities with
    supervised learning", ICML), and the L2 penalty shrinks them towards uniform, so with few
    labels they err towards "unsure". Post-hoc calibration needs held-out scores: with 1-2 labels
    per type there are none (``CalibratedClassifierCV`` cannot run), and up to 15 labels per type
    it made the probabilities worse (benchmarks/RESULTS.md, "Document-type classifier: calibration
    and the unsure rule"). So the model's own probabilities are used until
    every type has ``settings.calibrate_min_per_type`` labels (default 20); from there they are
    calibrated by temperature scaling (Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of
    Modern Neural Networks", ICML; scikit-learn >= 1.8 ``CalibratedClassifierCV(method=
    "temperature", ensemble=False)`` on out-of-fold scores of a stratified ``min(5, fewest
    labels)``-fold split): one parameter, and it never changes which type wins.
    :attr:`TrainedClassifier.calibration` says which.

    Args:
        vectors: float32 (n, D) labelled pages' stored vectors.
        types: str (n,) their types.
        settings: the training settings (``C``, ``calibrate_min_per_type``).
        centre: float32 (D,) mean vector used to centre similarities (default: the mean of
            ``vectors``; :func:`fit_collection` passes the mean of every stored page).
        label_hash: recorded in the model (see :func:`label_set_hash`).
        cross_validate: compute :class:`CrossValidation` (skipped by benchmarks that test on
            held-out pages themselves).

    Returns:
        A :class:`TrainedClassifier`.

    Raises:
        ClassifierError: fewer than two types, or vectors and types of different lengths.
    """
    import time

    import sklearn
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    X = np.asarray(vectors, dtype=np.float32)
    y = np.asarray([str(t) for t in types], dtype=object)
    if X.ndim != 2 or len(X) != len(y):
        raise ClassifierError(f"{len(y)} labels for vectors of shape {X.shape}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        have = f"only {classes[0]!r}" if len(classes) else "none"
        raise ClassifierError(f"label pages of at least two document types to train a classifier (labelled: {have})")
    base = _base_model(settings)
    k = int(min(5, counts.min()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        if counts.min() >= settings.calibrate_min_per_type:
            model = CalibratedClassifierCV(base, method="temperature", cv=StratifiedKFold(k, shuffle=True, random_state=0), ensemble=False)
            calibration = f"temperature scaling on {k}-fold out-of-fold scores"
        else:
            model = base
            calibration = (
                "the logistic regression's own probabilities (temperature scaling starts at "
                f"{settings.calibrate_min_per_type} labelled pages per type)"
            )
        model.fit(X, y)
    cv = _cross_validate(settings, X, y) if cross_validate else CrossValidation(None, {}, "none", "not computed")
    centre = (X.mean(axis=0) if centre is None else np.asarray(centre, dtype=np.float32)).astype(np.float32)
    refs = _unit(X - centre)
    S = refs @ refs.T
    other = y[:, None] != y[None, :]
    floor = float(np.median(np.where(other, S, -np.inf).max(axis=1)))
    params = _params(settings)
    h = hashlib.sha256(json.dumps([label_hash, params], sort_keys=True).encode())
    if not label_hash:  # trained on arrays, not a collection: identify the labels themselves
        h.update(X.tobytes())
        h.update("\n".join(y).encode("utf-8"))
    h.update(centre.tobytes())
    return TrainedClassifier(
        model=model,
        classes=[str(c) for c in model.classes_],
        counts={str(t): int(c) for t, c in zip(classes, counts)},
        label_hash=label_hash,
        params=params,
        version=h.hexdigest()[:12],
        calibration=calibration,
        cv=cv,
        centre=centre,
        references=refs,
        reference_types=y,
        similarity_floor=floor,
        trained_at=_now(),
        seconds=time.perf_counter() - t0,
        sklearn=sklearn.__version__,
    )


def _vectors(collection: Collection, page_ids=None) -> tuple[np.ndarray, np.ndarray, str | None]:
    """``(ids, vectors, projection sha256)``: stored vectors through the collection's active
    invariance projection (issue 13), the vectors index, search and clustering use; float32."""
    ids, X = collection.vectors(page_ids)
    proj = stored_projection(collection)
    if proj is not None and len(ids):
        X = proj.transform(X)
    return ids, X, proj.sha256 if proj is not None else None


def fit_collection(collection: Collection, settings: ClassifierSettings) -> TrainedClassifier:
    """Train on the collection's labelled pages and store the model (``classifier.joblib``,
    written atomically) and a summary in the manifest. The caller holds the write lock.

    Returns:
        The :class:`TrainedClassifier`.

    Raises:
        ClassifierError: fewer than two document types are labelled.
    """
    rows = store_labels.label_pairs(collection)
    if len({t for _, t in rows}) < 2:
        have = sorted({t for _, t in rows})
        raise ClassifierError(
            "label pages of at least two document types to train a classifier "
            f"(labelled: {', '.join(map(repr, have)) or 'none'})"
        )
    ids, X, projection = _vectors(collection, [r[0] for r in rows])
    _, allX, _ = _vectors(collection)
    clf = train(X, [r[1] for r in rows], settings, centre=allX.mean(axis=0), label_hash=label_set_hash(collection))
    clf.projection_sha256 = projection
    save_model(collection, "classifier", clf)
    manifest = collection.manifest()
    if manifest is not None:
        manifest["classifier"] = {
            "version": clf.version, "trained_at": clf.trained_at, "labels": clf.counts, "params": clf.params,
            "calibration": clf.calibration, "cv_accuracy": clf.cv.accuracy, "cv_method": clf.cv.method,
            "similarity_floor": clf.similarity_floor, "scikit-learn": clf.sklearn,
        }
        write_manifest(collection, manifest)
    return clf


def load_classifier(collection: Collection) -> TrainedClassifier | None:
    """The stored classifier, or ``None`` when none was trained (or its file cannot be read by
    this docsort; it is then retrained on the next use)."""
    try:
        clf = load_model(collection, "classifier")
    except Exception:  # noqa: BLE001 - an unreadable or incompatible pickle means "retrain"
        return None
    if not isinstance(clf, TrainedClassifier) or getattr(clf, "format", None) != MODEL_FORMAT:
        return None
    return clf


def is_current(clf: TrainedClassifier | None, collection: Collection, settings: ClassifierSettings) -> bool:
    """Whether ``clf`` was trained on the collection's current labels with these settings, on
    vectors through the collection's current invariance projection (or raw, when none)."""
    if clf is None or clf.label_hash != label_set_hash(collection) or clf.params != _params(settings):
        return False
    proj = stored_projection(collection)
    return getattr(clf, "projection_sha256", None) == (proj.sha256 if proj is not None else None)


def ensure_classifier(collection: Collection, settings: ClassifierSettings) -> tuple[TrainedClassifier, bool]:
    """The stored classifier, retrained first if the labels or training settings changed.

    The caller holds the write lock.

    Returns:
        ``(classifier, retrained)``.

    Raises:
        ClassifierError: fewer than two document types are labelled.
    """
    clf = load_classifier(collection)
    if is_current(clf, collection, settings):
        return clf, False
    return fit_collection(collection, settings), True


def classifier_settings(collection: Collection, requested=None) -> ClassifierSettings:
    """The classifier settings for a command on ``collection``: ``requested.classifier`` when the user
    chose a pipeline, else those recorded in the collection's manifest
    (:func:`docsort.store.manifest.recorded_settings`, as :func:`docsort.store.manifest.effective_settings`
    does), else the defaults.

    Raises:
        pydantic.ValidationError: the manifest's pipeline does not validate.
    """
    if requested is not None:
        return requested.classifier
    recorded = recorded_settings(collection)
    return recorded.classifier if recorded is not None else ClassifierSettings()


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------


@dataclass
class ClassifyReport:
    """What :func:`classify_collection` did.

    Attributes:
        classifier: the model used; retrained: whether it was (re)trained now;
        classified: pages given a prediction now; unsure: of those, routed to "unsure";
        threshold: the probability threshold used; reject_unlike: whether the similarity rule was on.
    """

    classifier: TrainedClassifier
    retrained: bool
    classified: int
    unsure: int
    threshold: float
    reject_unlike: bool


def classify_collection(
    collection: Collection,
    settings: ClassifierSettings,
    *,
    threshold: float | None = None,
    only_missing: bool = False,
    lock: bool = True,
    lock_timeout_s: float = 600.0,
    log: Callable[[str], None] | None = None,
) -> ClassifyReport:
    """Give every unlabelled page a type, a probability and an "unsure" flag.

    Retrains first when the labels changed (:func:`ensure_classifier`). A page is "unsure" when
    its best type's probability is below ``threshold``, or, with ``settings.reject_unlike``, when it
    is less like the nearest labelled page of that type than labelled pages of different types
    typically are like each other (:attr:`TrainedClassifier.similarity_floor`): a logistic
    regression's probabilities grow more confident far from every training example, so they alone
    cannot say that a page belongs to no known type. The rule is the nearest-neighbour rejection of
    open-set recognition (cf. Mendes Júnior et al. 2017, "Nearest neighbors distance ratio open-set
    classifier", Machine Learning 106). What it catches and costs: benchmarks/RESULTS.md,
    "Document-type classifier: calibration and the unsure rule".

    Args:
        collection: an open collection.
        settings: the classifier settings.
        threshold: probability threshold (default ``settings.threshold``), 0..1.
        only_missing: predict only pages without a prediction of the current model (ingest);
            otherwise every unlabelled page is predicted again.
        lock: take the collection's write lock (``False`` when the caller holds it).
        lock_timeout_s: how long to wait for the lock, seconds.
        log: where a one-line note on a retrain goes.

    Returns:
        A :class:`ClassifyReport`.

    Raises:
        ClassifierError: fewer than two document types are labelled.
        ValueError: ``threshold`` outside 0..1.
        CollectionBusyError: another writer held the lock for ``lock_timeout_s``.
    """
    from contextlib import nullcontext

    threshold = settings.threshold if threshold is None else float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    with collection.write_lock(lock_timeout_s, on_wait=log) if lock else nullcontext():
        clf, retrained = ensure_classifier(collection, settings)
        if retrained and log:
            log(f"trained the document-type classifier {clf.version} on {clf.n_labels} labelled pages; "
                f"cross-validated accuracy {clf.cv.describe()}")
        todo = store_labels.pages_to_predict(collection, clf.version if only_missing and not retrained else None)
        rows = []
        n_unsure = 0
        if todo:
            ids, X, _ = _vectors(collection, todo)
            types, probs, sims = clf.predict(X)
            unsure = clf.unsure(probs, sims, threshold, settings.reject_unlike)
            n_unsure = int(unsure.sum())
            now = _now()
            rows = [
                (int(i), str(t), float(p), float(s), int(u), threshold, clf.version, now)
                for i, t, p, s, u in zip(ids, types, probs, sims, unsure)
            ]
        store_labels.replace_predictions(collection, rows, drop_all=not only_missing or retrained)
        if not only_missing:  # every prediction is the frozen classifier's now (issue 14)
            if forget_fine_tuned(collection) and log:
                log("the frozen-feature classifier types the pages again (the fine-tuned one is no longer in use)")
    return ClassifyReport(clf, retrained, len(rows), n_unsure, threshold, settings.reject_unlike)


def after_ingest(collection: Collection, settings, *, log: Callable[[str], None] | None = None) -> ClassifyReport | None:
    """Classify newly ingested pages when the collection has a classifier; otherwise do nothing.

    Called at the end of :func:`docsort.jobs.ingest.ingest`, which holds the write lock. New pages get
    predictions from the current model (retrained first if the labels changed since it was
    trained), at the pipeline's ``[classifier] threshold`` (stored with each prediction). While a
    fine-tuned classifier is in use (``docsort classify --fine-tune``) this does nothing: ingest
    and cluster call :func:`docsort.jobs.finetuning.type_after_ingest`, which has that model type
    them. Ingest has already stored its pages, so a classifier that cannot be trained any more
    (labels removed down to one type) is reported through ``log`` and not raised.

    Args:
        collection: the collection just ingested into.
        settings: the :class:`~docsort.config.settings.PipelineSettings` of the ingest.
        log: where a one-line summary goes.

    Returns:
        The :class:`ClassifyReport`, or ``None`` when there is no classifier (or it failed).
    """
    if fine_tuned_in_use(collection):  # issue 14: never mix frozen predictions into fine-tuned ones
        return None  # docsort.jobs.finetuning.type_after_ingest types them with the fine-tuned model
    if not model_path(collection, "classifier").is_file():
        return None
    try:
        report = classify_collection(collection, settings.classifier, only_missing=True, lock=False, log=log)
    except ClassifierError as exc:
        if log:
            log(f"new pages not classified: {exc}")
        return None
    if log and report.classified:
        log(f"classified {report.classified} new pages by document type ({report.unsure} unsure)")
    return report


def type_table(collection: Collection, *, table=None):
    """Every page with its label and its prediction.

    Args:
        collection: an open collection.
        table: ``collection.page_table()`` if already read.

    Returns:
        A ``pandas.DataFrame`` in page-id order with the columns of ``Collection.page_table()`` plus
        file (str), label (str or None), label_source, labelled_by, labelled_at, predicted (str or
        None: the best type), type_probability (float64, NaN without a prediction), similarity
        (float64), unsure (bool), model_version (str or None), and doc_type (str): the label, else
        the prediction when not unsure, else :data:`UNSURE` (or :data:`UNCLASSIFIED` with neither),
        and decision: ``labelled`` | ``predicted`` | ``unsure`` | ``unclassified``.
    """
    import pandas as pd

    df = (collection.page_table() if table is None else table).copy()
    lab = pd.DataFrame(
        store_labels.label_table_rows(collection),
        columns=["page_id", "label", "label_source", "labelled_by", "labelled_at"],
    )
    pred = pd.DataFrame(
        store_labels.prediction_table_rows(collection),
        columns=["page_id", "predicted", "type_probability", "similarity", "unsure", "model_version"],
    )
    df = df.merge(lab, on="page_id", how="left").merge(pred, on="page_id", how="left")
    df["file"] = [Path(p).name for p in df["path"]]
    df["type_probability"] = pd.to_numeric(df["type_probability"], errors="coerce").astype("float64")
    df["similarity"] = pd.to_numeric(df["similarity"], errors="coerce").astype("float64")
    df["unsure"] = df["unsure"].fillna(0).astype(bool)
    labelled = df["label"].notna()
    predicted = ~labelled & df["predicted"].notna()
    df["decision"] = np.where(labelled, "labelled", np.where(predicted & df["unsure"], "unsure", np.where(predicted, "predicted", "unclassified")))
    df["doc_type"] = np.where(
        labelled, df["label"], np.where(df["decision"] == "predicted", df["predicted"], np.where(df["decision"] == "unsure", UNSURE, UNCLASSIFIED))
    )
    for c in ("label", "label_source", "labelled_by", "labelled_at", "predicted", "model_version"):
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df.reset_index(drop=True)


@dataclass(frozen=True)
class TypeRow:
    """One line of the document-type summary.

    Attributes:
        doc_type: the type; labelled: pages labelled with it; predicted: unlabelled pages
        predicted as it (not unsure); unsure: unlabelled pages whose best type it is but that were
        routed to "unsure"; cv_accuracy: share of its labelled pages predicted right when held out
        (``None`` without cross-validation).
    """

    doc_type: str
    labelled: int
    predicted: int
    unsure: int
    cv_accuracy: float | None

    @property
    def pages(self) -> int:
        """Pages of this type: labelled + predicted."""
        return self.labelled + self.predicted


def type_summary(collection: Collection, clf: TrainedClassifier | None = None, *, table=None) -> list[TypeRow]:
    """One :class:`TypeRow` per type (labelled or predicted), most pages first.

    Args:
        clf: the classifier whose per-type CV accuracy to show (default: the stored one).
        table: ``type_table(collection)`` if already read.
    """
    df = type_table(collection) if table is None else table
    clf = load_classifier(collection) if clf is None else clf
    per_type = clf.cv.per_type if clf is not None else {}
    names = sorted(set(df["label"].dropna()) | set(df["predicted"].dropna()))
    rows = []
    for t in names:
        rows.append(TypeRow(
            t,
            int((df["label"] == t).sum()),
            int(((df["decision"] == "predicted") & (df["predicted"] == t)).sum()),
            int(((df["decision"] == "unsure") & (df["predicted"] == t)).sum()),
            per_type.get(t),
        ))
    rows.sort(key=lambda r: (-r.pages, r.doc_type))
    return rows


def suggestions(collection: Collection, n: int = 12, *, table=None):
    """Unlabelled pages to label next, the most useful first.

    With current predictions: uncertainty sampling (Lewis & Gale 1994, "A sequential algorithm for
    training text classifiers", SIGIR): the least confident pages first (lowest probability of
    their best type), ties broken by the lowest similarity to a labelled page, then by the lowest
    HDBSCAN membership (pages on cluster borders). Before any prediction exists (fewer than two
    types labelled): one page per cluster that has no labelled page yet, the cluster's most
    typical member (highest HDBSCAN membership), largest clusters first, so the first labels cover
    every kind of page.

    Args:
        collection: an open collection.
        n: at most this many pages (>= 1).
        table: ``type_table(collection)`` if already read.

    Returns:
        A ``pandas.DataFrame`` (columns of :func:`type_table` plus reason: str), at most ``n`` rows.

    Raises:
        ValueError: ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    df = type_table(collection) if table is None else table
    todo = df[df["label"].isna()]
    with_pred = todo[todo["predicted"].notna()]
    if len(with_pred):
        out = with_pred.assign(_b=with_pred["probability"].fillna(1.0)).sort_values(
            ["type_probability", "similarity", "_b", "page_id"], ascending=True, na_position="last", kind="stable"
        ).drop(columns="_b").head(n)
        reason = [f"least confident: {p:.2f} {t}" + (" (unsure)" if u else "") for p, t, u in zip(out["type_probability"], out["predicted"], out["unsure"])]
        return out.assign(reason=reason).reset_index(drop=True)
    labelled_clusters = set(df.loc[df["label"].notna() & df["cluster"].notna(), "cluster"].astype(int))
    clustered = todo[todo["cluster"].notna() & (todo["cluster"].fillna(-1) >= 0)]
    clustered = clustered[~clustered["cluster"].astype(int).isin(labelled_clusters)]
    if clustered.empty:
        return todo.head(0).assign(reason=[])
    sizes = df["cluster"].value_counts()
    picks = (
        clustered.assign(_size=clustered["cluster"].map(sizes), _p=clustered["probability"].fillna(0.0))
        .sort_values(["_size", "_p", "page_id"], ascending=[False, False, True], kind="stable")
        .groupby("cluster", sort=False).head(1)
        .drop(columns=["_size", "_p"])
        .head(n)
    )
    return picks.assign(reason=[f"most typical page of unlabelled cluster {int(c)}" for c in picks["cluster"]]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# documents and folders
# ---------------------------------------------------------------------------------------------


def document_types(collection: Collection, *, table=None):
    """One row per document with its type, decided from its pages.

    Each page votes with its ``doc_type`` (:func:`type_table`: label, confident prediction, or
    :data:`UNSURE`); the document takes the most-voted type. Ties go to :data:`UNSURE` when it is
    among them (a tie between a type and "fits none" is not a decision), else to the type with the
    highest summed page probability (a label counts 1.0), then the name.

    Returns:
        A ``pandas.DataFrame`` ordered by document_id with columns document_id (int64), path (str),
        file (str), sha256 (str), pages (int64), doc_type (str), probability (float64: mean over the
        pages that voted for it, 1.0 for labels; for :data:`UNSURE`, the mean best-type probability),
        decision (``labelled`` when any voting page is labelled, else ``predicted``, ``unsure`` or
        ``unclassified``), labelled_pages, unsure_pages (int64), model_version (str or None).
    """
    import pandas as pd

    df = type_table(collection) if table is None else table
    df = df.assign(_p=np.where(df["decision"] == "labelled", 1.0, df["type_probability"].fillna(0.0)))
    out = []
    for did, g in df.groupby("document_id", sort=True):
        votes = g.groupby("doc_type").agg(n=("page_id", "size"), p=("_p", "sum"))
        top = votes[votes["n"] == votes["n"].max()]
        if UNSURE in top.index and len(top) > 1:
            winner = UNSURE
        else:
            winner = sorted(top.index, key=lambda t: (-top.loc[t, "p"], t))[0]
        voters = g[g["doc_type"] == winner]
        decision = "labelled" if (voters["decision"] == "labelled").any() else str(voters["decision"].iloc[0])
        versions = g["model_version"].dropna()
        out.append({
            "document_id": int(did), "path": g["path"].iloc[0], "file": Path(g["path"].iloc[0]).name,
            "sha256": g["sha256"].iloc[0], "pages": len(g), "doc_type": winner,
            "probability": float(voters["_p"].mean()), "decision": decision,
            "labelled_pages": int((g["decision"] == "labelled").sum()), "unsure_pages": int((g["decision"] == "unsure").sum()),
            "model_version": versions.iloc[0] if len(versions) else None,
        })
    cols = ["document_id", "path", "file", "sha256", "pages", "doc_type", "probability", "decision", "labelled_pages", "unsure_pages", "model_version"]
    return pd.DataFrame(out, columns=cols)


def type_folders(doc_types: Iterable[str]) -> dict[str, str]:
    """Safe, distinct folder names for document types (as :func:`docsort.jobs.sort.folder_names`
    does for clusters): separators become ``_``, the name passes
    :func:`docsort.core.names.sanitise_name`, and names equal but for case get `` (2)``, `` (3)``..."""
    import re

    from docsort.core.names import sanitise_name

    out: dict[str, str] = {}
    used: set[str] = set()
    for t in sorted(set(doc_types), key=lambda s: (s in (UNSURE, UNCLASSIFIED), s)):
        base = sanitise_name(re.sub(r"[\\/]", "_", t), fallback="type")
        name, i = base, 1
        while name.casefold() in used:
            i += 1
            name = f"{base} ({i})"
        used.add(name.casefold())
        out[t] = name
    return out


def sort_by_type(
    collection: Collection,
    out_dir: str | os.PathLike[str],
    *,
    table=None,
    on_progress: Callable[[int, int], None] | None = None,
    one_per_family: bool = False,
):
    """Copy (never move) every document into ``out_dir/<type>/`` and write the decisions as CSV.

    ``one_per_family``: copy one document per near-duplicate family
    (:func:`docsort.jobs.sort.sort_into_folders`).

    Document types come from :func:`document_types` (pages with neither label nor prediction make
    an ``unclassified/`` folder: run :func:`classify_collection` first). The copying rules are
    those of :func:`docsort.jobs.sort.sort_into_folders` (source checked against its sha256, no
    overwrite, idempotent, atomic per file). ``out_dir/docsort-types.csv`` (written atomically)
    has one row per document: document_id, path, sha256, pages, type, probability, decision,
    labelled_pages, unsure_pages, model_version, folder.

    Returns:
        The :class:`docsort.jobs.sort.SortReport`.

    Raises:
        ValueError: ``out_dir`` is inside the collection or is a file.
        OSError: the output folder cannot be written.
    """
    from docsort.jobs.sort import sort_into_folders

    docs = document_types(collection, table=table)
    folders = type_folders(docs["doc_type"])
    folder_of = {int(d): folders[t] for d, t in zip(docs["document_id"], docs["doc_type"])}
    report = sort_into_folders(collection, out_dir, on_progress=on_progress, folder_of=folder_of, one_per_family=one_per_family)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["document_id", "path", "sha256", "pages", "type", "probability", "decision", "labelled_pages", "unsure_pages", "model_version", "folder"])
    for r in docs.itertuples(index=False):
        w.writerow([r.document_id, r.path, r.sha256, r.pages, r.doc_type, f"{r.probability:.4f}", r.decision,
                    r.labelled_pages, r.unsure_pages, r.model_version or "", folders[r.doc_type]])
    atomic_write_bytes(report.out_dir / DECISIONS_CSV, buf.getvalue().encode("utf-8"))
    return report


def describe(clf: TrainedClassifier) -> dict:
    """A JSON-able summary of a classifier (version, when, labels per type, CV, calibration)."""
    return {
        "version": clf.version, "trained_at": clf.trained_at, "labels": clf.counts, "n_labels": clf.n_labels,
        "cv": asdict(clf.cv), "calibration": clf.calibration, "similarity_floor": clf.similarity_floor,
        "params": clf.params, "seconds": clf.seconds,
    }
