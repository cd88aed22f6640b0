"""Uploads: files that arrive with a browser's name are stored under the collection's ``uploads/``
folder by content hash and ingested with :func:`docsort.jobs.ingest.ingest`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from docsort.core.names import sanitise_name
from docsort.core.pages import sha256_file
from docsort.store.storage import Collection, atomic_write_bytes

#: Folder, inside the collection directory, that holds uploaded files (they are the stored
#: documents' sources afterwards, so they stay there).
UPLOADS_DIR = "uploads"


#: File extensions accepted from an upload (the content is still checked by the pages stage).
UPLOAD_EXTENSIONS = (".pdf", ".tif", ".tiff", ".png", ".jpg", ".jpeg")


#: Default cap on one uploaded file, bytes (the app's ``server.maxUploadSize`` is the same 200 MB).
DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024


def save_upload(
    collection_root: str | os.PathLike[str],
    name: str,
    data: bytes,
    *,
    max_bytes: int | None = DEFAULT_MAX_UPLOAD_BYTES,
) -> Path:
    """Store uploaded bytes under the collection as ``uploads/<sha256[:16]>/<sanitised name>``.

    The client's name only ever contributes one sanitised path component (:func:`sanitise_name`);
    the folder is derived from the content's sha256, so two uploads with the same name never
    collide and the stored document keeps a readable file name. Writing is atomic; storing the
    same bytes under the same name again reuses the file.

    Args:
        collection_root: the collection directory.
        name: the client's file name (untrusted).
        data: the file's bytes.
        max_bytes: largest accepted size, bytes (``None``: no limit).

    Returns:
        The absolute path of the stored file.

    Raises:
        ValueError: the upload is empty, larger than ``max_bytes``, or its name does not end in
            one of :data:`UPLOAD_EXTENSIONS`.
    """
    if not data:
        raise ValueError("the file is empty")
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"the file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
    safe = sanitise_name(name)
    if Path(safe).suffix.lower() not in UPLOAD_EXTENSIONS:
        raise ValueError("not a PDF, TIFF, PNG or JPEG file (by its name)")
    sha = hashlib.sha256(data).hexdigest()
    folder = Path(collection_root).resolve() / UPLOADS_DIR / sha[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / safe
    if not (path.is_file() and path.stat().st_size == len(data) and sha256_file(path) == sha):
        atomic_write_bytes(path, data)
    return path


@dataclass
class UploadOutcome:
    """What happened to one uploaded file.

    Attributes:
        name: the sanitised file name (what the user sees).
        status: ``added`` (new document stored), ``already`` (its bytes were already in the
            collection), ``failed`` (not readable as a document) or ``rejected`` (empty, too large,
            wrong kind of name; nothing was written).
        message: a sentence for the user.
        stored_path: where the file was stored (``None`` when rejected or already stored).
        document_id: the stored document (for ``added`` and ``already``).
        page_ids: its page ids, ascending (empty when none).
    """

    name: str
    status: Literal["added", "already", "failed", "rejected"]
    message: str
    stored_path: Path | None = None
    document_id: int | None = None
    page_ids: list[int] = field(default_factory=list)


def ingest_uploads(
    collection: Collection,
    files: Sequence[tuple[str, bytes]],
    settings,
    *,
    extractor=None,
    extractor_factory: Callable[[], object] | None = None,
    max_bytes: int | None = DEFAULT_MAX_UPLOAD_BYTES,
    on_progress: Callable[[int, int], None] | None = None,
    lock_timeout_s: float = 30.0,
    log: Callable[[str], None] | None = None,
):
    """Store uploaded files under the collection (:func:`save_upload`) and ingest the new ones.

    Files whose bytes are already in the collection (or repeat an earlier file of the same batch)
    are reported as ``already`` and not written again. The rest are ingested in one call of
    :func:`docsort.jobs.ingest.ingest`; a file it cannot read is reported as ``failed`` with the reason
    and its stored copy removed.

    Args:
        collection: an open collection (may be empty).
        files: ``(client file name, bytes)`` pairs.
        settings: from :func:`docsort.store.manifest.effective_settings`.
        extractor: a built :class:`~docsort.core.features.FeatureExtractor` to reuse.
        extractor_factory: called (once, without arguments) for an extractor when ``extractor`` is
            ``None`` and something new is to be ingested, so a UI builds or fetches its cached
            TensorFlow model only when needed. With neither, ``ingest`` builds one.
        max_bytes: per-file size limit, bytes.
        on_progress: ``(pages_done, pages_total)`` callback, forwarded to ``ingest``.
        lock_timeout_s: how long to wait for another writer, seconds.
        log: where ingest's messages go (default: discarded).

    Returns:
        ``(outcomes, report)``: one :class:`UploadOutcome` per input file, in input order, and the
        :class:`~docsort.jobs.ingest.IngestReport` (``None`` when nothing needed ingesting).

    Raises:
        CollectionBusyError: another writer held the lock for ``lock_timeout_s``.
        CollectionError: the collection was built with other weights or settings.
        PopplerMissingError, WeightsError, BackboneError: as :func:`docsort.jobs.ingest.ingest`.
    """
    from docsort.jobs.ingest import ingest

    outcomes: list[UploadOutcome] = []
    first_in_batch: dict[str, str] = {}
    pending: dict[Path, int] = {}
    shas: list[str | None] = []
    for name, data in files:
        safe = sanitise_name(name)
        sha = hashlib.sha256(data).hexdigest() if data else None
        shas.append(sha)
        existing = collection.find_document(sha) if sha else None
        if existing is not None:
            outcomes.append(UploadOutcome(safe, "already", f"{safe}: already in the collection", document_id=existing))
            continue
        if sha in first_in_batch:
            outcomes.append(UploadOutcome(safe, "already", f"{safe}: already in the collection (same file as {first_in_batch[sha]})"))
            continue
        try:
            path = save_upload(collection.root, name, data, max_bytes=max_bytes)
        except ValueError as exc:
            outcomes.append(UploadOutcome(safe, "rejected", f"{safe}: {exc}"))
            continue
        first_in_batch[sha] = safe
        pending[path] = len(outcomes)
        outcomes.append(UploadOutcome(safe, "added", f"{safe}: added", stored_path=path))
    report = None
    if pending:
        if extractor is None and extractor_factory is not None:
            extractor = extractor_factory()
        report = ingest(
            collection,
            list(pending),
            settings,
            extractor=extractor,
            progress=False,
            log=log or (lambda _msg: None),
            lock_timeout_s=lock_timeout_s,
            on_progress=on_progress,
        )
        failed = {str(Path(p).resolve()): reason for p, reason in report.failures}
        for path, i in pending.items():
            reason = failed.get(str(path.resolve()))
            if reason is not None:
                outcomes[i].status = "failed"
                outcomes[i].message = f"{outcomes[i].name}: could not be read ({reason})"
                outcomes[i].stored_path = None
                path.unlink(missing_ok=True)
                try:
                    path.parent.rmdir()
                except OSError:
                    pass
    # Resolve document and page ids for everything now in the collection.
    wanted = {i for i, o in enumerate(outcomes) if o.status in ("added", "already")}
    if wanted:
        table = collection.page_table()
        for i in wanted:
            o = outcomes[i]
            if o.document_id is None and shas[i]:
                o.document_id = collection.find_document(shas[i])
            if o.document_id is not None:
                o.page_ids = sorted(int(p) for p in table.loc[table["document_id"] == o.document_id, "page_id"])
                if o.status == "added":
                    n = len(o.page_ids)
                    o.message = f"{o.name}: added ({n} page{'s' if n != 1 else ''})"
    return outcomes, report
