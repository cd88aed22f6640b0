"""The ``docsort`` command line (Typer): ingest, ocr, cluster, search, info, export, rename, merge, split,
move, edits, undo, label, labels, classify, duplicates, sort-by-type, evaluate, ui.

Every command takes ``--collection PATH`` (env ``DOCSORT_COLLECTION``, default
``./docsort-collection``) and ``--pipeline NAME|PATH`` (default ``default``). Exit codes: 0 success,
1 some files failed to ingest (or pages to OCR), 2 usage or settings error, 3 environment error
(poppler or tesseract missing, weights unavailable, collection busy).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from docsort.config.settings import PipelineSettings, load_pipeline

app = typer.Typer(
    name="docsort",
    help="Sort piles of scanned documents by how they look (InceptionV3 Mixed_5c features, FAISS, UMAP + HDBSCAN).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

CollectionOpt = Annotated[
    Path,
    typer.Option("--collection", "-c", envvar="DOCSORT_COLLECTION", help="Collection directory.", show_default=True),
]
PipelineOpt = Annotated[
    Optional[str],
    typer.Option("--pipeline", "-p", help="Pipeline name (pipelines/NAME.toml) or path to a .toml file. [default: default]"),
]
DEFAULT_COLLECTION = Path("docsort-collection")


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Let TensorFlow's and the other libraries' own log through (same as DOCSORT_LOG=debug).")] = False,
) -> None:
    """Sort piles of scanned documents by how they look (InceptionV3 Mixed_5c features, FAISS, UMAP + HDBSCAN)."""
    if verbose:
        import os

        os.environ["DOCSORT_LOG"] = "debug"
        # docsort.core.runtime set TF_CPP_MIN_LOG_LEVEL=3 when it was imported (TensorFlow is not yet).
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def _fail(message: str, code: int) -> typer.Exit:
    from rich.markup import escape

    # The message is text, not markup: "pip install 'docsort[ray]'" must keep its brackets.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def _pipeline(name: str | None) -> tuple[PipelineSettings, bool]:
    return load_pipeline(name or "default"), name is not None


RayOpt = Annotated[
    Optional[str],
    typer.Option("--ray", help="Run on Ray: 'local' starts Ray on this machine, HOST:6379 (or ray://HOST:10001) joins a "
                 "running cluster; needs pip install 'docsort[ray]'. [default: the pipeline's ray.address, none = this process]"),
]


def _where(settings: PipelineSettings, requested: PipelineSettings, ray: str | None) -> PipelineSettings:
    """``settings`` running where ``--ray`` says, else where the chosen pipeline's ``[ray]`` says (never
    the collection's recorded one: where a job runs does not change what it computes)."""
    return settings.with_ray(address=ray.strip() if ray is not None else None, ray=requested.ray)


def _open(collection: Path, create: bool = False):
    from docsort.store.storage import Collection

    return Collection(collection, create=create)


#: The one map from errors to exit codes (README "Use"): 2 = bad input (a file, a setting, the
#: collection's state), 3 = the environment (a missing tool or weights, another writer holding the
#: lock); 130 = interrupted. In order: CollectionBusyError is a CollectionError. Classes are named by
#: module so that mapping them imports nothing (the feature stage would import TensorFlow, ~6 s): a
#: class whose module was never imported cannot have been raised.
EXIT_CODES: tuple[tuple[str, str, int], ...] = (
    ("docsort.core.pages", "PopplerMissingError", 3),
    ("docsort.core.weights", "WeightsError", 3),
    ("docsort.core.features", "BackboneError", 3),
    ("docsort.store.storage", "CollectionBusyError", 3),
    ("docsort.core.ocr", "TesseractMissingError", 3),
    ("docsort.core.distributed", "RayMissingError", 3),
    ("docsort.config.settings", "PipelineError", 2),
    ("docsort.store.storage", "CollectionError", 2),
    ("docsort.core.pages", "PageError", 2),
    ("docsort.core.clustering", "ClusteringError", 2),
    ("docsort.core.adapt", "AdaptError", 2),
    ("docsort.queries.evaluate", "LabelsError", 2),
)


def exit_code(exc: BaseException) -> int | None:
    """The exit code :data:`EXIT_CODES` gives ``exc``, or ``None`` (an unexpected error: a traceback)."""
    for module, name, code in EXIT_CODES:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return code
    return None


