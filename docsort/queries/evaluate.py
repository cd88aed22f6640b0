"""The *evaluation* stage: how well a collection's vectors and clusters sort labelled pages.

Given a ``labels.csv`` (columns ``file``, ``page``, ``category``; ``source`` and ``licence`` may
follow) whose ``file`` entries are paths relative to the CSV's folder, :func:`evaluate` matches
each row to a stored page and measures:

* **kNN precision@k** (leave-one-out, cosine): for each labelled page, the share of its k
  nearest *other* labelled pages that carry its category, averaged over pages. Exact search
  (FAISS ``IndexFlatIP`` over the re-normalised vectors), whatever index the collection uses.
  This is the retrieval measure of image-retrieval work (e.g. Radenovic et al. 2018); it
  judges the vectors alone, before UMAP and HDBSCAN.
* **ARI and NMI** of the stored clusters against the categories (Hubert & Arabie 1985;
  Strehl & Ghosh 2002; scikit-learn's ``adjusted_rand_score`` and
  ``normalized_mutual_info_score``, arithmetic normalisation). On *all* labelled pages, each
  noise page counts as a cluster of its own (a page HDBSCAN left unsorted groups with nothing),
  and on the clustered pages only.
* the **share of pages in noise**, **purity** (the share of clustered pages in their cluster's
  majority category), **per-category** figures, and the **confusion table** (categories x
  clusters, noise as cluster -1; scikit-learn's ``contingency_matrix``).

When ``labels.csv`` also has a ``style`` column (how each page was scanned: e.g. ``fax_bilevel``,
``grey_jpeg``; any strings), the evaluation adds what tells sorting by type from sorting by scan
style (issue 13):

* **cross-style kNN precision@k**: kNN precision where a page's neighbours are searched only
  among pages scanned in *another* style than the page (same-style pages skipped, as the
  other-documents figure skips the page's own document). High means a type is found across
  scanners; a sorter that groups by scan style scores low here however high its plain kNN.
* **style kNN@k**: the share of a page's k nearest neighbours (all pages) that share its style,
  next to its chance level (the share a random other page would have, averaged over pages): far
  above chance means the vectors encode the scanner.
* **style leakage**: NMI between the stored clusters and the styles (noise pages as
  singletons, and on the clustered pages only), to read next to NMI with the categories: low is
  good (0 = the clusters say nothing about the scanner).
* per-style figures (pages, cross-style kNN, noise share).

Without a ``style`` column these figures are ``None`` and the evaluation says why
(``style_note``).

Rows are matched to documents by the sha256 of the labelled file's bytes when the file exists
(so renamed copies and paths ingested relative to another folder match), otherwise by the
resolved path. Stored pages without a label are ignored and counted; labels that match no stored
page are listed with the reason.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from docsort.core.pages import sha256_file
from docsort.store.manifest import read_manifest
from docsort.store.storage import Collection

__all__ = [
    "LabelsError",
    "LabelRow",
    "MissingLabel",
    "CategoryStats",
    "ClusterStats",
    "Evaluation",
    "read_labels",
    "match_labels",
    "knn_precision",
    "cross_style_knn_precision",
    "style_leakage",
    "cluster_scores",
    "StyleStats",
    "match_label_rows",
    "evaluate",
]


class LabelsError(ValueError):
    """The labels file is missing, unreadable, lacks a required column, or has a bad row."""


@dataclass(frozen=True)
class LabelRow:
    """One row of ``labels.csv``.

    Attributes:
        file: the path as written in the CSV (relative to the CSV's folder, or absolute).
        page: 1-based page number within the file.
        category: the ground-truth kind of document.
        path: ``file`` resolved against the CSV's folder.
        line: line number in the CSV (for messages).
        style: the scan style from the optional ``style`` column (``None`` without that column).
    """

    file: str
    page: int
    category: str
    path: Path
    line: int
    style: str | None = None


@dataclass(frozen=True)
class MissingLabel:
    """A label that matched no stored page, and why (``file not found``, ``not in the collection``,
    ``document has N pages``, ``conflicting labels``)."""

    file: str
    page: int
    category: str
    reason: str


@dataclass
class CategoryStats:
    """Per-category figures.

    Attributes:
        category, pages: the category and its number of matched pages.
        knn: ``{k: precision@k}`` over this category's pages (``None`` where k >= matched pages).
        noise_share: share of its clustered pages that HDBSCAN left as noise (``None`` unclustered).
        top_cluster: the cluster holding most of its pages (noise excluded), or ``None``.
        top_cluster_share: share of the category's clustered pages in ``top_cluster``.
        top_cluster_purity: share of ``top_cluster``'s pages that are of this category.
    """

    category: str
    pages: int
    knn: dict[int, float | None]
    noise_share: float | None = None
    top_cluster: int | None = None
    top_cluster_share: float | None = None
    top_cluster_purity: float | None = None


@dataclass
class ClusterStats:
    """Per-cluster figures: size in labelled pages, majority category and its share (purity)."""

    cluster: int
    pages: int
    majority: str
    purity: float


@dataclass
class StyleStats:
    """Per-scan-style figures (only with a ``style`` column).

    Attributes:
        style, pages: the style and its number of matched pages.
        cross_style_knn: ``{k: precision@k}`` over this style's pages, neighbours searched among
            pages of other styles (``None`` where not measurable).
        noise_share: share of its clustered pages in noise (``None`` unclustered).
    """

    style: str
    pages: int
    cross_style_knn: dict[int, float | None]
    noise_share: float | None = None


@dataclass
class Evaluation:
    """Everything :func:`evaluate` measured; :meth:`to_dict` is what ``docsort evaluate --json`` writes.

    Attributes:
        labels_file, collection: what was evaluated.
        pages_in_collection: stored pages; labelled_pages: those matched to a label;
        unlabelled_pages: stored pages with no label (ignored).
        missing_labels: labels that matched no stored page, with reasons.
        categories: category names, sorted.
        k: the k values; knn_precision: ``{k: precision@k}`` (``None`` where k >= labelled pages);
        knn_precision_other_documents: the same with neighbours from the query page's own
            document skipped (a multi-page file cannot vouch for itself).
        clustered_pages: labelled pages with a stored cluster (0 before ``docsort cluster``);
        n_clusters: clusters among them; noise_share: share of them in noise;
        ari, nmi: against the categories, noise pages as singletons;
        ari_clustered, nmi_clustered: on the pages in a cluster only; purity: see module doc.
        per_category, clusters: :class:`CategoryStats` and :class:`ClusterStats` rows.
        confusion: ``{"categories": [...], "clusters": [...], "matrix": [[int]]}``, rows =
            categories, columns = clusters (noise = -1 first).
        features, clustering: what made the vectors and clusters (from the manifest and the
            last clustering run).
        vectors: which vectors the kNN figures judge (stored visual, or those given).
        styles: the scan styles, sorted (``None`` without a ``style`` column; then
            ``style_note`` says so and every style figure is ``None``).
        cross_style_knn_precision: ``{k: precision@k}``, neighbours among pages of other styles.
        style_knn_precision: ``{k: share of the k nearest neighbours with the page's style}``;
            style_knn_chance: that share for random neighbours (mean over pages of
            ``(n_style - 1) / (n - 1)``).
        style_nmi, style_nmi_clustered: NMI of clusters vs styles (noise as singletons / on
            clustered pages only): *style leakage*, low is good.
        per_style: :class:`StyleStats` rows.
    """

    labels_file: str
    collection: str
    pages_in_collection: int
    labelled_pages: int
    unlabelled_pages: int
    missing_labels: list[MissingLabel]
    categories: list[str]
    k: list[int]
    knn_precision: dict[int, float | None]
    knn_precision_other_documents: dict[int, float | None] = field(default_factory=dict)
    clustered_pages: int = 0
    n_clusters: int | None = None
    noise_share: float | None = None
    ari: float | None = None
    nmi: float | None = None
    ari_clustered: float | None = None
    nmi_clustered: float | None = None
    purity: float | None = None
    per_category: list[CategoryStats] = field(default_factory=list)
    clusters: list[ClusterStats] = field(default_factory=list)
    confusion: dict | None = None
    features: dict = field(default_factory=dict)
    clustering: dict | None = None
    vectors: str = "stored visual vectors"
    styles: list[str] | None = None
    style_note: str | None = None
    cross_style_knn_precision: dict[int, float | None] | None = None
    style_knn_precision: dict[int, float | None] | None = None
    style_knn_chance: float | None = None
    style_nmi: float | None = None
    style_nmi_clustered: float | None = None
    per_style: list[StyleStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict (k values become string keys, as JSON requires)."""
        d = asdict(self)
        for key in ("knn_precision", "knn_precision_other_documents", "cross_style_knn_precision", "style_knn_precision"):
            if d[key] is not None:
                d[key] = {str(k): v for k, v in d[key].items()}
        for row in d["per_category"]:
            row["knn"] = {str(k): v for k, v in row["knn"].items()}
        for row in d["per_style"]:
            row["cross_style_knn"] = {str(k): v for k, v in row["cross_style_knn"].items()}
        return d


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------


def read_labels(path: str | os.PathLike[str]) -> list[LabelRow]:
    """Read ``labels.csv``.

    Args:
        path: a CSV with a header row holding at least ``file``, ``page`` and ``category``; an
            optional ``style`` column gives each page's scan style.

    Returns:
        The rows, in file order, with ``file`` resolved against the CSV's folder (``style``
        ``None`` without a ``style`` column).

    Raises:
        LabelsError: file missing or unreadable, a required column missing, a page that is not a
            positive integer, an empty category, an empty style where the column exists, or no rows.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = {"file", "page", "category"} - set(reader.fieldnames or [])
            if missing:
                raise LabelsError(f"{path}: missing column(s) {sorted(missing)} (need file, page, category)")
            has_style = "style" in (reader.fieldnames or [])
            rows = []
            for line, r in enumerate(reader, start=2):
                try:
                    page = int(r["page"])
                except (TypeError, ValueError):
                    raise LabelsError(f"{path}:{line}: page {r['page']!r} is not an integer") from None
                if page < 1:
                    raise LabelsError(f"{path}:{line}: page numbers start at 1, got {page}")
                category = (r["category"] or "").strip()
                if not category or not (r["file"] or "").strip():
                    raise LabelsError(f"{path}:{line}: empty file or category")
                style = (r["style"] or "").strip() if has_style else None
                if has_style and not style:
                    raise LabelsError(f"{path}:{line}: empty style (the style column, when present, needs a value on every row)")
                rows.append(LabelRow(r["file"], page, category, (path.parent / r["file"]).resolve(), line, style))
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read labels: {exc.strerror or exc}") from exc
    except (csv.Error, UnicodeDecodeError) as exc:
        raise LabelsError(f"{path}: not a readable CSV: {exc}") from exc
    if not rows:
        raise LabelsError(f"{path}: no labels")
    return rows


def match_labels(collection: Collection, rows: list[LabelRow]) -> tuple[np.ndarray, np.ndarray, list[MissingLabel]]:
    """Match label rows to stored pages.

    A row matches the stored document whose sha256 equals that of the labelled file's bytes
    (when the file exists), else the document stored under the same resolved path; then the
    page with that number.

    Returns:
        ``(page_ids, categories, missing)``: int64 (n,) page ids, ascending; str (n,) their
        categories; and the rows that matched nothing, or that gave one page two categories
        or two styles (``conflicting labels``; such pages are left out). :func:`match_label_rows`
        gives the matched rows themselves (styles included).
    """
    ids, chosen, missing = match_label_rows(collection, rows)
    return ids, np.array([chosen[int(i)].category for i in ids], dtype=object).astype(str), missing


def match_label_rows(collection: Collection, rows: list[LabelRow]) -> tuple[np.ndarray, dict[int, LabelRow], list[MissingLabel]]:
    """Match label rows to stored pages, as :func:`match_labels` does, keeping the rows.

    Returns:
        ``(page_ids, rows_by_id, missing)``: int64 (n,) page ids, ascending; ``{page id: the
        first row that labelled it}``; and the rows that matched nothing or conflict (two
        categories, or two styles, for one page: that page is left out).
    """
    table = collection.page_table()
    by_doc_page = {(int(d), int(p)): int(pid) for d, p, pid in zip(table["document_id"], table["page"], table["page_id"])}
    pages_of = Counter(int(d) for d in table["document_id"])
    doc_by_sha = dict(zip(table["sha256"], table["document_id"].astype(int)))
    doc_by_path: dict[str, int] | None = None
    sha_cache: dict[Path, str | None] = {}

    def document_for(row: LabelRow) -> tuple[int | None, str]:
        nonlocal doc_by_path
        if row.path not in sha_cache:
            try:
                sha_cache[row.path] = sha256_file(row.path) if row.path.is_file() else None
            except OSError:
                sha_cache[row.path] = None
        sha = sha_cache[row.path]
        if sha is not None and sha in doc_by_sha:
            return int(doc_by_sha[sha]), ""
        if doc_by_path is None:  # every path each document was seen under, resolved
            doc_by_path = {}
            for doc in pages_of:
                for p in collection.document_paths(doc):
                    doc_by_path.setdefault(str(Path(p).resolve()), doc)
        doc = doc_by_path.get(str(row.path))
        if doc is not None:
            return doc, ""
        return None, "not in the collection" if sha is not None else "file not found"

    chosen: dict[int, LabelRow] = {}
    rows_of: dict[int, list[LabelRow]] = {}
    missing: list[MissingLabel] = []
    for row in rows:
        doc, reason = document_for(row)
        if doc is None:
            missing.append(MissingLabel(row.file, row.page, row.category, reason))
            continue
        pid = by_doc_page.get((doc, row.page))
        if pid is None:
            missing.append(MissingLabel(row.file, row.page, row.category, f"document has {pages_of[doc]} pages"))
            continue
        rows_of.setdefault(pid, []).append(row)
        chosen.setdefault(pid, row)
    for pid, rs in rows_of.items():
        if len({r.category for r in rs}) > 1 or len({r.style for r in rs}) > 1:
            del chosen[pid]
            what = sorted({r.category for r in rs}) + sorted({f"style {r.style}" for r in rs} if len({r.style for r in rs}) > 1 else [])
            missing += [MissingLabel(r.file, r.page, r.category, f"conflicting labels ({', '.join(what)})") for r in rs]
    ids = np.array(sorted(chosen), dtype=np.int64)
    return ids, chosen, missing


# ---------------------------------------------------------------------------------------------
# metrics on arrays (the feature study calls these directly)
# ---------------------------------------------------------------------------------------------


def knn_precision(
    vectors: np.ndarray, categories: np.ndarray, ks: list[int] | tuple[int, ...], groups: np.ndarray | None = None
) -> tuple[dict[int, float | None], dict[int, np.ndarray]]:
    """Leave-one-out kNN precision@k under cosine similarity.

    Args:
        vectors: float (n, D); rows are L2-normalised here (zero rows stay zero).
        categories: (n,) labels of any comparable type.
        ks: the k values, each >= 1.
        groups: optional (n,) group of each page (e.g. its document): neighbours from the
            query's own group are skipped, so pages of one document cannot vouch for each other.

    Returns:
        ``(precision, per_page)``: ``{k: mean precision@k}`` (``None`` where fewer than k other
        pages, or pages of other groups, exist) and ``{k: float (n,) per-page precision@k}`` for
        the k that could be measured. Ties in similarity are broken by FAISS' order (lower
        index first).

    Raises:
        ValueError: a k below 1, or vectors and categories of different lengths.
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    cats = np.asarray(categories)
    if len(x) != len(cats):
        raise ValueError(f"{len(x)} vectors but {len(cats)} categories")
    if any(k < 1 for k in ks):
        raise ValueError("k must be at least 1")
    n = len(x)
    own = np.zeros(n, dtype=np.int64) + 1
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"{n} vectors but {len(groups)} groups")
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        own = counts[inverse]
    usable = [k for k in ks if k <= n - int(own.max())]
    precision: dict[int, float | None] = {k: None for k in ks}
    per_page: dict[int, np.ndarray] = {}
    if not usable:
        return precision, per_page
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    kmax = max(usable)
    _, nn = index.search(x, min(n, kmax + int(own.max())))
    # Drop each page itself (wherever ties put it) and its group; keep the first kmax others.
    others = np.empty((n, kmax), dtype=np.int64)
    for i in range(n):
        keep = (nn[i] != i) & (nn[i] >= 0)
        if groups is not None:
            keep &= groups[np.maximum(nn[i], 0)] != groups[i]
        others[i] = nn[i][keep][:kmax]
    same = cats[others] == cats[:, None]
    for k in usable:
        per_page[k] = same[:, :k].mean(axis=1)
        precision[k] = float(per_page[k].mean())
    return precision, per_page


