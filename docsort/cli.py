"""The ``docsort`` command line (Typer): ingest, cluster, search, info, export, rename, ui.

Every command takes ``--collection PATH`` (env ``DOCSORT_COLLECTION``, default
``./docsort-collection``) and ``--pipeline NAME|PATH`` (default ``default``). Exit codes: 0 success,
1 some files failed to ingest, 2 usage or settings error, 3 environment error (poppler missing,
weights unavailable, collection busy).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .settings import PipelineError, PipelineSettings, load_pipeline

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


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _pipeline(name: str | None) -> tuple[PipelineSettings, bool]:
    try:
        return load_pipeline(name or "default"), name is not None
    except PipelineError as exc:
        raise _fail(str(exc), 2) from exc


def _open(collection: Path, create: bool = False):
    from .storage import Collection, CollectionError

    try:
        return Collection(collection, create=create)
    except CollectionError as exc:
        raise _fail(str(exc), 2) from exc


def _environment_errors():
    from .features import BackboneError
    from .pages import PopplerMissingError
    from .storage import CollectionBusyError
    from .weights import WeightsError

    return (PopplerMissingError, WeightsError, BackboneError, CollectionBusyError)


@app.command()
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
) -> None:
    """Rasterize, embed and index every new page (PDF, TIFF, PNG, JPEG). Resumable; re-running adds nothing."""
    from .pipeline import effective_settings, ingest as run_ingest
    from .storage import CollectionError

    requested, explicit = _pipeline(pipeline)
    col = _open(collection, create=True)
    try:
        settings = effective_settings(col, requested, explicit=explicit, weights=weights)
        report = run_ingest(col, paths, settings, progress=progress, lock_timeout_s=lock_timeout)
    except _environment_errors() as exc:  # before CollectionError: CollectionBusyError is one
        raise _fail(str(exc), 3) from exc
    except CollectionError as exc:
        raise _fail(str(exc), 2) from exc
    except KeyboardInterrupt:
        err.print("interrupted: documents stored so far are kept; run the same command again to resume")
        raise typer.Exit(130)
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
    out.print(f"weights: {report.weights_note}", highlight=False)
    if report.failures:
        raise typer.Exit(1)


@app.command()
def cluster(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    pipeline: PipelineOpt = None,
    lock_timeout: Annotated[float, typer.Option(help="Seconds to wait when another process is writing.")] = 600.0,
) -> None:
    """UMAP + HDBSCAN over the collection; prints a cluster summary table."""
    from .clustering import ClusteringError
    from .pipeline import cluster as run_cluster, effective_settings

    requested, explicit = _pipeline(pipeline)
    col = _open(collection)
    try:
        settings = effective_settings(col, requested, explicit=explicit)
        with err.status("clustering (UMAP + HDBSCAN)..."):
            result = run_cluster(col, settings, lock_timeout_s=lock_timeout)
        out.print(
            f"{result.n_clusters} clusters, {result.n_noise} of {len(result.labels)} pages noise "
            f"({100 * result.n_noise / len(result.labels):.0f}%), {result.seconds:.1f} s "
            f"(UMAP n_components={result.params['umap']['n_components']}, "
            f"HDBSCAN min_cluster_size={result.params['hdbscan']['min_cluster_size']}, "
            f"min_samples={result.params['hdbscan']['min_samples']})",
            highlight=False,
        )
        _print_clusters(col)
    except ClusteringError as exc:
        raise _fail(str(exc), 2) from exc
    except _environment_errors() as exc:
        raise _fail(str(exc), 3) from exc
    finally:
        col.close()


def _print_clusters(col) -> None:
    from .pipeline import cluster_table

    table = Table(title="clusters")
    for name, justify in (("cluster", "right"), ("name", "left"), ("pages", "right"), ("documents", "right"), ("examples", "left")):
        table.add_column(name, justify=justify)
    for row in cluster_table(col):
        table.add_row(str(row.cluster), row.name, str(row.pages), str(row.documents), ", ".join(row.examples))
    out.print(table)


@app.command()
def search(
    query: Annotated[Optional[Path], typer.Argument(help="A scan to find similar documents for (embedded, not stored).")] = None,
    page: Annotated[Optional[int], typer.Option(help="Search by a stored page id instead of a file.")] = None,
    k: Annotated[int, typer.Option("-k", "--top", help="Neighbours per query page and documents shown.", min=1)] = 5,
    collection: CollectionOpt = DEFAULT_COLLECTION,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Top-k most similar pages and documents, with cosine scores and cluster ids."""
    from .pages import PageError
    from .pipeline import effective_settings, search_file, search_page
    from .storage import CollectionError

    if (query is None) == (page is None):
        raise _fail("give either a file to search with or --page ID", 2)
    col = _open(collection)
    try:
        settings = effective_settings(col, load_pipeline("default"))
        result = search_page(col, page, settings, k) if page is not None else search_file(col, query, settings, k)
    except (PageError, CollectionError) as exc:
        raise _fail(str(exc), 2) from exc
    except _environment_errors() as exc:
        raise _fail(str(exc), 3) from exc
    finally:
        col.close()
    if as_json:
        from dataclasses import asdict

        out.print_json(json.dumps({"query": result.query, "pages": [asdict(h) for h in result.pages], "documents": [asdict(h) for h in result.documents]}))
        return
    table = Table(title=f"pages most like {result.query}")
    for c in ("query page", "rank", "score", "page id", "file", "page", "cluster"):
        table.add_column(c)
    for h in result.pages:
        table.add_row(str(h.query_page), str(h.rank), f"{h.score:.3f}", str(h.page_id), h.path, str(h.page_no), _cluster_label(h.cluster, h.cluster_name))
    out.print(table)
    table = Table(title="documents")
    for c in ("rank", "score", "file", "best page", "cluster"):
        table.add_column(c)
    for h in result.documents:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.path, str(h.best_page_no), _cluster_label(h.cluster, h.cluster_name))
    out.print(table)