def command(*args, also: tuple[type[Exception], ...] = (), interrupted: str | None = None, **kwargs):
    """``app.command(*args, **kwargs)`` whose errors become a one-line message and an exit code, in one place.

    Args:
        also: further exception types that mean bad input for this command (exit code 2), e.g.
            ``ValueError`` for one that parses user values.
        interrupted: what Ctrl-C leaves behind, printed before exiting with 130; ``None``: Ctrl-C
            is not caught.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def run(*a, **kw):
            try:
                return fn(*a, **kw)
            except (click.exceptions.Exit, click.exceptions.ClickException, click.exceptions.Abort):
                raise
            except KeyboardInterrupt:
                if interrupted is None:
                    raise
                err.print(f"interrupted: {interrupted}")
                raise typer.Exit(130) from None
            except Exception as exc:
                code = exit_code(exc)
                if code is None and isinstance(exc, also):
                    code = 2
                if code is None:
                    raise
                raise _fail(str(exc), code) from exc

        return app.command(*args, **kwargs)(run)

    return decorate


def _with_ocr(settings, **changes):
    """``settings`` with some ``ocr`` settings replaced (validated); a bad value exits with code 2."""
    from pydantic import ValidationError

    from docsort.jobs.ocr import with_ocr

    try:
        return with_ocr(settings, **changes)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else "?"
        raise _fail(f"invalid OCR setting {name}={changes.get(name)!r}: {first['msg']}", 2) from exc


def _print_ocr(report) -> None:
    """The summary of an OCR back-fill (:class:`docsort.jobs.ocr.OcrReport`); failures on stderr."""
    conf = "-" if report.mean_confidence is None else f"{report.mean_confidence:.1f}"
    out.print(
        f"OCR ({report.engine}, lang {report.lang}): {report.pages_done} pages in {report.seconds:.1f} s "
        f"({report.pages_per_s:.2f} pages/s), {report.words} words, mean word confidence {conf}; "
        f"{report.pages_failed} pages failed",
        highlight=False,
    )
    for path, reason in report.failures[:20]:
        err.print(f"OCR failed: {_shown_path(path)}: {reason}" if path else f"OCR failed: {reason}", highlight=False)
    if len(report.failures) > 20:
        err.print(f"... {len(report.failures) - 20} more (`docsort ocr --retry-failed` tries them again)", highlight=False)


@command(interrupted="documents stored so far are kept; run the same command again to resume")
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of scans (walked recursively).")],
    collection: CollectionOpt = DEFAULT_COLLECTION,
    pipeline: PipelineOpt = None,
    weights: Annotated[
        Optional[str],
        typer.Option(help="auto | imagenet | bundled | random (tests only) | PATH to .h5. [default: the pipeline's]"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    lock_timeout: Annotated[float, typer.Option(help="Seconds to wait when another process is writing.")] = 600.0,
    ocr: Annotated[
        Optional[bool],
        typer.Option("--ocr/--no-ocr", help="Then OCR the pages of these files with Tesseract (after they are embedded "
                     "and indexed). [default: the pipeline's ocr.enabled]"),
    ] = None,
    ocr_lang: Annotated[
        Optional[str],
        typer.Option(help="Tesseract languages for OCR, +-joined, e.g. eng+fra (each needs tesseract-ocr-LANG); "
                     "implies --ocr. [default: the pipeline's ocr.lang]"),
    ] = None,
    ray: RayOpt = None,
    shards: Annotated[
        Optional[bool],
        typer.Option("--shards/--no-shards", help="With --ray: the cluster writes the pages as Parquet shards that the collection "
                     "takes in, one transaction per shard (for very large runs). [default: the pipeline's ray.shards, auto = "
                     "above ray.shards_above pages]"),
    ] = None,
) -> None:
    """Rasterize, embed and index every new page (PDF, TIFF, PNG, JPEG); with --ocr, then OCR them. Resumable; re-running adds nothing."""
    from docsort.store.manifest import effective_settings
    from docsort.jobs.ingest import ingest as run_ingest

    requested, explicit = _pipeline(pipeline)
    col = _open(collection, create=True)
    try:
        settings = _where(_with_ocr(effective_settings(col, requested, explicit=explicit, weights=weights), lang=ocr_lang),
                          requested, ray)
        if ocr_lang is not None and ocr is None:
            ocr = True
        if shards is not None:
            settings = settings.with_ray(ray=settings.ray.model_copy(update={"shards": "always" if shards else "never"}))
        report = run_ingest(col, paths, settings, progress=progress, lock_timeout_s=lock_timeout, ocr=ocr)
    finally:
        col.close()
    out.print(
        f"ingested {report.documents_added} documents, {report.pages_added} pages in {report.seconds:.1f} s "
        f"({report.pages_per_s:.1f} pages/s); {report.already_stored} already in the collection"
        + (f" ({report.new_paths} under a new path)" if report.new_paths else "")
        + f"; {len(report.failures)} failed"
        + (f"; {report.skipped} non-document files skipped" if report.skipped else ""),
        highlight=False,
    )
    if report.index:
        out.print(f"index: {report.index}", highlight=False)
    if report.provisional_pages:
        out.print(f"{report.provisional_pages} new pages given a provisional cluster by the last clustering's models "
                  "(`docsort cluster` re-clusters everything)", highlight=False)
    out.print(f"weights: {report.weights_note}", highlight=False)
    if report.ocr is not None:
        _print_ocr(report.ocr)
    if report.failures or (report.ocr is not None and report.ocr.failures):
        raise typer.Exit(1)


@command("ocr", interrupted="text stored so far is kept; run the same command again to resume")
def ocr_command(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    pipeline: PipelineOpt = None,
    lang: Annotated[
        Optional[str],
        typer.Option(help="Tesseract languages, +-joined, e.g. eng+fra (each needs tesseract-ocr-LANG). "
                     "[default: the pipeline's ocr.lang]"),
    ] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also redo pages whose OCR failed (e.g. a file that was missing).")] = False,
    workers: Annotated[
        Optional[int], typer.Option(min=0, help="OCR worker processes; 0 = one per CPU core. [default: the pipeline's ocr.workers]")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    lock_timeout: Annotated[float, typer.Option(help="Seconds to wait when another OCR run (or writer) holds the collection.")] = 600.0,
    ray: RayOpt = None,
) -> None:
    """OCR (Tesseract) every stored page that has no text yet; resumable, never twice.

    Reads each page again from its file (only if the file's sha256 is unchanged); stores text, word confidence and errors per page; the full-text index follows.
    """
    from docsort.jobs.ocr import backfill, ocr_pipeline

    requested, explicit = _pipeline(pipeline)
    col = _open(collection)
    try:
        settings = _where(_with_ocr(ocr_pipeline(col, requested, explicit=explicit), lang=lang, workers=workers), requested, ray)
        report = backfill(col, settings, retry_failed=retry_failed, progress=progress, lock_timeout_s=lock_timeout,
                          log=lambda m: err.print(m, highlight=False))
        counts = col.text_counts()
        n_pages = col.counts()["pages"]
    finally:
        col.close()
    _print_ocr(report)
    out.print(f"collection: {counts['pages_with_text']} of {n_pages} pages have OCR text, {counts['ocr_failed']} failed, "
              f"{counts['ocr_words']} words", highlight=False)
    if report.failures:
        raise typer.Exit(1)


@command()
def cluster(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    pipeline: PipelineOpt = None,
    lock_timeout: Annotated[float, typer.Option(help="Seconds to wait when another process is writing.")] = 600.0,
    reassign_noise: Annotated[
        Optional[float],
        typer.Option(min=0.0, max=1.0, help="Give noise pages the cluster whose soft-clustering membership reaches this "
                     "(0 = off); reported as 'reassigned'. [default: the pipeline's hdbscan.reassign_noise_threshold]"),
    ] = None,
    ray: RayOpt = None,
) -> None:
    """UMAP + HDBSCAN over the collection; prints a cluster summary table. With --ray, fitted on a seeded sample
    (ray.cluster_sample pages) and the rest placed in Ray tasks."""
    from docsort.jobs.cluster import cluster as run_cluster
    from docsort.store.manifest import effective_settings
    from docsort.jobs.invariance import prepare_invariance

    requested, explicit = _pipeline(pipeline)
    col = _open(collection)
    try:
        settings = _where(effective_settings(col, requested, explicit=explicit), requested, ray)
        if reassign_noise is not None:
            settings = settings.model_copy(update={"hdbscan": settings.hdbscan.model_copy(update={"reassign_noise_threshold": reassign_noise})})
        prepare_invariance(col, settings, lock_timeout_s=lock_timeout)  # re-reads and embeds a sample: a progress bar
        with err.status("clustering (UMAP + HDBSCAN)...") as status:
            result = run_cluster(col, settings, lock_timeout_s=lock_timeout,
                                 on_step=lambda text: status.update(f"clustering (UMAP + HDBSCAN): {text}..."))
        out.print(cluster_summary(result, settings.hdbscan.reassign_noise_threshold), highlight=False)
        _print_edits_report(result.params.get("edits"))
        _print_clusters(col)
    finally:
        col.close()


def cluster_summary(result, threshold: float) -> str:
    """The line ``docsort cluster`` prints: clusters, confident members, pages reassigned from
    noise (with the soft-membership threshold, or "reassignment off"), noise, time, the UMAP
    sizes and number of runs (a consensus or one run), the HDBSCAN sizes used.

    Args:
        result: a :class:`docsort.core.clustering.ClusterResult`; threshold: the
            ``reassign_noise_threshold`` it ran with (0 = off).
    """
    n = len(result.labels)
    umap = result.params.get("umap", {})
    return (
        f"{result.n_clusters} clusters: {result.n_members} pages confident members, "
        f"{result.n_reassigned} reassigned from noise "
        + (f"(soft membership >= {threshold:g})" if threshold > 0 else "(reassignment off)")
        + f"; {result.n_noise} of {n} pages noise ({100 * result.n_noise / max(n, 1):.0f}%), {result.seconds:.1f} s "
        f"(UMAP n_components={umap.get('n_components', '-')}, n_neighbors={umap.get('n_neighbors', '-')}, "
        + (f"consensus of {umap['consensus_runs_used']} runs, " if umap.get("consensus_runs_used", 1) > 1 else "one run, ")
        + f"HDBSCAN min_cluster_size={result.params['hdbscan']['min_cluster_size']}, "
        f"min_samples={result.params['hdbscan']['min_samples']})"
    )


def _print_edits_report(report: dict | None) -> None:
    """How ``docsort cluster`` kept the hand edits (``result.params["edits"]``, see
    :class:`docsort.jobs.edits.EditsReport`): a summary line, then every conflict and undone edit."""
    if not report:
        return
    from docsort.jobs.edits import EditsReport

    rep = EditsReport(**report)
    out.print(rep.summary(), highlight=False)
    for line in rep.conflicts:
        out.print(f"  not honoured: {line}", highlight=False)
    for line in rep.notes:
        out.print(f"  {line}", highlight=False)


def _print_clusters(col) -> None:
    from docsort.queries.tables import cluster_table

    table = Table(title="clusters")
    rows = cluster_table(col)
    # Confident members, reassigned and provisional pages get columns of their own when there are any.
    extra = [k for k in ("reassigned", "provisional") if any(getattr(r, k) for r in rows)]
    columns = [("cluster", "right"), ("name", "left"), ("pages", "right")]
    columns += [("members", "right")] + [(k, "right") for k in extra] if extra else []
    for name, justify in columns + [("documents", "right"), ("examples", "left")]:
        table.add_column(name, justify=justify)
    for row in rows:
        counts = [str(row.members)] + [str(getattr(row, k)) for k in extra] if extra else []
        table.add_row(str(row.cluster), row.name, str(row.pages), *counts, str(row.documents), ", ".join(row.examples))
    out.print(table)


@command(also=(ValueError,))
def search(
    query: Annotated[Optional[Path], typer.Argument(help="A scan to find similar documents for (embedded, not stored).")] = None,
    page: Annotated[Optional[int], typer.Option(help="Search by a stored page id instead of a file.")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help='Full-text search of the OCR text: words (all must occur), "a phrase", OR, NOT, prefix*.')] = None,
    mode: Annotated[str, typer.Option(help="Similarity by: visual (look), text (OCR words), fused (both), or auto (fused when the collection has OCR text).")] = "auto",
    k: Annotated[int, typer.Option("-k", "--top", help="Neighbours per query page and documents shown.", min=1)] = 5,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Top-k most similar pages and documents, or pages whose OCR text matches --text.

    The score is the cosine similarity of the vectors searched: once `docsort cluster` has fitted
    the scan-style-invariant projection, of the centred, projected page vectors (1 = the same
    page, about 0 = unrelated; fused with the OCR text in fused mode). The line under the tables
    says which.
    """
    from docsort.store.manifest import effective_settings
    from docsort.queries.search import search_file, search_page

    if sum(x is not None for x in (query, page, text)) != 1:
        raise _fail("give one of: a file to search with, --page ID, or --text WORDS", 2)
    if mode not in ("auto", "visual", "text", "fused"):
        raise _fail(f"--mode must be auto, visual, text or fused, not {mode!r}", 2)
    col = _open(collection)
    try:
        if text is not None:
            return _search_text(col, text, k, as_json)
        settings = effective_settings(col, load_pipeline("default"))
        if page is not None:
            result = search_page(col, page, settings, k, mode=mode)
        else:
            result = search_file(col, query, settings, k, mode=mode, log=lambda m: err.print(m, markup=False, highlight=False))
    finally:
        col.close()
    if as_json:
        from dataclasses import asdict

        out.print_json(json.dumps({"query": result.query, "score": result.score_note, "pages": [asdict(h) for h in result.pages], "documents": [asdict(h) for h in result.documents]}))
        return
    several = len({h.query_page for h in result.pages}) > 1
    table = Table(title=f"pages most like {result.query}")
    _file_columns(table, [h.path for h in result.pages])
    for c in (["query page"] if several else []) + ["rank", "score", "page", "page id", "cluster"]:
        table.add_column(c)
    for h in result.pages:
        table.add_row(*_file_cells(h.path), *([str(h.query_page)] if several else []), str(h.rank), f"{h.score:.3f}",
                      str(h.page_no), str(h.page_id), _cluster_label(h.cluster, h.cluster_name))
    out.print(table)
    table = Table(title="documents")
    _file_columns(table, [h.path for h in result.documents])
    for c in ("rank", "score", "best page", "cluster"):
        table.add_column(c)
    for h in result.documents:
        table.add_row(*_file_cells(h.path), str(h.rank), f"{h.score:.3f}", str(h.best_page_no), _cluster_label(h.cluster, h.cluster_name))
    out.print(table)
    if result.score_note:
        err.print(result.score_note, markup=False, highlight=False)


def _search_text(col, query: str, k: int, as_json: bool) -> None:
    from docsort.queries.search import search_text

    hits = search_text(col, query, k)
    if as_json:
        from dataclasses import asdict

        out.print_json(json.dumps({"query": query, "pages": [asdict(h) for h in hits]}))
        return
    if not hits:
        n = col.text_counts()["pages_with_text"]
        err.print(f"no page's OCR text matches {query!r} ({n} pages have OCR text" + ("; run `docsort ocr`" if n == 0 else "") + ")",
                  markup=False, highlight=False)
        return
    table = Table(title=f"pages whose text matches {query}")
    _file_columns(table, [h.path for h in hits])
    for c in ("rank", "score", "page", "page id", "cluster", "text"):
        table.add_column(c)
    for h in hits:
        table.add_row(*_file_cells(h.path), str(h.rank), f"{h.score:.2f}", str(h.page_no), str(h.page_id),
                      _cluster_label(h.cluster, h.cluster_name), h.snippet.replace("\n", " "))
    out.print(table)


#: Terminal width (columns) from which result tables add a "folder" column with the rest of each path.
WIDE_TERMINAL = 120


def _wide() -> bool:
    return out.width >= WIDE_TERMINAL


def _file_columns(table: Table, paths: list[str]) -> None:
    """First columns of a result table: the file name, whole (folded, never cut with an ellipsis:
    it is what the user reads), and on a wide terminal the folder it is in. The full path is in
    ``--json``."""
    longest = max((len(Path(p).name) for p in paths), default=4)
    table.add_column("file", overflow="fold", min_width=min(longest, 48))
    if _wide():
        table.add_column("folder", overflow="fold")


def _file_cells(path: str) -> list[str]:
    shown = Path(_shown_path(path))
    return [shown.name, str(shown.parent)] if _wide() else [shown.name]


def _shown_path(path: str) -> str:
    """A stored (absolute) path as the user would type it: relative to the current folder when
    under it, so tables stay readable in an 80-column terminal."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def _cluster_label(cid, name) -> str:
    if cid is None:
        return "-"
    return f"{cid} ({name})" if name and name != f"cluster {cid}" else str(cid)


@command(interrupted="the collection keeps its old vectors; run docsort adapt again to finish")
def adapt(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the pages (5: chosen on two development corpora, benchmarks/RESULTS.md).")] = 5,
    minutes: Annotated[Optional[float], typer.Option(min=0.0, help="Time budget for training, minutes (stops after the step that crosses it).")] = None,
    layers: Annotated[str, typer.Option(help="Blocks to train: mixed1 | mixed0,mixed1 | all.")] = "mixed1",
    seed: Annotated[int, typer.Option(help="Seed of the augmentations, page order and head.")] = 0,
    precision: Annotated[Optional[str], typer.Option(
        help="Training precision: float32 | bfloat16 (mixed precision on the CPU's matrix units; the stored weights "
             "are float32 either way). Default: docsort.core.adapt.DEFAULT_TRAINING_PRECISION.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    lock_timeout: Annotated[float, typer.Option(help="Seconds to wait when another process is writing.")] = 600.0,
) -> None:
    """Fine-tune the network on this collection's own pages (no labels), then re-embed every page and rebuild the index. Resumable."""
    from docsort.jobs.adaptation import adapt as run_adapt
    from docsort.store.manifest import effective_settings

    requested, _ = _pipeline(None)
    col = _open(collection)
    try:
        settings = effective_settings(col, requested)
        report = run_adapt(col, settings, epochs=epochs, minutes=minutes, layers=layers, seed=seed, progress=progress,
                           lock_timeout_s=lock_timeout, **({"precision": precision} if precision else {}))
    finally:
        col.close()
    if report.trained:
        out.print(f"trained {report.epochs_run} epoch(s) on {report.pages_trained} pages in {report.train_seconds:.1f} s"
                  + (" (time budget reached)" if report.stopped_by_budget else "")
                  + (f"; {report.pages_skipped} pages skipped (file moved or changed)" if report.pages_skipped else ""),
                  highlight=False)
    out.print(f"re-embedded {report.pages_embedded} pages in {report.embed_seconds:.1f} s"
              + (f" ({report.pages_resumed} from an earlier run)" if report.pages_resumed else "")
              + f"; adapted weights sha256 {report.weights_sha256[:16]}; index: {report.index}", highlight=False)
    out.print("run `docsort cluster` to re-cluster with the adapted vectors", highlight=False)


@command()
def info(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Collection summary: documents, pages, clusters, backbone, weights sha256."""
    from docsort.queries.tables import info as run_info

    col = _open(collection)
    try:
        data = run_info(col)
        failures = col.failures()
    finally:
        col.close()
    if as_json:
        out.print_json(json.dumps(data))
        return
    table = Table(show_header=False, title="collection")
    for key, value in data.items():
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)
    for path, reason, when in failures[:20]:
        err.print(f"failed {when}: {path}: {reason}", highlight=False)


@command(also=(ValueError,))
def export(
    out_path: Annotated[Path, typer.Argument(metavar="OUT", help="Output file: .parquet or .csv.")],
    vectors: Annotated[bool, typer.Option("--vectors", help="Include each page's vector: by default the one the index and clustering use "
                                                          "(scan-style invariant; fused with the OCR text where the clustering fused).")] = False,
    vectors_kind: Annotated[str | None, typer.Option("--vectors-kind", metavar="KIND",
                                                     help="Which vectors (implies --vectors): clustering (default), visual (what search by look "
                                                          "uses), text (OCR text vectors), raw (the stored backbone vectors). Written to the "
                                                          "Parquet metadata key 'docsort' or OUT.json next to a CSV.")] = None,
    collection: CollectionOpt = DEFAULT_COLLECTION,
) -> None:
    """One row per page: path, page, sha256, cluster, cluster name, UMAP x/y."""
    from docsort.jobs.export import export_pages

    col = _open(collection)
    try:
        n = export_pages(col, out_path, vectors=vectors_kind or vectors)
    finally:
        col.close()
    out.print(f"wrote {n} pages to {out_path}", highlight=False)


ByOpt = Annotated[Optional[str], typer.Option("--by", help="Who made the edit (recorded in `docsort edits`). [default: $DOCSORT_USER or the login name]")]
LockOpt = Annotated[float, typer.Option("--lock-timeout", help="Seconds to wait when another process is writing.")]


@command()
def rename(
    cluster_id: Annotated[int, typer.Argument(help="Cluster id.")],
    name: Annotated[str, typer.Argument(help="New name.")],
    collection: CollectionOpt = DEFAULT_COLLECTION,
    by: ByOpt = None,
    lock_timeout: LockOpt = 60.0,
) -> None:
    """Name a cluster (an edit: kept in the collection, `docsort undo` reverts it; shown by cluster, search, export and the UI)."""
    from docsort.jobs import edits

    col = _open(collection)
    try:
        res = edits.rename(col, cluster_id, name, who=by, lock_timeout_s=lock_timeout, log=err.print)
    finally:
        col.close()
    out.print(res.message, highlight=False)


@command()
def merge(
    a: Annotated[int, typer.Argument(help="Cluster that keeps its id and name.")],
    b: Annotated[int, typer.Argument(help="Cluster whose pages join A.")],
    name: Annotated[Optional[str], typer.Option("--name", help="A new name for the merged cluster.")] = None,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    by: ByOpt = None,
    lock_timeout: LockOpt = 60.0,
) -> None:
    """Merge cluster B into cluster A; kept across `docsort cluster` (README "Fixing the sort by hand")."""
    from docsort.jobs import edits

    col = _open(collection)
    try:
        res = edits.merge(col, a, b, name=name, who=by, lock_timeout_s=lock_timeout, log=err.print)
    finally:
        col.close()
    out.print(f"edit {res.edit_id}: {res.message}", highlight=False)


@command()
def split(
    cluster_id: Annotated[int, typer.Argument(metavar="C", help="Cluster to split.")],
    into: Annotated[int, typer.Option("--into", min=2, help="Number of parts.")] = 2,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Keep the parts without asking.")] = False,
    seed: Annotated[int, typer.Option(help="k-means random_state.")] = 0,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    pipeline: PipelineOpt = None,
    by: ByOpt = None,
    lock_timeout: LockOpt = 60.0,
) -> None:
    """Split a cluster in parts by k-means on its pages' vectors: prints the parts, then keeps them (asks unless --yes)."""
    from docsort.jobs import edits
    from docsort.store.manifest import effective_settings

    requested, explicit = _pipeline(pipeline)
    col = _open(collection)
    try:
        preview = edits.split(col, cluster_id, into=into, settings=effective_settings(col, requested, explicit=explicit), seed=seed)
        table = Table(title=f"cluster {cluster_id} split into {len(preview.parts)} parts ({preview.method})")
        for c, justify in (("part", "right"), ("pages", "right"), ("page ids", "left"), ("examples", "left")):
            table.add_column(c, justify=justify)
        for i, part in enumerate(preview.parts, 1):
            shown = col.pages(part[:4].tolist())
            ids = ", ".join(str(p) for p in part[:12].tolist()) + (" ..." if len(part) > 12 else "")
            table.add_row(str(i), str(len(part)), ids, ", ".join(f"{_shown_path(p.path)} p.{p.page_no}" for p in shown))
        out.print(table)
        if not yes and not typer.confirm(f"Keep these {len(preview.parts)} parts as new clusters?", default=False):
            out.print("not split (nothing changed)", highlight=False)
            return
        res = edits.keep_split(col, preview, who=by, lock_timeout_s=lock_timeout, log=err.print)
    finally:
        col.close()
    out.print(f"edit {res.edit_id}: {res.message}", highlight=False)


@command()
def move(
    page_ids: Annotated[list[int], typer.Argument(metavar="PAGE_ID...", help="Stored page ids (see `docsort search`, `docsort export`).")],
    to: Annotated[Optional[int], typer.Option("--to", help="The cluster to move them to.")] = None,
    new: Annotated[bool, typer.Option("--new", help="Move them to a new cluster.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Name the target cluster.")] = None,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    by: ByOpt = None,
    lock_timeout: LockOpt = 60.0,
) -> None:
    """Move pages to a cluster (--to C) or a new one (--new); they stay there across `docsort cluster`."""
    from docsort.jobs import edits

    if (to is None) == (not new):
        raise _fail("give either --to CLUSTER or --new", 2)
    col = _open(collection)
    try:
        res = edits.move(col, page_ids, to=to, new=new, name=name, who=by, lock_timeout_s=lock_timeout, log=err.print)
    finally:
        col.close()
    out.print(f"edit {res.edit_id}: {res.message}", highlight=False)


@command("edits")
def edits_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the log as JSON.")] = False,
    collection: CollectionOpt = DEFAULT_COLLECTION,
) -> None:
    """List the hand edits (merge, split, move, rename) with who made them and when; undone ones are marked."""
    from docsort.jobs import edits

    col = _open(collection)
    try:
        rows = edits.list_edits(col)
    finally:
        col.close()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="edits")
    for c, justify in (("edit", "right"), ("kind", "left"), ("what", "left"), ("pages", "right"), ("who", "left"),
                       ("when (UTC)", "left"), ("undone", "left")):
        table.add_column(c, justify=justify)
    for r in rows:
        table.add_row(str(r["id"]), r["kind"], r["text"], str(r["n_pages"]), r["who"], r["at"], "undone" if r["undone"] else "")
    out.print(table)
    if not rows:
        out.print("no edits yet", highlight=False)