def cluster_scores(categories: np.ndarray, clusters: np.ndarray) -> dict:
    """ARI, NMI, noise share and purity of a clustering against categories.

    Args:
        categories: (n,) ground truth; clusters: int (n,), -1 = noise.

    Returns:
        ``{"ari", "nmi"}`` with each noise page as a singleton cluster, ``{"ari_clustered",
        "nmi_clustered"}`` over the pages in a cluster only (``None`` when fewer than 2 are),
        ``"noise_share"``, ``"n_clusters"`` and ``"purity"`` (share of clustered pages in their
        cluster's majority category; ``None`` without clusters).
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    cats = np.asarray(categories)
    clusters = np.asarray(clusters, dtype=np.int64)
    noise = clusters < 0
    singletons = clusters.copy()
    top = int(clusters.max()) + 1 if len(clusters) else 0
    singletons[noise] = top + np.arange(int(noise.sum()))
    out = {
        "ari": float(adjusted_rand_score(cats, singletons)) if len(cats) else None,
        "nmi": float(normalized_mutual_info_score(cats, singletons)) if len(cats) else None,
        "noise_share": float(noise.mean()) if len(cats) else None,
        "n_clusters": int(len(set(clusters[~noise].tolist()))),
        "ari_clustered": None,
        "nmi_clustered": None,
        "purity": None,
    }
    kept = ~noise
    if kept.sum() >= 2:
        out["ari_clustered"] = float(adjusted_rand_score(cats[kept], clusters[kept]))
        out["nmi_clustered"] = float(normalized_mutual_info_score(cats[kept], clusters[kept]))
    if kept.any():
        majority = sum(Counter(cats[kept & (clusters == c)].tolist()).most_common(1)[0][1] for c in set(clusters[kept].tolist()))
        out["purity"] = majority / int(kept.sum())
    return out


def cross_style_knn_precision(
    vectors: np.ndarray, categories: np.ndarray, styles: np.ndarray, ks: list[int] | tuple[int, ...]
) -> tuple[dict[int, float | None], dict[int, np.ndarray]]:
    """Leave-one-out kNN precision@k with each page's neighbours searched among other scan styles.

    :func:`knn_precision` with the styles as the groups: a neighbour scanned in the page's own
    style is skipped, so only pages of another scanner can vouch for the page's type (issue 13).

    Args:
        vectors: float (n, D); categories: (n,) labels; styles: (n,) scan style of each page.
        ks: the k values, each >= 1.

    Returns:
        As :func:`knn_precision`: ``{k: mean precision@k}`` (``None`` where fewer than k pages of
        other styles exist for the largest style) and ``{k: float (n,) per page}``.

    Raises:
        ValueError: a k below 1, or arrays of different lengths.
    """
    return knn_precision(vectors, categories, ks, groups=np.asarray(styles))


def style_leakage(styles: np.ndarray, clusters: np.ndarray) -> dict:
    """How much a clustering tells about the scan style: NMI of clusters vs styles (low is good).

    Args:
        styles: (n,) scan style of each page; clusters: int (n,), -1 = noise.

    Returns:
        ``{"style_nmi"}`` with each noise page as a singleton cluster (as :func:`cluster_scores`
        counts NMI with the categories) and ``{"style_nmi_clustered"}`` over the pages in a
        cluster only (``None`` when fewer than 2 are). scikit-learn's
        ``normalized_mutual_info_score`` (arithmetic normalisation; Strehl & Ghosh 2002).
        A single cluster, or a single style, gives 0.

    Raises:
        ValueError: arrays of different lengths.
    """
    from sklearn.metrics import normalized_mutual_info_score

    styles = np.asarray(styles)
    clusters = np.asarray(clusters, dtype=np.int64)
    if len(styles) != len(clusters):
        raise ValueError(f"{len(styles)} styles but {len(clusters)} cluster labels")
    noise = clusters < 0
    singletons = clusters.copy()
    top = int(clusters.max()) + 1 if len(clusters) else 0
    singletons[noise] = top + np.arange(int(noise.sum()))
    kept = ~noise
    return {
        "style_nmi": float(normalized_mutual_info_score(styles, singletons)) if len(styles) else None,
        "style_nmi_clustered": float(normalized_mutual_info_score(styles[kept], clusters[kept])) if kept.sum() >= 2 else None,
    }


# ---------------------------------------------------------------------------------------------
# the whole evaluation
# ---------------------------------------------------------------------------------------------


def evaluate(
    collection: Collection,
    labels: str | os.PathLike[str],
    ks: list[int] | tuple[int, ...] = (1, 5, 10),
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
    vectors_note: str | None = None,
) -> Evaluation:
    """Evaluate a collection's vectors and its stored clustering against ``labels.csv``.

    Args:
        collection: an open collection (clustered or not: cluster figures are ``None`` before
            ``docsort cluster``; pages added since the last clustering are left out of them).
        labels: path to the labels CSV (see :func:`read_labels`).
        ks: neighbour counts for precision@k.
        vectors: ``(page_ids, vectors)``, int64 (m,) and float (m, D), the vectors to judge
            with kNN (e.g. the projected or fused ones that index and clustering use); they must
            cover every labelled page. Default: the stored visual vectors.
        vectors_note: what ``vectors`` are, recorded as ``Evaluation.vectors`` (default
            ``"stored visual vectors"`` without ``vectors``, ``"given vectors"`` with).

    Returns:
        An :class:`Evaluation`.

    Raises:
        LabelsError: the labels file is bad, or no label matches a stored page.
        ValueError: ``vectors`` lacks a labelled page, or its ids and rows differ in number.
    """
    from sklearn.metrics.cluster import contingency_matrix

    rows = read_labels(labels)
    ids, matched, missing = match_label_rows(collection, rows)
    cats = np.array([matched[int(i)].category for i in ids], dtype=object).astype(str)
    n_pages = len(collection.page_ids())
    if len(ids) == 0:
        raise LabelsError(f"{labels}: none of the {len(rows)} labels matches a page in {collection.root}")
    if vectors is None:
        _, vecs = collection.vectors(ids)
    else:
        given_ids, given = np.asarray(vectors[0], dtype=np.int64), np.asarray(vectors[1])
        if len(given_ids) != len(given):
            raise ValueError(f"{len(given_ids)} page ids but {len(given)} vectors")
        row = {int(i): r for r, i in enumerate(given_ids)}
        lacking = [int(i) for i in ids if int(i) not in row]
        if lacking:
            raise ValueError(f"the vectors given lack {len(lacking)} labelled pages (e.g. page id {lacking[0]})")
        vecs = given[[row[int(i)] for i in ids]]
    ks = sorted({int(k) for k in ks})
    knn, per_page = knn_precision(vecs, cats, ks)
    table = collection.page_table().set_index("page_id")
    knn_other, _ = knn_precision(vecs, cats, ks, groups=table.loc[ids, "document_id"].to_numpy())
    categories = sorted(set(cats.tolist()))
    manifest = read_manifest(collection)
    feats = (manifest.features if manifest else None) or {}
    result = Evaluation(
        labels_file=str(Path(labels)),
        collection=str(collection.root),
        pages_in_collection=n_pages,
        labelled_pages=len(ids),
        unlabelled_pages=n_pages - len(ids),
        missing_labels=missing,
        categories=categories,
        k=ks,
        knn_precision=knn,
        knn_precision_other_documents=knn_other,
        features={key: feats.get(key) for key in ("backbone", "layer", "pooling", "dim", "input_size", "input_mode", "preprocessing")}
        | {"weights": (feats.get("weights") or {}).get("source")},
        vectors=vectors_note or ("stored visual vectors" if vectors is None else "given vectors"),
    )
    cl = table.loc[ids, "cluster"]
    has = cl.notna().to_numpy()
    result.clustered_pages = int(has.sum())
    stats = {c: CategoryStats(c, int((cats == c).sum()), {k: (float(per_page[k][cats == c].mean()) if k in per_page else None) for k in ks})
             for c in categories}
    if has.any():
        clusters = cl[has].to_numpy(dtype=np.int64)
        ccats = cats[has]
        scores = cluster_scores(ccats, clusters)
        result.n_clusters = scores["n_clusters"]
        result.noise_share = scores["noise_share"]
        result.ari, result.nmi = scores["ari"], scores["nmi"]
        result.ari_clustered, result.nmi_clustered = scores["ari_clustered"], scores["nmi_clustered"]
        result.purity = scores["purity"]
        for cid in sorted(set(clusters.tolist()) - {-1}):
            members = Counter(ccats[clusters == cid].tolist())
            major, count = members.most_common(1)[0]
            result.clusters.append(ClusterStats(cid, sum(members.values()), major, count / sum(members.values())))
        for c, s in stats.items():
            mine = clusters[ccats == c]
            if len(mine) == 0:
                continue
            s.noise_share = float((mine < 0).mean())
            real = Counter(mine[mine >= 0].tolist())
            if real:
                top, count = min(real.items(), key=lambda kv: (-kv[1], kv[0]))
                s.top_cluster, s.top_cluster_share = int(top), count / len(mine)
                s.top_cluster_purity = float((ccats[clusters == top] == c).mean())
        columns = sorted(set(clusters.tolist()))
        matrix = contingency_matrix(ccats, clusters)
        # contingency_matrix orders rows and columns by sorted unique value: categories, clusters.
        present = sorted(set(ccats.tolist()))
        full = np.zeros((len(categories), len(columns)), dtype=np.int64)
        for r, c in enumerate(present):
            full[categories.index(c)] = matrix[r]
        result.confusion = {"categories": categories, "clusters": columns, "matrix": full.tolist()}
        run = collection.last_cluster_run()
        result.clustering = None if run is None else {"created_at": run["created_at"], **run["settings"]}
    result.per_category = list(stats.values())
    _style_figures(result, ids, matched, vecs, cats, ks, table)
    return result


def _style_figures(result: Evaluation, ids: np.ndarray, matched: dict[int, LabelRow], vecs: np.ndarray, cats: np.ndarray,
                   ks: list[int], table) -> None:
    """Fill the scan-style figures of ``result`` (or its ``style_note`` without a style column)."""
    if any(matched[int(i)].style is None for i in ids):
        result.style_note = "labels have no 'style' column: cross-style kNN and style leakage not measured"
        return
    styles = np.array([matched[int(i)].style for i in ids], dtype=object).astype(str)
    result.styles = sorted(set(styles.tolist()))
    if len(result.styles) < 2:
        result.style_note = f"every labelled page has the style {result.styles[0]!r}: cross-style kNN and style leakage need two styles"
        return
    cross, per_page = cross_style_knn_precision(vecs, cats, styles, ks)
    result.cross_style_knn_precision = cross
    result.style_knn_precision, _ = knn_precision(vecs, styles, ks)
    _, inverse, counts = np.unique(styles, return_inverse=True, return_counts=True)
    result.style_knn_chance = float(((counts[inverse] - 1) / max(1, len(styles) - 1)).mean())
    cl = table.loc[ids, "cluster"]
    has = cl.notna().to_numpy()
    clusters = cl[has].to_numpy(dtype=np.int64) if has.any() else None
    if clusters is not None:
        leak = style_leakage(styles[has], clusters)
        result.style_nmi, result.style_nmi_clustered = leak["style_nmi"], leak["style_nmi_clustered"]
    for st in result.styles:
        mine = styles == st
        row = StyleStats(st, int(mine.sum()), {k: (float(per_page[k][mine].mean()) if k in per_page else None) for k in ks})
        if clusters is not None and (mine & has).any():
            row.noise_share = float((clusters[mine[has]] < 0).mean())
        result.per_style.append(row)