def _cluster_label(cid, name) -> str:
    if cid is None:
        return "-"
    return f"{cid} ({name})" if name and name != f"cluster {cid}" else str(cid)


@app.command()
def info(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Collection summary: documents, pages, clusters, backbone, weights sha256."""
    from .pipeline import info as run_info

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


@app.command()
def export(
    out_path: Annotated[Path, typer.Argument(metavar="OUT", help="Output file: .parquet or .csv.")],
    vectors: Annotated[bool, typer.Option("--vectors", help="Include the feature vector of each page.")] = False,
    collection: CollectionOpt = DEFAULT_COLLECTION,
) -> None:
    """One row per page: path, page, sha256, cluster, cluster name, UMAP x/y."""
    from .pipeline import export_pages

    col = _open(collection)
    try:
        n = export_pages(col, out_path, vectors=vectors)
    except ValueError as exc:
        raise _fail(str(exc), 2) from exc
    finally:
        col.close()
    out.print(f"wrote {n} pages to {out_path}", highlight=False)


@app.command()
def rename(
    cluster_id: Annotated[int, typer.Argument(help="Cluster id.")],
    name: Annotated[str, typer.Argument(help="New name.")],
    collection: CollectionOpt = DEFAULT_COLLECTION,
) -> None:
    """Name a cluster (kept in the collection; shown by cluster, search, export and the UI)."""
    from .storage import CollectionError

    col = _open(collection)
    try:
        col.rename_cluster(cluster_id, name)
    except CollectionError as exc:
        raise _fail(str(exc), 2) from exc
    finally:
        col.close()
    out.print(f"cluster {cluster_id} is now {name!r}", highlight=False)


@app.command()
def ui(
    collection: CollectionOpt = DEFAULT_COLLECTION,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8501,
    address: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean to share it.")] = "127.0.0.1",
) -> None:
    """Open the Streamlit app on the collection."""
    import os
    import subprocess

    app_py = Path(__file__).resolve().parent.parent / "app.py"
    if not app_py.is_file():
        raise _fail(f"{app_py} not found (the UI runs from a source checkout)", 3)
    env = {**os.environ, "DOCSORT_COLLECTION": str(collection.resolve())}
    # The same options as .streamlit/config.toml (read only from the current folder by `streamlit run`).
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_py), "--server.address", address, "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.maxUploadSize", "200",
           "--server.enableXsrfProtection", "true", "--server.enableCORS", "true", "--server.fileWatcherType", "none"]
    raise typer.Exit(subprocess.call(cmd, env=env))


if __name__ == "__main__":  # pragma: no cover
    app()