@command()
def undo(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    lock_timeout: LockOpt = 60.0,
) -> None:
    """Undo the last edit not yet undone: its pages and names get back exactly what they had before."""
    from docsort.jobs import edits

    col = _open(collection)
    try:
        edit = edits.undo(col, lock_timeout_s=lock_timeout, log=err.print)
    finally:
        col.close()
    out.print(f"undid edit {edit['id']}: {edits.describe(edit)} (by {edit['who']}, {edit['at']})", highlight=False)


@command(also=(ValueError,))
def label(
    page_ids: Annotated[Optional[list[int]], typer.Argument(metavar="[PAGE_ID]...", help="Stored page ids (see `docsort search`, `docsort export`).")] = None,
    doc_type: Annotated[Optional[str], typer.Option("--type", "-t", help="Document type to give, e.g. 'invoice'.")] = None,
    cluster_id: Annotated[Optional[int], typer.Option("--cluster", help="Label every current page of this cluster.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the labels of PAGE_IDs.")] = False,
    overwrite: Annotated[bool, typer.Option(help="With --cluster: also relabel pages labelled one by one.")] = False,
    collection: CollectionOpt = DEFAULT_COLLECTION,
) -> None:
    """Give pages or a whole cluster a document type (stored with who and when), or remove labels."""
    from docsort.jobs import classify

    page_ids = page_ids or []
    if remove:
        if doc_type is not None or cluster_id is not None or not page_ids:
            raise _fail("--remove takes page ids only: docsort label --remove PAGE_ID...", 2)
    elif doc_type is None or (cluster_id is None) == (not page_ids):
        raise _fail("give --type T and either page ids or --cluster ID", 2)
    col = _open(collection)
    try:
        if remove:
            n = classify.unlabel(col, page_ids)
            msg = f"removed {n} label{'s' if n != 1 else ''}"
        elif cluster_id is not None:
            res = classify.label_cluster(col, cluster_id, doc_type, overwrite_page_labels=overwrite)
            msg = f"labelled {res.labelled} pages of cluster {cluster_id} as {res.doc_type!r}" + (
                f"; {res.kept} kept their own page label (--overwrite to relabel them)" if res.kept else "")
        else:
            n = classify.label_pages(col, page_ids, doc_type)
            msg = f"labelled {n} page{'s' if n != 1 else ''} as {classify.normalise_type(doc_type, classify.label_counts(col))!r}"
        counts = classify.label_counts(col)
    finally:
        col.close()
    out.print(msg, highlight=False)
    out.print(f"{sum(counts.values())} labelled pages, {len(counts)} types"
              + ("; `docsort classify` retrains the classifier on them" if len(counts) >= 2 else ""), highlight=False)


