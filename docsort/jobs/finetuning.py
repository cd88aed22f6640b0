"""The ``docsort classify --fine-tune`` job: fine-tune the backbone's last blocks and a softmax head on
the labelled pages, compare with the frozen-feature classifier on the same folds, keep the better.

Steps (the job takes the collection's write lock):

1. the labelled pages are re-read from their files (:func:`docsort.jobs.invariance.reread_pages`, the
   rule of the OCR back-fill and ``docsort adapt``); labelled pages whose file moved or changed
   are counted and left out;
2. folds: ``StratifiedKFold(k = min(5, fewest labels of a type), shuffle=True, random_state=0)``,
   the split the frozen classifier's own cross-validation uses above
   :data:`docsort.jobs.classify.LOO_MAX_LABELS` labels (:func:`docsort.jobs.classify._cross_validate`; it
   is stratified by type, not grouped by document). Leave-one-out, which that CV uses for few
   labels, would mean one fine-tuning per labelled page, so both models are scored on these k
   folds here: the frozen classifier (``StandardScaler -> LogisticRegression`` on the stored
   vectors, :func:`docsort.jobs.classify._base_model`) and the fine-tuned recipe
   (:func:`docsort.core.finetune.cross_validate`);
3. the fine-tuned model is kept only if its accuracy is *higher* than the frozen one's (ties go
   to the frozen classifier: it is cheaper and needs no re-read of the pages). If kept, it is
   trained on every readable labelled page, its weights (backbone and head, Keras
   ``.weights.h5``) are stored as :data:`Collection.FINE_TUNED` with their sha256 (sidecar JSON,
   atomic writes), and it types every unlabelled page, re-read from its file; unlabelled pages
   whose file moved or changed are counted and left untyped (no prediction). Otherwise the frozen
   classifier types the pages (:func:`docsort.jobs.classify.classify_collection`).
4. the manifest's ``"fine_tune"`` entry records both accuracies, the folds, the training
   settings, which model is in use (``in_use``: ``"fine-tuned"`` | ``"frozen"``), the weights'
   sha256 and the label set hash; ``docsort info`` shows it.

While the fine-tuned model is in use, pages ingested later are typed by it, never by the frozen
classifier (ingest and cluster call :func:`type_after_ingest`, which calls :func:`type_new_pages`: it rebuilds
the model from the stored weights and standardisation, both checked against their sha256); it is
not retrained then (a changed label set is reported: ``docsort classify --fine-tune`` retrains). A
plain ``docsort classify`` goes back to the frozen one.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# docsort.store.storage first: it loads Python's sqlite3 (with FTS5) before TensorFlow.
from docsort.store.storage import Collection, atomic_write_bytes  # noqa: I001

from docsort.store import labels as store_labels
from docsort.store.manifest import fine_tuned_in_use, forget_fine_tuned, write_manifest  # noqa: F401 (the first two: part of this job's API)
from docsort.core.adapt import AUGMENTATIONS, LAYER_CHOICES
from docsort.core.finetune import HEAD, FineTuneError, cross_validate, predict, train_classifier
from docsort.config.settings import PipelineSettings

__all__ = ["FineTuneReport", "NewPagesTyping", "fine_tune", "type_new_pages", "type_after_ingest", "type_missing_pages", "fine_tuned_in_use", "forget_fine_tuned"]

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class FineTuneReport:
    """What one ``docsort classify --fine-tune`` did.

    Attributes:
        labelled: labelled pages; labelled_skipped: of those, not re-readable (file moved/changed).
        folds: k of the k-fold split; cv_method: the split in words.
        frozen_accuracy: the frozen-feature classifier's accuracy on those folds (0..1).
        fine_tuned_accuracy: the fine-tuned recipe's accuracy on the same folds (0..1).
        baseline: the accuracy the fine-tuned model had to beat (``frozen_accuracy`` unless the
            caller gave another).
        kept: whether the fine-tuned model is in use; in_use: ``"fine-tuned"`` or ``"frozen"``.
        typed: unlabelled pages given a type now; unsure: of those, below the threshold;
        untyped_moved: unlabelled pages left untyped because their file moved or changed.
        weights_sha256: of the stored fine-tuned weights ("" when not kept).
        train_seconds: wall time of all training (folds and final), seconds.
        stopped_by_budget: a time budget cut some training short.
    """

    labelled: int = 0
    labelled_skipped: int = 0
    folds: int = 0
    cv_method: str = ""
    frozen_accuracy: float = 0.0
    fine_tuned_accuracy: float = 0.0
    baseline: float = 0.0
    kept: bool = False
    in_use: str = "frozen"
    typed: int = 0
    unsure: int = 0
    untyped_moved: int = 0
    weights_sha256: str = ""
    train_seconds: float = 0.0
    stopped_by_budget: bool = False
    fold_losses: list[list[float]] = field(default_factory=list)


def fine_tune(
    collection: Collection,
    settings: PipelineSettings,
    *,
    epochs: int = 10,
    minutes: float | None = None,
    layers: str = "mixed1",
    seed: int = 0,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    threshold: float | None = None,
    baseline: float | None = None,
    progress: bool = True,
    log: Log = _stderr,
    lock_timeout_s: float = 600.0,
) -> FineTuneReport:
    """Fine-tune on the labels, compare with the frozen classifier, keep the better (module docstring).

    Args:
        collection: a collection with labelled pages of at least two types, two or more each.
        settings: its effective settings (:func:`docsort.store.manifest.effective_settings`).
        epochs, layers, seed, batch_size, learning_rate: see :func:`docsort.core.finetune.train_classifier`.
        minutes: time budget for all training, minutes, shared equally by the k folds and the
            final run (each stops after the step that crosses its share).
        threshold: probability below which a page is "unsure" (default the pipeline's).
        baseline: the accuracy the fine-tuned model must beat; default the frozen classifier's on
            the same folds. Benchmarks and tests give a fixed one (the frozen accuracy is still
            measured and reported).
        progress: tqdm bar on stderr.

    Returns:
        A :class:`FineTuneReport`.

    Raises:
        FineTuneError: a hub backbone, a non-float32 collection, a bad ``layers``, fewer than two
            types or a type with fewer than two readable labelled pages.
        ClassifierError, CollectionError, WeightsError: as for ``docsort classify`` and ingest.
        CollectionBusyError: another writer held the lock for ``lock_timeout_s``.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from tqdm import tqdm

    from docsort.jobs import classify as cl
    from docsort.store.manifest import _check_extractor, library_versions, make_extractor
    from docsort.jobs.invariance import reread_pages
    from docsort.core.weights import sidecar_path

    if layers not in LAYER_CHOICES:
        raise FineTuneError(f"unknown --layers {layers!r}; use one of {', '.join(LAYER_CHOICES)}")
    if settings.features.backbone != "inception_v3":
        raise FineTuneError("classify --fine-tune trains the InceptionV3 backbone only, not hub: backbones")
    csettings = settings.classifier
    threshold = csettings.threshold if threshold is None else float(threshold)
    report = FineTuneReport()
    with collection.write_lock(lock_timeout_s, on_wait=log):
        rows = store_labels.label_pairs(collection)
        label_of = {int(p): str(t) for p, t in rows}
        if len(set(label_of.values())) < 2:
            raise cl.ClassifierError("label pages of at least two document types to fine-tune a classifier "
                                     f"(labelled: {', '.join(sorted(set(label_of.values()))) or 'none'})")
        extractor = make_extractor(settings, announce=False)
        _check_extractor(collection, extractor)
        if extractor.description["dtype_policy"] != "float32":
            raise FineTuneError("classify --fine-tune trains in float32; set features.precision = float32")
        backbone, channels = extractor.model, extractor.channels
        mode = "L" if channels == 1 else "RGB"

        # 1. the labelled pages, re-read
        images, ids, skipped = {}, [], 0
        for pid, image in reread_pages(collection, settings.render, sorted(label_of), log=log, what="fine-tune"):
            if image is None:
                skipped += 1
            else:
                images[pid] = image.convert(mode)
        ids = sorted(images)
        report.labelled, report.labelled_skipped = len(label_of), skipped
        if skipped:
            log(f"fine-tune: {skipped} labelled page(s) left out: their file moved or changed")
        y = np.asarray([label_of[i] for i in ids], dtype=object)
        types, counts = np.unique(y, return_counts=True)
        if len(types) < 2 or counts.min() < 2:
            few = ", ".join(f"{t!r} ({c})" for t, c in zip(types, counts) if c < 2) or "only one type"
            raise FineTuneError("classify --fine-tune needs at least two readable labelled pages of each of two or more "
                                f"types to cross-validate; too few: {few}")

        # 2. the same folds for both models
        k = int(min(5, counts.min()))
        folds = list(StratifiedKFold(k, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
        report.folds = k
        report.cv_method = f"stratified {k}-fold (shuffled, random_state 0), {len(y)} labelled pages"
        _, X, _ = cl._vectors(collection, ids)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            frozen_pred = cross_val_predict(cl._base_model(csettings), X, y, cv=folds)
        report.frozen_accuracy = float(np.mean(frozen_pred == y))
        per_run = None if minutes is None else minutes / (k + 1)
        imgs = [images[i] for i in ids]
        kw = dict(preprocessing=extractor.weights.preprocessing, pooling=settings.features.pooling, layers=layers,
                  epochs=epochs, minutes=per_run, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                  channels=channels)
        total = epochs * (sum(len(tr) for tr, _ in folds) + len(ids))
        bar = tqdm(total=total, desc="fine-tuning (cross-validation)", unit="page", disable=not progress, file=sys.stderr)
        acc, _, fold_reports = cross_validate(backbone, imgs, y, folds, on_step=bar.update, **kw)
        report.fine_tuned_accuracy = acc
        report.fold_losses = [r.losses for r in fold_reports]
        report.train_seconds = sum(r.seconds for r in fold_reports)
        report.stopped_by_budget = any(r.stopped_by_budget for r in fold_reports)
        report.baseline = report.frozen_accuracy if baseline is None else float(baseline)
        report.kept = report.fine_tuned_accuracy > report.baseline
        log(f"fine-tune: cross-validated accuracy ({report.cv_method}): frozen features {report.frozen_accuracy:.3f}, "
            f"fine-tuned {report.fine_tuned_accuracy:.3f}")
        manifest = collection.manifest() or {}
        entry = {
            "cv_method": report.cv_method, "folds": k, "frozen_accuracy": round(report.frozen_accuracy, 4),
            "fine_tuned_accuracy": round(report.fine_tuned_accuracy, 4), "baseline": round(report.baseline, 4),
            "kept": report.kept, "layers": layers, "epochs": epochs, "minutes_budget": minutes, "batch_size": batch_size,
            "learning_rate": learning_rate, "backbone_learning_rate": learning_rate / 10.0, "optimizer": "Adam",
            "seed": seed, "head": HEAD, "augmentations": AUGMENTATIONS, "labelled_pages": len(ids),
            "labelled_skipped": skipped, "label_hash": cl.label_set_hash(collection),
            "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "libraries": library_versions(),
        }

        if not report.kept:
            bar.close()
            log("fine-tune: not kept (not more accurate than the frozen-feature classifier); the frozen one types the pages")
            manifest["fine_tune"] = {**entry, "in_use": "frozen"}
            write_manifest(collection, manifest)
            res = cl.classify_collection(collection, csettings, threshold=threshold, lock=False, log=log)
            manifest = collection.manifest() or {}
            if manifest.get("classifier"):
                manifest["classifier"]["in_use"] = "frozen"
                write_manifest(collection, manifest)
            report.typed, report.unsure, report.in_use = res.classified, res.unsure, "frozen"
            return report

        # 3. kept: train on every readable labelled page, store, type the unlabelled pages
        tuned = train_classifier(backbone, imgs, list(y), on_step=bar.update, **kw)
        bar.close()
        report.train_seconds += tuned.report.seconds
        report.stopped_by_budget |= tuned.report.stopped_by_budget
        with tempfile.TemporaryDirectory(dir=collection.root) as tmp:
            f = Path(tmp) / Collection.FINE_TUNED
            tuned.model.save_weights(str(f))
            data = f.read_bytes()
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(collection.root / Collection.FINE_TUNED, data)
        side = {"sha256": sha, "classes": tuned.classes, "preprocessing": kw["preprocessing"], "pooling": kw["pooling"],
                "scope": "truncated backbone + type head", "layer": settings.features.layer,
                "base_weights": (manifest.get("features") or {}).get("weights"),
                # Keras' Normalization keeps these as constants, outside the weights file (core.finetune.FineTuned)
                "standardise_mean": [float(x) for x in tuned.mean],
                "standardise_variance": [float(x) for x in tuned.variance],
                "standardise_sha256": _standardise_sha256(tuned.mean, tuned.variance)}
        atomic_write_bytes(sidecar_path(collection.root / Collection.FINE_TUNED),
                           json.dumps(side, indent=2, sort_keys=True).encode("utf-8") + b"\n")
        report.weights_sha256 = sha
        version = "ft-" + sha[:9]
        todo = [int(i) for i in store_labels.pages_to_predict(collection)]
        out_rows, moved = _type_pages(collection, settings, tuned, version, threshold, todo, extractor.input_size,
                                      mode, progress=progress, log=log)
        store_labels.replace_predictions(collection, out_rows, drop_all=True)
        report.typed, report.untyped_moved = len(out_rows), moved
        report.unsure = sum(r[4] for r in out_rows)
        report.in_use = "fine-tuned"
        if moved:
            log(f"fine-tune: {moved} unlabelled page(s) left untyped: their file moved or changed "
                "(restore the files and run docsort classify --fine-tune again)")
        manifest = collection.manifest() or {}
        manifest["fine_tune"] = {**entry, "in_use": "fine-tuned", "file": Collection.FINE_TUNED, "sha256": sha,
                                 "standardise_sha256": side["standardise_sha256"], "classes": tuned.classes, "model_version": version, "threshold": threshold,
                                 "typed": report.typed, "untyped_moved": moved,
                                 "final_epochs_run": tuned.report.epochs_run,
                                 "final_losses": [round(x, 5) for x in tuned.report.losses]}
        if manifest.get("classifier"):
            manifest["classifier"]["in_use"] = "fine-tuned"
        write_manifest(collection, manifest)
    return report


def _standardise_sha256(mean: np.ndarray, variance: np.ndarray) -> str:
    """sha256 of the head's standardisation: float32 little-endian mean then variance."""
    import hashlib

    return hashlib.sha256(np.asarray(mean, "<f4").tobytes() + np.asarray(variance, "<f4").tobytes()).hexdigest()


def _type_pages(collection: Collection, settings: PipelineSettings, tuned, version: str, threshold: float,
                todo: list[int], size: tuple[int, int], mode: str, *, progress: bool, log: Log) -> tuple[list[tuple], int]:
    """Type pages with a fine-tuned classifier, re-read from their files, 16 at a time.

    Returns:
        ``(rows, moved)``: prediction rows ``(page_id, type, probability, None, unsure, threshold,
        version, at)`` for :func:`docsort.store.labels.replace_predictions`, and how many pages were
        left untyped because their file moved or changed.
    """
    from tqdm import tqdm

    from docsort.core.pages import to_network_input
    from docsort.jobs.invariance import reread_pages

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out_rows, batch, owners, moved = [], [], [], 0

    def flush() -> None:
        if batch:
            P = predict(tuned, np.stack(batch))
            best = P.argmax(axis=1)
            for pid, b, p in zip(owners, best, P):
                prob = float(p[b])
                out_rows.append((pid, tuned.classes[b], prob, None, int(prob < threshold), threshold, version, now))
            batch.clear()
            owners.clear()

    bar = tqdm(total=len(todo), desc="typing pages", unit="page", disable=not progress, file=sys.stderr)
    for pid, image in (reread_pages(collection, settings.render, todo, log=log, what="fine-tune") if todo else ()):
        if image is None:
            moved += 1
            continue
        batch.append(to_network_input(image.convert(mode), size))
        owners.append(int(pid))
        bar.update(1)
        if len(batch) >= 16:
            flush()
    flush()
    bar.close()
    return out_rows, moved


@dataclass
class NewPagesTyping:
    """What :func:`type_new_pages` did.

    Attributes:
        typed: pages given a type by the fine-tuned classifier; unsure: of those, below the threshold.
        untyped_moved: pages left untyped because their file moved or changed.
        model_version: ``"ft-"`` and the first 9 hex digits of the weights' sha256.
        labels_changed: the labels differ from those the model was trained on (it is not retrained
            here: that takes minutes; ``docsort classify --fine-tune`` does it).
    """

    typed: int = 0
    unsure: int = 0
    untyped_moved: int = 0
    model_version: str = ""
    labels_changed: bool = False


def type_new_pages(collection: Collection, settings: PipelineSettings, *, threshold: float | None = None,
                   progress: bool = False, log: Log = _stderr) -> NewPagesTyping:
    """Type the unlabelled pages that have no prediction of the fine-tuned classifier in use (pages
    ingested after ``docsort classify --fine-tune``), with the stored model. The caller holds the
    write lock (:func:`type_after_ingest`, called by ingest and cluster).

    The model is rebuilt from the collection's files: the backbone from the collection's own
    weights (:func:`docsort.store.manifest.make_extractor`, checked against the manifest), then
    :data:`Collection.FINE_TUNED` (its sha256 must be the manifest's) and the standardisation in
    its sidecar (its sha256 too) by :func:`docsort.core.finetune.load_classifier`. Pages are
    re-read from their files, as ``classify --fine-tune`` types them; the predictions of other
    pages are kept.

    Args:
        collection: a collection whose manifest says the fine-tuned classifier is in use.
        settings: its effective settings.
        threshold: probability below which a page is "unsure" (default the pipeline's ``[classifier] threshold``).
        progress: tqdm bar on stderr.

    Returns:
        A :class:`NewPagesTyping` (all zero when every unlabelled page has a prediction already).

    Raises:
        FineTuneError: the fine-tuned classifier is not in use, its weights file is missing or its
            sha256 is not the manifest's, or the collection was fine-tuned before the
            standardisation was stored (run ``docsort classify --fine-tune`` again).
        CollectionError, WeightsError: the collection's own weights do not load or do not match.
    """
    from docsort.core.finetune import load_classifier
    from docsort.store.manifest import _check_extractor, make_extractor
    from docsort.core.weights import file_sha256, sidecar_path
    from docsort.jobs import classify as cl

    entry = (collection.manifest() or {}).get("fine_tune") or {}
    if entry.get("in_use") != "fine-tuned":
        raise FineTuneError("the fine-tuned classifier is not in use in this collection")
    f = collection.root / Collection.FINE_TUNED
    if not f.is_file():
        raise FineTuneError(f"{f}: the fine-tuned classifier's weights are missing; run docsort classify --fine-tune")
    if file_sha256(f) != entry.get("sha256"):
        raise FineTuneError(f"{f}: sha256 is not the one the manifest records; run docsort classify --fine-tune")
    try:
        side = json.loads(sidecar_path(f).read_text(encoding="utf-8"))
        mean = np.asarray(side["standardise_mean"], np.float32)
        variance = np.asarray(side["standardise_variance"], np.float32)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FineTuneError(f"{sidecar_path(f)}: no usable standardisation of the type head ({exc.__class__.__name__}): "
                            "this collection was fine-tuned by an older docsort; run docsort classify --fine-tune again") from exc
    if _standardise_sha256(mean, variance) != entry.get("standardise_sha256"):
        raise FineTuneError(f"{sidecar_path(f)}: the standardisation's sha256 is not the one the manifest records; "
                            "run docsort classify --fine-tune")
    version = entry.get("model_version") or "ft-" + entry["sha256"][:9]
    result = NewPagesTyping(model_version=version, labels_changed=entry.get("label_hash") != cl.label_set_hash(collection))
    todo = [int(i) for i in store_labels.pages_to_predict(collection, version)]
    if not todo:
        return result
    extractor = make_extractor(settings, announce=False)
    _check_extractor(collection, extractor)
    mode = "L" if extractor.channels == 1 else "RGB"
    tuned = load_classifier(extractor.model, f, entry["classes"], mean, variance,
                            preprocessing=side.get("preprocessing", extractor.weights.preprocessing),
                            pooling=side.get("pooling", settings.features.pooling), channels=extractor.channels)
    threshold = settings.classifier.threshold if threshold is None else float(threshold)
    rows, moved = _type_pages(collection, settings, tuned, version, threshold, todo, extractor.input_size, mode,
                              progress=progress, log=log)
    store_labels.replace_predictions(collection, rows, drop_all=False)
    result.typed, result.untyped_moved = len(rows), moved
    result.unsure = sum(r[4] for r in rows)
    return result


def type_after_ingest(collection: Collection, settings: PipelineSettings, *, log: Log | None = None) -> None:
    """Document types for newly ingested pages, by whichever classifier the collection uses; none
    without a classifier. Called by :func:`docsort.jobs.ingest.ingest` and
    :func:`docsort.jobs.cluster.cluster`, which hold the write lock.

    With the fine-tuned classifier in use (:func:`fine_tuned_in_use`), :func:`type_new_pages`; a
    model that cannot be loaded (:class:`~docsort.core.finetune.FineTuneError`) is reported through
    ``log`` and not raised (the pages are stored already; they stay untyped). Otherwise the frozen
    classifier's :func:`docsort.jobs.classify.after_ingest`.

    Args:
        collection: the collection just ingested into or clustered.
        settings: its :class:`~docsort.config.settings.PipelineSettings`.
        log: where a one-line summary goes.
    """
    from docsort.jobs import classify as cl

    if not fine_tuned_in_use(collection):
        cl.after_ingest(collection, settings, log=log)
        return
    try:
        done = type_new_pages(collection, settings, log=log or (lambda _m: None))
    except FineTuneError as exc:
        if log:
            log(f"new pages not typed: {exc}")
        return
    if log and (done.typed or done.untyped_moved):
        log(f"typed {done.typed} new pages with the fine-tuned classifier {done.model_version} ({done.unsure} unsure)"
            + (f"; {done.untyped_moved} left untyped: their file moved or changed" if done.untyped_moved else "")
            + ("; the labels changed since it was trained: docsort classify --fine-tune retrains it"
               if done.labels_changed else ""))


def type_missing_pages(collection: Collection, settings: PipelineSettings, *, lock_timeout_s: float = 600.0,
                       log: Log | None = None) -> None:
    """:func:`type_after_ingest` under the collection's write lock: for a command that is about to
    use the fine-tuned classifier's types (``docsort sort-by-type``) and must first type the pages
    that have none yet (ingested while its model could not be loaded, or whose file was back).

    Args:
        collection: an open collection; settings: its effective settings.
        lock_timeout_s: seconds to wait for another writer.
        log: where a one-line summary (or why nothing was typed) goes.

    Raises:
        CollectionBusyError: another writer held the lock for ``lock_timeout_s``.
    """
    with collection.write_lock(lock_timeout_s, on_wait=log):
        type_after_ingest(collection, settings, log=log)
