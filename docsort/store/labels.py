"""The labels repository: every SQL statement on ``page_labels`` (document types given by people)
and ``page_predictions`` (the classifier's predictions), whose schema :mod:`docsort.store.storage`
owns. The rules (type names, training, thresholds) are :mod:`docsort.jobs.classify`'s; writes here
run in one transaction each and are called by that job only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from docsort.store.storage import Collection, CollectionError

__all__ = [
    "existing_types", "missing_page_ids", "upsert_labels", "pages_with_other_page_label", "delete_labels",
    "label_rows", "label_counts", "label_pairs", "pages_to_predict", "replace_predictions", "label_table_rows",
    "prediction_table_rows",
]

#: Ids per ``IN (...)`` list: below SQLite's default limit of 999 bound parameters.
CHUNK = 900


def _chunks(ids: Sequence[int], n: int = CHUNK) -> Iterable[list[int]]:
    for i in range(0, len(ids), n):
        yield list(ids[i:i + n])


def existing_types(collection: Collection) -> list[str]:
    """The distinct labelled types, in name order."""
    return [r[0] for r in collection.query("SELECT DISTINCT type FROM page_labels ORDER BY type")]


def missing_page_ids(collection: Collection, page_ids: Sequence[int]) -> list[int]:
    """Those of ``page_ids`` (ints) that are not stored pages, in the given order."""
    missing: list[int] = []
    for chunk in _chunks(page_ids):
        found = {r[0] for r in collection.query(f"SELECT id FROM pages WHERE id IN ({','.join('?' * len(chunk))})", chunk)}
        missing += [i for i in chunk if i not in found]
    return missing


def upsert_labels(collection: Collection, page_ids: Sequence[int], name_of: Callable[[list[str]], str], source: str,
                  cluster: int | None, who: str, at: str) -> str:
    """Give ``page_ids`` one label and drop their predictions (a labelled page needs none), in one
    write transaction. The type is ``name_of(existing types)``, called inside the transaction, so two
    writers labelling at once see each other's types. ``at``: ISO 8601 UTC.

    Returns:
        The type stored.

    Raises:
        CollectionError: a page id that is not in the collection (nothing is written then);
        whatever ``name_of`` raises.
    """
    with collection.transaction() as c:
        doc_type = name_of(existing_types(collection))
        missing = missing_page_ids(collection, page_ids)
        if missing:
            raise CollectionError(f"no page with id {missing[0]} in {collection.root}")
        c.executemany(
            "INSERT INTO page_labels(page_id, type, source, cluster, who, at) VALUES(?,?,?,?,?,?) "
            "ON CONFLICT(page_id) DO UPDATE SET type=excluded.type, source=excluded.source, "
            "cluster=excluded.cluster, who=excluded.who, at=excluded.at",
            [(i, doc_type, source, cluster, who, at) for i in page_ids],
        )
        for chunk in _chunks(page_ids):
            c.execute(f"DELETE FROM page_predictions WHERE page_id IN ({','.join('?' * len(chunk))})", chunk)
    return doc_type


def pages_with_other_page_label(collection: Collection, page_ids: Sequence[int], doc_type: str) -> set[int]:
    """Those of ``page_ids`` labelled one by one (source ``page``) with a type other than ``doc_type``."""
    out: set[int] = set()
    for chunk in _chunks(page_ids):
        marks = ",".join("?" * len(chunk))
        out |= {r[0] for r in collection.query(
            f"SELECT page_id FROM page_labels WHERE source='page' AND type<>? AND page_id IN ({marks})", [doc_type, *chunk])}
    return out


def delete_labels(collection: Collection, page_ids: Sequence[int]) -> int:
    """Remove the labels of ``page_ids`` in one transaction; returns how many there were."""
    removed = 0
    with collection.transaction() as c:
        for chunk in _chunks(page_ids):
            removed += c.execute(f"DELETE FROM page_labels WHERE page_id IN ({','.join('?' * len(chunk))})", chunk).rowcount
    return removed


def label_rows(collection: Collection) -> list[tuple]:
    """Every label with its page and document, by page id: ``(page_id, document_id, path, page_no,
    sha256, type, source, cluster, who, at)``."""
    return collection.query(
        "SELECT l.page_id, p.document_id, d.path, p.page_no, d.sha256, l.type, l.source, l.cluster, l.who, l.at "
        "FROM page_labels l JOIN pages p ON p.id = l.page_id JOIN documents d ON d.id = p.document_id ORDER BY l.page_id"
    )


def label_counts(collection: Collection) -> dict[str, int]:
    """``{type: labelled pages}``, types in name order."""
    return {t: int(n) for t, n in collection.query("SELECT type, COUNT(*) FROM page_labels GROUP BY type ORDER BY type")}


def label_pairs(collection: Collection) -> list[tuple[int, str]]:
    """``(page_id, type)`` of every label, by page id."""
    return collection.query("SELECT page_id, type FROM page_labels ORDER BY page_id")


def pages_to_predict(collection: Collection, model_version: str | None = None) -> list[int]:
    """Ids of the unlabelled pages, by id; with ``model_version``, only those without a prediction of that model."""
    if model_version is not None:
        sql = ("SELECT p.id FROM pages p LEFT JOIN page_labels l ON l.page_id = p.id "
               "LEFT JOIN page_predictions pr ON pr.page_id = p.id "
               "WHERE l.page_id IS NULL AND (pr.page_id IS NULL OR pr.model_version <> ?) ORDER BY p.id")
        return [r[0] for r in collection.query(sql, (model_version,))]
    sql = "SELECT p.id FROM pages p LEFT JOIN page_labels l ON l.page_id = p.id WHERE l.page_id IS NULL ORDER BY p.id"
    return [r[0] for r in collection.query(sql)]


def replace_predictions(collection: Collection, rows: Sequence[tuple], *, drop_all: bool) -> None:
    """Store predictions ``(page_id, type, probability, similarity, unsure, threshold, model_version,
    at)`` in one transaction, first dropping every prediction (``drop_all``) or only those of
    labelled pages."""
    with collection.transaction() as c:
        if drop_all:
            c.execute("DELETE FROM page_predictions")
        else:
            c.execute("DELETE FROM page_predictions WHERE page_id IN (SELECT page_id FROM page_labels)")
        c.executemany("INSERT OR REPLACE INTO page_predictions VALUES(?,?,?,?,?,?,?,?)", rows)


def label_table_rows(collection: Collection) -> list[tuple]:
    """``(page_id, type, source, who, at)`` of every label."""
    return collection.query("SELECT page_id, type, source, who, at FROM page_labels")


def prediction_table_rows(collection: Collection) -> list[tuple]:
    """``(page_id, type, probability, similarity, unsure, model_version)`` of every prediction."""
    return collection.query("SELECT page_id, type, probability, similarity, unsure, model_version FROM page_predictions")