@command()
def labels(
    export_path: Annotated[Optional[Path], typer.Option("--export", help="Write every label to this .csv file.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many labels.", min=0)] = 50,
    collection: CollectionOpt = DEFAULT_COLLECTION,
) -> None:
    """List the labels (page, type, source, who, when) and the number of pages per type."""
    from docsort.jobs import classify

    col = _open(collection)
    try:
        df = classify.labels(col)
        counts = classify.label_counts(col)
        if export_path is not None:
            try:
                n = classify.export_labels(col, export_path)
            except (ValueError, OSError) as exc:
                raise _fail(str(exc), 2) from exc
            out.print(f"wrote {n} labels to {export_path}", highlight=False)
    finally:
        col.close()
    table = Table(title="labels")
    for c in ("page id", "file", "page", "type", "source", "who", "when"):
        table.add_column(c)
    for r in df.head(limit).itertuples(index=False):
        src = r.source if r.source == "page" else f"cluster {r.cluster}"
        table.add_row(str(r.page_id), Path(r.path).name, str(r.page), r.type, src, r.who, r.at)
    out.print(table)
    if len(df) > limit:
        out.print(f"... {len(df) - limit} more (--export FILE.csv for all)", highlight=False)
    out.print("types: " + (", ".join(f"{t} ({n})" for t, n in counts.items()) or "none"), highlight=False)


