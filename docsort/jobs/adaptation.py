"""The ``docsort adapt`` job: fine-tune the backbone on a collection, then re-embed it (issue 14).

Steps (the caller holds nothing; the job takes the collection's write lock):

1. the pages are re-read from their files (the first recorded path whose bytes still have the
   stored sha256, as the OCR back-fill and the invariance fit do; pages whose file moved or changed
   are skipped for training and counted), at most ``sample_pages`` of them (seeded draw);
2. :func:`docsort.core.adapt.train_contrastive` fine-tunes the collection's backbone on them;
3. the weights are stored in the collection (:meth:`Collection.write_adapted_weights`, sha256 in a
   sidecar) and the manifest's ``"adaptation"`` entry is written with ``state: "re-embedding"``;
4. every page is re-embedded with a fresh extractor built from the stored file and its vector is
   *staged* (:meth:`Collection.stage_vectors`) while the old vectors stay in use; a crash here
   leaves the staged vectors, and the next ``docsort adapt`` finishes the missing pages without
   training again;
5. when every page has a staged vector, one transaction swaps them in
   (:meth:`Collection.swap_in_staged_vectors`); the manifest's ``features`` then describe the
   adapted weights (so ingest with any other weights is refused), the invariance projection is
   marked stale (``docsort cluster`` refits it) and the FAISS index is rebuilt.

Vectors of the adapted and the unadapted network are thus never used together: the ``pages``
table holds one or the other, and the manifest says which.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from docsort.config.settings import PipelineSettings
from docsort.core.adapt import (AUGMENTATIONS, DEFAULT_TRAINING_PRECISION, LAYER_CHOICES, OBJECTIVE, TRAINING_PRECISIONS,
                                AdaptError, train_contrastive)
from docsort.core.pages import to_network_input

# docsort.store.storage first: it loads Python's sqlite3 (with FTS5) before TensorFlow, whose bundled
# SQLite lacks FTS5 and would otherwise be the one _sqlite3 binds to.
from docsort.store.storage import Collection  # noqa: I001

__all__ = ["AdaptReport", "adapt"]

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class AdaptReport:
    """What one ``docsort adapt`` did.

    Attributes:
        trained: whether training ran (``False`` when a previous run's re-embedding was resumed).
        pages_trained: pages trained on; pages_skipped: pages whose file moved or changed.
        epochs_run, losses, train_seconds: from :class:`docsort.core.adapt.TrainReport`.
        stopped_by_budget: the ``--minutes`` budget cut training short.
        pages_embedded: pages re-embedded in this run; pages_resumed: staged by an earlier run.
        embed_seconds: wall time of the re-embedding, seconds.
        weights_sha256: sha256 of the stored adapted weights.
        index: what happened to the FAISS index.
    """

    trained: bool = False
    pages_trained: int = 0
    pages_skipped: int = 0
    epochs_run: int = 0
    losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    stopped_by_budget: bool = False
    pages_embedded: int = 0
    pages_resumed: int = 0
    embed_seconds: float = 0.0
    weights_sha256: str = ""
    index: str = ""


def adapt(
    collection: Collection,
    settings: PipelineSettings,
    *,
    epochs: int = 5,
    minutes: float | None = None,
    layers: str = "mixed1",
    seed: int = 0,
    batch_size: int = 16,
    learning_rate: float = 3e-4,
    temperature: float = 0.1,
    precision: str = DEFAULT_TRAINING_PRECISION,
    sample_pages: int = 2000,
    progress: bool = True,
    log: Log = _stderr,
    lock_timeout_s: float = 600.0,
) -> AdaptReport:
    """Fine-tune the collection's backbone on its own pages and re-embed every page (module docstring).

    Args:
        collection: an existing collection with pages.
        settings: its effective settings (:func:`docsort.store.manifest.effective_settings`); the
            network input size and pooling are the collection's.
        epochs, minutes, layers, seed, batch_size, learning_rate, temperature, precision: see
            :func:`docsort.core.adapt.train_contrastive` (``precision`` is that of training only: the
            stored weights are float32 and the pages are re-embedded at the collection's precision).
        sample_pages: train on at most this many pages (a seeded draw; all of a smaller collection).
        progress: tqdm bars on stderr.

    Returns:
        An :class:`AdaptReport`.

    Raises:
        AdaptError: an unknown ``layers`` or ``precision``, an empty collection, a hub backbone,
            fewer than 2 readable pages, or pages that cannot be re-read for re-embedding (their
            file moved: nothing is swapped, the old vectors stay; restore the files and run again).
        CollectionError, WeightsError, BackboneError: as for ingest.
    """
    from tqdm import tqdm

    from docsort.core.weights import read_sidecar
    from docsort.jobs.invariance import reread_pages
    from docsort.store.manifest import _check_extractor, library_versions, make_extractor, write_manifest

    if layers not in LAYER_CHOICES:
        raise AdaptError(f"unknown --layers {layers!r}; use one of {', '.join(LAYER_CHOICES)}")
    if precision not in TRAINING_PRECISIONS:
        raise AdaptError(f"unknown --precision {precision!r}; use one of {', '.join(TRAINING_PRECISIONS)}")
    if settings.features.backbone != "inception_v3":
        raise AdaptError("docsort adapt fine-tunes the InceptionV3 backbone only, not hub: backbones")
    report = AdaptReport()
    with collection.write_lock(lock_timeout_s):
        manifest = collection.manifest()
        ids = collection.page_ids()
        if manifest is None or len(ids) == 0:
            raise AdaptError(f"{collection.root}: no pages yet; ingest some first")
        entry = manifest.get("adaptation") or {}
        wpath = collection.adapted_weights_path
        resume = (entry.get("state") == "re-embedding" and wpath.is_file()
                  and (read_sidecar(wpath) or {}).get("sha256") == entry.get("sha256"))
        if resume:
            log(f"adapt: resuming the re-embedding of an earlier run (weights sha256 {entry['sha256'][:12]})")
        else:
            base = make_extractor(settings, announce=False)
            _check_extractor(collection, base)
            if base.description["dtype_policy"] != "float32":
                raise AdaptError("docsort adapt trains in float32; set features.precision = float32")
            if len(ids) > sample_pages:
                sample = np.sort(np.random.default_rng(seed).choice(ids, sample_pages, replace=False))
            else:
                sample = ids
            bar = tqdm(total=len(sample), desc="reading pages", unit="page", disable=not progress, file=sys.stderr)
            pages, skipped = [], []
            for pid, image in reread_pages(collection, settings.render, sample, log=log, what="adapt"):
                if image is None:
                    skipped.append(pid)
                else:
                    pages.append(image)
                    bar.update(1)
            bar.close()
            report.pages_trained, report.pages_skipped = len(pages), len(skipped)
            if len(pages) < 2:
                raise AdaptError(f"only {len(pages)} pages could be re-read from their files ({len(skipped)} moved or changed)")
            steps_per_epoch = -(-len(pages) // batch_size)
            bar = tqdm(total=epochs * len(pages), desc="adapting the network", unit="view pair", disable=not progress,
                       file=sys.stderr)
            tr = train_contrastive(base.model, pages, preprocessing=base.weights.preprocessing, layers=layers, epochs=epochs,
                                   minutes=minutes, batch_size=batch_size, learning_rate=learning_rate,
                                   temperature=temperature, seed=seed, channels=base.channels, precision=precision,
                                   on_step=bar.update)
            bar.close()
            del pages
            report.trained = True
            report.epochs_run, report.losses, report.train_seconds = tr.epochs_run, tr.losses, tr.seconds
            report.stopped_by_budget = tr.stopped_by_budget
            with tempfile.TemporaryDirectory(dir=collection.root) as tmp:
                f = Path(tmp) / Collection.ADAPTED_WEIGHTS
                base.model.save_weights(str(f))
                data = f.read_bytes()
            base_w = manifest["features"]["weights"]
            sha = collection.write_adapted_weights(data, {
                "preprocessing": base.weights.preprocessing, "scope": "truncated", "layer": settings.features.layer,
                "base_weights": {"source": base_w.get("source"), "sha256": base_w.get("sha256")},
            })
            collection.discard_staged_vectors()
            entry = {
                "state": "re-embedding", "file": Collection.ADAPTED_WEIGHTS, "sha256": sha,
                "base_weights": base_w, "base_features": {k: v for k, v in manifest["features"].items() if k != "weights"},
                "objective": {**OBJECTIVE, "temperature": temperature}, "augmentations": AUGMENTATIONS,
                "layers": layers, "epochs": epochs, "epochs_run": tr.epochs_run, "minutes_budget": minutes,
                "stopped_by_budget": tr.stopped_by_budget, "steps": tr.steps, "losses": [round(x, 5) for x in tr.losses],
                "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed, "optimizer": "Adam",
                "training_precision": precision,
                "trainable_params": tr.trainable_params, "pages_trained": report.pages_trained,
                "pages_skipped": report.pages_skipped, "steps_per_epoch": steps_per_epoch,
                "train_seconds": round(tr.seconds, 2), "libraries": library_versions(),
                "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            manifest["adaptation"] = entry
            write_manifest(collection, manifest)
            log(f"adapt: trained {tr.epochs_run} epoch(s) on {len(sample) - len(skipped)} pages in {tr.seconds:.1f} s"
                + (" (stopped by the time budget)" if tr.stopped_by_budget else ""))
        report.weights_sha256 = sha = entry["sha256"]

        # -- re-embed every page with the stored adapted weights ---------------------------
        adapted_settings = settings.with_overrides(weights=str(wpath), weights_sha256=sha)
        extractor = make_extractor(adapted_settings, announce=False)
        done = collection.staged_page_ids(sha)
        collection.discard_staged_vectors(keep_sha256=sha)
        todo = [int(i) for i in ids if int(i) not in done]
        report.pages_resumed = len(done)
        t0 = time.perf_counter()
        bar = tqdm(total=len(ids), initial=len(done), desc="re-embedding", unit="page", disable=not progress, file=sys.stderr)
        batch, owners = [], []

        def flush() -> None:
            if batch:
                collection.stage_vectors(owners, extractor.embed(np.stack(batch)), sha)
                report.pages_embedded += len(owners)
                bar.update(len(owners))
                batch.clear()
                owners.clear()

        missing: list[int] = []
        try:
            for pid, image in (reread_pages(collection, settings.render, todo, log=log, what="adapt") if todo else ()):
                if image is None:
                    missing.append(pid)
                    continue
                batch.append(to_network_input(image, extractor.input_size))
                owners.append(pid)
                if len(batch) >= extractor.batch_size:
                    flush()
            flush()
        finally:
            bar.close()
        report.embed_seconds = time.perf_counter() - t0
        if missing:
            raise AdaptError(
                f"{len(missing)} pages could not be re-read from their files for re-embedding (moved or changed; see above); "
                "the collection keeps its old vectors. Restore the files and run docsort adapt again to finish.")
        collection.swap_in_staged_vectors(sha)
        manifest = collection.manifest() or {}
        manifest["features"] = extractor.description
        manifest["pipeline"] = adapted_settings.model_dump(mode="json")
        entry = manifest["adaptation"]
        entry.update(state="done", pages_embedded=int(len(ids)),
                     embedded_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        if manifest.get("invariance"):
            manifest["invariance"]["active"] = False  # fitted on the old vectors: docsort cluster refits it
        write_manifest(collection, manifest)
        from docsort.store.index_file import sync_index

        for p in [collection.index_path(), *collection.root.glob("index.*.faiss")]:
            if p.exists():
                p.unlink()
        _, info = sync_index(collection, settings.index)
        report.index = f"{info.action} ({info.kind}, {info.ntotal} vectors)"
        log(f"adapt: re-embedded {len(ids)} pages with the adapted weights ({report.pages_embedded} in this run); "
            "run docsort cluster to re-cluster them")
    return report