def _classifier_settings(col, pipeline: str | None):
    from docsort.jobs import classify

    requested, explicit = _pipeline(pipeline)
    return classify.classifier_settings(col, requested if explicit else None)


def _run_classify(col, settings, threshold, lock_timeout):
    from docsort.jobs import classify

    with err.status("training and classifying..."):
        return classify.classify_collection(col, settings, threshold=threshold, lock_timeout_s=lock_timeout,
                                            log=lambda m: err.print(m, highlight=False))


@command(also=(ValueError,))
def classify(
    threshold: Annotated[Optional[float], typer.Option(help="Below this probability a page is 'unsure'. [default: the pipeline's, 0.6]", min=0.0, max=1.0)] = None,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    pipeline: PipelineOpt = None,
    lock_timeout: Annotated[float, typer.Option(help="Seconds to wait when another process is writing.")] = 600.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    fine_tune: Annotated[bool, typer.Option("--fine-tune", help="Also fine-tune the network's last blocks and a softmax head on the "
                                            "labelled pages; kept only if more accurate than the frozen-feature classifier on the same folds.")] = False,
    epochs: Annotated[int, typer.Option(min=1, help="With --fine-tune: passes over the labelled pages per training run.")] = 10,
    minutes: Annotated[Optional[float], typer.Option(min=0.0, help="With --fine-tune: time budget for all training, minutes.")] = None,
    layers: Annotated[str, typer.Option(help="With --fine-tune: blocks to train: mixed1 | mixed0,mixed1 | all.")] = "mixed1",
    seed: Annotated[int, typer.Option(help="With --fine-tune: seed of the augmentations, page order and head.")] = 0,
    progress: Annotated[bool, typer.Option(help="With --fine-tune: show progress bars.")] = True,
) -> None:
    """Train the document-type classifier on the labels (when they changed) and type every unlabelled page."""
    from dataclasses import asdict

    from docsort.jobs import classify as cl

    col = _open(collection)
    if fine_tune:
        try:
            _fine_tune(col, pipeline, threshold, lock_timeout, as_json, epochs=epochs, minutes=minutes, layers=layers,
                       seed=seed, progress=progress)
        finally:
            col.close()
        return
    try:
        settings = _classifier_settings(col, pipeline)
        report = _run_classify(col, settings, threshold, lock_timeout)
        rows = cl.type_summary(col, report.classifier)
    finally:
        col.close()
    clf = report.classifier
    if as_json:
        out.print_json(json.dumps({
            "classifier": cl.describe(clf), "retrained": report.retrained, "classified": report.classified,
            "unsure": report.unsure, "threshold": report.threshold,
            "types": [{**asdict(r), "pages": r.pages} for r in rows],
        }))
        return
    table = Table(title=f"document types (classifier {clf.version}, threshold {report.threshold:.2f})")
    for name, justify in (("type", "left"), ("pages", "right"), ("labelled", "right"), ("predicted", "right"),
                          ("unsure", "right"), ("CV accuracy", "right")):
        table.add_column(name, justify=justify)
    for r in rows:
        table.add_row(r.doc_type, str(r.pages), str(r.labelled), str(r.predicted), str(r.unsure),
                      "-" if r.cv_accuracy is None else f"{r.cv_accuracy:.2f}")
    out.print(table)
    out.print(f"classified {report.classified} unlabelled pages, {report.unsure} unsure; "
              f"cross-validated accuracy: {clf.cv.describe()}", highlight=False)
    out.print(f"probabilities: {clf.calibration}", highlight=False)


def _fine_tune(col, pipeline, threshold, lock_timeout, as_json, **train) -> None:
    """``docsort classify --fine-tune`` (docsort/jobs/finetuning.py): train, compare, report which model types the pages."""
    from dataclasses import asdict

    from docsort.jobs.finetuning import fine_tune as run_fine_tune
    from docsort.store.manifest import effective_settings

    requested, explicit = _pipeline(pipeline)
    # FineTuneError (an AdaptError), CollectionError, ValueError: exit codes from classify's command().
    settings = effective_settings(col, requested, explicit=explicit)
    report = run_fine_tune(col, settings, threshold=threshold, lock_timeout_s=lock_timeout,
                           log=lambda m: err.print(m, highlight=False), **train)
    if as_json:
        out.print_json(json.dumps(asdict(report)))
        return
    table = Table(title=f"cross-validated accuracy ({report.cv_method})")
    table.add_column("classifier")
    table.add_column("accuracy", justify="right")
    table.add_row("frozen features + logistic regression", f"{report.frozen_accuracy:.3f}")
    table.add_row(f"fine-tuned ({train['layers']} + softmax head)", f"{report.fine_tuned_accuracy:.3f}")
    out.print(table)
    out.print(f"in use: {report.in_use}" + ("" if report.kept else " (the fine-tuned model was not more accurate)")
              + (f"; fine-tuned weights sha256 {report.weights_sha256[:16]}" if report.kept else ""), highlight=False)
    out.print(f"typed {report.typed} unlabelled pages, {report.unsure} unsure"
              + (f"; {report.untyped_moved} left untyped (file moved or changed)" if report.untyped_moved else "")
              + (f"; {report.labelled_skipped} labelled pages left out (file moved or changed)" if report.labelled_skipped else ""),
              highlight=False)


@command(also=(ValueError,), interrupted="page maps stored so far are kept; run docsort duplicates again to resume")
def duplicates(
    csv_path: Annotated[Optional[Path], typer.Option("--csv", metavar="FILE",
                                                     help="Also write the families as CSV: family, path, page, page_id, similarity.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes that render pages for their page maps; 0 = one per CPU core.", min=0)] = 0,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    lock_timeout: Annotated[float, typer.Option(help="Seconds to wait when another process is writing.")] = 600.0,
) -> None:
    """Find near-duplicate pages (the same page scanned again: rescaled, slightly rotated, re-compressed, stamped) and list their families.

    Finds candidate pairs by page map, look and (where `docsort ocr` stored text) words, verifies them by keypoints,
    then checks each accepted pair's ink: two pages of one template whose content differs are kept apart.
    Only pages added since the last run are rendered again; the families are stored for export, sorting and the app."""
    from rich.progress import Progress

    from docsort.jobs.duplicates import find_duplicates

    col = _open(collection)
    try:
        with col.write_lock(lock_timeout), Progress(disable=not progress, console=err, transient=True) as bar:
            task = bar.add_task("page maps", total=None)
            report = find_duplicates(col, workers=workers, log=lambda m: err.print(m, highlight=False),
                                     on_progress=lambda d, t: bar.update(task, completed=d, total=t))
    finally:
        col.close()
    table = report.table
    rows = table[["family", "path", "page", "page_id", "similarity"]]
    if csv_path is not None:
        from docsort.store.storage import atomic_write_bytes

        atomic_write_bytes(Path(csv_path), rows.to_csv(index=False, float_format="%.4f").encode("utf-8"))
    out.print(f"{report.families} near-duplicate families, {report.pages_in_families} pages, among {report.pages} pages "
              f"({report.pages_with_text} with OCR text; {report.mapped} page maps made in {report.map_seconds:.1f} s, "
              f"families in {report.family_seconds:.1f} s)", highlight=False)
    if report.kept_apart:
        out.print(f"{report.kept_apart} look-alike pair{'s' if report.kept_apart != 1 else ''} kept apart: "
                  "each page has content the other lacks (one template, other details)", highlight=False)
    shown = Table("family", "path", "page", "page_id", "similarity", box=None)
    for r in rows.head(200).itertuples(index=False):
        shown.add_row(str(r.family), _shown_path(r.path), str(r.page), str(r.page_id), f"{r.similarity:.3f}")
    if len(rows):
        out.print(shown)
    if len(rows) > 200:
        out.print(f"... {len(rows) - 200} more rows" + (f" in {csv_path}" if csv_path else " (use --csv FILE)"), highlight=False)
    if csv_path is not None:
        out.print(f"wrote {len(rows)} rows to {csv_path}", highlight=False)
    for page_id, reason in report.unmapped[:20]:
        err.print(f"not compared: page {page_id}: {reason}", highlight=False)


@command("sort-by-type", also=(ValueError, OSError))
def sort_by_type(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Output folder (documents are copied, never moved).")],
    threshold: Annotated[Optional[float], typer.Option(help="Below this probability a page is 'unsure'. [default: the pipeline's]", min=0.0, max=1.0)] = None,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    pipeline: PipelineOpt = None,
    lock_timeout: Annotated[float, typer.Option(help="Seconds to wait when another process is writing.")] = 600.0,
    one_per_family: Annotated[bool, typer.Option("--one-per-family", help="Copy one document per near-duplicate family "
                                                                         "(from the last `docsort duplicates`).")] = False,
) -> None:
    """Classify, then copy every document into OUT/<type>/ (unsure ones into OUT/unsure/), with OUT/docsort-types.csv."""
    from docsort.jobs import classify as cl

    col = _open(collection)
    try:
        settings = _classifier_settings(col, pipeline)
        from docsort.store.manifest import fine_tuned_in_use, read_manifest

        if fine_tuned_in_use(col):  # the kept fine-tuned classifier's types, not a frozen re-run (issue 14)
            if read_manifest(col).fine_tune.get("label_hash") != cl.label_set_hash(col):  # in use: recorded
                raise _fail("the labels changed since the fine-tuned classifier was trained: run docsort classify "
                            "--fine-tune (or plain docsort classify) first", 2)
            err.print("types from the fine-tuned classifier (docsort classify --fine-tune)", highlight=False)
            from docsort.jobs.finetuning import type_missing_pages
            from docsort.store.manifest import effective_settings

            with err.status("typing pages that have no type yet..."):  # pages the model could not type at ingest
                type_missing_pages(col, effective_settings(col, _pipeline(pipeline)[0]), lock_timeout_s=lock_timeout,
                                   log=lambda m: err.print(m, highlight=False))
        else:
            _run_classify(col, settings, threshold, lock_timeout)
        if one_per_family:
            from docsort.jobs.duplicates import duplicates_stale

            stale = duplicates_stale(col)
            if stale:
                err.print(f"warning: {stale}", highlight=False)
        report = cl.sort_by_type(col, out_dir, one_per_family=one_per_family)
    finally:
        col.close()
    out.print(f"copied {report.copied} documents into {len(report.folders)} folders in {report.out_dir} "
              f"({report.already_there} already there); decisions in {report.out_dir / cl.DECISIONS_CSV}", highlight=False)
    for folder, n in sorted(report.folders.items()):
        out.print(f"  {folder}/: {n}", highlight=False)
    if report.duplicates_skipped:
        out.print(f"  {len(report.duplicates_skipped)} documents not copied: near-duplicates of copied ones", highlight=False)
    for path, reason in report.missing:
        err.print(f"not copied: {path}: {reason}", highlight=False)
    if report.missing:
        raise typer.Exit(1)


@command()
def evaluate(
    labels_csv: Annotated[Path, typer.Option("--labels", help="labels.csv: file,page,category (files relative to its folder).")],
    k: Annotated[list[str], typer.Option("-k", help="Neighbour counts for kNN precision@k: -k 1 -k 5 or -k 1,5,10.")] = ["1", "5", "10"],  # noqa: B006
    collection: CollectionOpt = DEFAULT_COLLECTION,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the full evaluation to this JSON file.")] = None,
    vectors: Annotated[
        str, typer.Option(help="Vectors kNN judges: 'clustering' (what index, search and clustering use: scan-style-invariant "
                          "and fused with text where the collection has them) or 'stored' (the raw visual vectors).")
    ] = "clustering",
) -> None:
    """Measure the collection against labels: kNN precision@k, ARI/NMI of the clusters, noise, purity, confusion.

    With a ``style`` column in the labels (each page's scan style), also cross-style kNN@k and
    style leakage (NMI of clusters vs scan style)."""
    from docsort.queries.evaluate import evaluate as run_evaluate

    try:
        ks = sorted({int(v) for item in k for v in str(item).split(",") if v.strip()})
    except ValueError:
        raise _fail(f"-k takes integers, got {k}", 2) from None
    if not ks or min(ks) < 1:
        raise _fail("-k values must be at least 1", 2)
    if vectors not in ("clustering", "stored"):
        raise _fail(f"--vectors takes clustering or stored, got {vectors!r}", 2)
    col = _open(collection)
    try:
        given, note = None, "stored visual vectors"
        if vectors == "clustering":
            from docsort.queries.vectors import active_projection, page_vectors
            from docsort.store.manifest import effective_settings
            from docsort.config.settings import load_pipeline

            settings = effective_settings(col, load_pipeline("default"))
            pv = page_vectors(col, settings, "fused")
            projection = active_projection(col, settings)
            given = (pv.ids, pv.vectors)
            note = (f"clustering vectors: {pv.mode}"
                    + (f", text weight {pv.fusion_weight}" if pv.mode == "fused" else "")
                    + (f", scan-style-invariant {projection.dims}-d (sha256 {projection.sha256[:12]})" if projection is not None
                       else ", raw visual (no invariance projection)"))
        result = run_evaluate(col, labels_csv, ks, vectors=given, vectors_note=note)
    finally:
        col.close()
    _print_evaluation(result)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        out.print(f"wrote {json_out}", highlight=False)


def _print_evaluation(r) -> None:
    def f(v, fmt=".3f"):
        return "-" if v is None else format(v, fmt)

    feats = r.features
    summary = Table(title=f"evaluation against {r.labels_file}", show_header=False)
    summary.add_row("pages", f"{r.labelled_pages} labelled of {r.pages_in_collection} ({r.unlabelled_pages} without a label, ignored)")
    summary.add_row("features", f"{feats.get('pooling')} pooling, {feats.get('dim')}-d, input {feats.get('input_size')} "
                    f"{feats.get('input_mode') or 'squash'}, {feats.get('weights')} weights")
    summary.add_row("vectors judged", r.vectors)
    for kk in r.k:
        summary.add_row(f"kNN precision@{kk}", f"{f(r.knn_precision[kk])} (other documents only: {f(r.knn_precision_other_documents.get(kk))})")
    if r.clustered_pages:
        summary.add_row("clusters", f"{r.n_clusters} over {r.clustered_pages} labelled pages")
        summary.add_row("noise", f"{f(r.noise_share, '.1%')} of labelled pages")
        summary.add_row("ARI / NMI", f"{f(r.ari)} / {f(r.nmi)} (noise pages as singletons)")
        summary.add_row("ARI / NMI clustered", f"{f(r.ari_clustered)} / {f(r.nmi_clustered)} (pages in a cluster only)")
        summary.add_row("purity", f(r.purity))
    else:
        summary.add_row("clusters", "none stored: run `docsort cluster` for ARI, NMI, noise and purity")
    if r.styles and r.cross_style_knn_precision is not None:
        summary.add_row("scan styles", f"{len(r.styles)}: {', '.join(r.styles)}")
        for kk in r.k:
            summary.add_row(f"cross-style kNN@{kk}", f"{f(r.cross_style_knn_precision.get(kk))} (neighbours among other scan styles only)")
        summary.add_row(f"same-style neighbours@{r.k[-1]}",
                        f"{f(r.style_knn_precision.get(r.k[-1]))} (chance {f(r.style_knn_chance)}; the further above it, the more the vectors "
                        "encode the scanner)")
        if r.clustered_pages:
            summary.add_row("style leakage NMI", f"{f(r.style_nmi)} / clustered {f(r.style_nmi_clustered)} "
                            f"(clusters vs scan style, low is good; vs type: {f(r.nmi)})")
    else:
        summary.add_row("scan styles", r.style_note or "not measured")
    out.print(summary)
    per = Table(title="per category")
    for name in ("category", "pages", *(f"kNN@{kk}" for kk in r.k), "noise", "top cluster", "share", "its purity"):
        per.add_column(name, justify="left" if name == "category" else "right", no_wrap=name == "category")
    for c in r.per_category:
        per.add_row(c.category, str(c.pages), *(f(c.knn[kk]) for kk in r.k), f(c.noise_share, ".0%"),
                    "-" if c.top_cluster is None else str(c.top_cluster), f(c.top_cluster_share, ".0%"), f(c.top_cluster_purity, ".0%"))
    out.print(per)
    if r.per_style:
        by_style = Table(title="per scan style")
        for name in ("style", "pages", *(f"cross-style kNN@{kk}" for kk in r.k), "noise"):
            by_style.add_column(name, justify="left" if name == "style" else "right", no_wrap=name == "style")
        for st in r.per_style:
            by_style.add_row(st.style, str(st.pages), *(f(st.cross_style_knn[kk]) for kk in r.k), f(st.noise_share, ".0%"))
        out.print(by_style)
    if r.confusion:
        cols = r.confusion["clusters"]
        conf = Table(title="confusion (rows: categories, columns: clusters, -1 = noise)")
        conf.add_column("category")
        for c in cols:
            conf.add_column(str(c), justify="right")
        for cat, row in zip(r.confusion["categories"], r.confusion["matrix"]):
            conf.add_row(cat, *(str(v) if v else "." for v in row))
        out.print(conf)
    if r.missing_labels:
        err.print(f"{len(r.missing_labels)} labels match no stored page:", highlight=False)
        for m in r.missing_labels[:20]:
            err.print(f"  {m.file} page {m.page} ({m.category}): {m.reason}", highlight=False)
        if len(r.missing_labels) > 20:
            err.print(f"  ... {len(r.missing_labels) - 20} more (see --json)", highlight=False)


@command()
def ui(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8501,
    address: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean to share it.")] = "127.0.0.1",
) -> None:
    """Open the Streamlit app on the collection."""
    import os
    import subprocess

    from docsort.faces import APP_SCRIPT as app_py

    if not app_py.is_file():
        raise _fail(f"{app_py} not found: this docsort install is incomplete (reinstall it)", 3)
    env = {**os.environ, "DOCSORT_COLLECTION": str(collection.resolve())}
    # The same options as .streamlit/config.toml (read only from the current folder by `streamlit run`).
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_py), "--server.address", address, "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.maxUploadSize", "200",
           "--server.enableXsrfProtection", "true", "--server.enableCORS", "true", "--server.fileWatcherType", "none",
           "--client.toolbarMode", "minimal"]
    raise typer.Exit(subprocess.call(cmd, env=env))


if __name__ == "__main__":  # pragma: no cover
    app()
