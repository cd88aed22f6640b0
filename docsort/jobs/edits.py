"""The edits job: a person's corrections to the sort (merge, split, move, rename, undo), and how
every later clustering keeps them.

An automatic sort is a first draft. Each correction is one row of the collection's edits log
(:meth:`~docsort.store.storage.Collection.record_edit`: kind, the clusters and names involved,
who, when) together with the pages it *pins*: the cluster it put each page in, and the
assignment the page had before (what :func:`undo` restores, exactly). The edits:

* :func:`merge` ``(A, B)``: every page of B joins A (A keeps its id and name; ``name`` renames
  it); the pages of both are pinned to A.
* :func:`split` ``(C, into=K)``: k-means (scikit-learn ``KMeans``, Lloyd's algorithm with
  k-means++ seeding, fixed ``random_state``) on the pages' vectors, the same fused visual + text
  vectors clustering uses, gives a :class:`SplitPreview` of K parts, written nothing yet;
  :func:`keep_split` then gives each part a fresh cluster id and pins its pages there.
* :func:`move` ``(pages, to=C | new)``: the pages are pinned to C, or to a fresh cluster.
* :func:`rename` ``(C, name)``: a user-given name (pins no page).
* :func:`undo`: the last edit not undone is reverted and marked undone (kept in the log).

**Kept across re-clustering: fit the rest, then apply the pinned assignments in edit order**
(:func:`honour_edits`, called by :func:`docsort.jobs.cluster.cluster`). UMAP + HDBSCAN run over
every page as before and their clusters get the stored ids by overlap
(:func:`~docsort.core.clustering.match_cluster_ids`). Then:

1. every page an edit not undone pinned goes to the cluster of the *latest* such edit that
   pinned it (edit order), so moved pages stay where they were put, merged clusters stay one and
   split parts stay apart, whatever the new automatic clusters are;
2. an automatic cluster more than half of whose pages are pinned to one cluster X is taken to be
   X: its pages that no edit pinned (pages added since, or never edited) join X. This is how new
   pages join an edited cluster, and how a new automatic cluster that overlaps a merged
   cluster's pinned pages maps to it. The stored models' ``label_map`` follows, so pages
   ingested later are placed (:func:`~docsort.jobs.cluster.assign_provisional`) the same way.

Constraint-based alternatives (must-link / cannot-link in the clustering itself) were not used:
UMAP and HDBSCAN take no constraints, and a semi-supervised UMAP (``target`` labels) only pulls
pinned pages together without guaranteeing them. Pinning guarantees every edit by construction.

Nothing is dropped silently: :class:`EditsReport` (in ``result.params["edits"]``, stored with the
clustering run and printed by ``docsort cluster``) lists every edit it could not honour in full:
pages of an edit that a later edit moved elsewhere (``superseded``), pages no longer stored, a
renamed cluster left with no pages, and undone edits (not applied; their pages are clustered
automatically unless an earlier edit pins them). Names stay as before: user-given names follow
their cluster id (``user_named``).

Every edit takes the collection's write lock (:meth:`~docsort.store.storage.Collection.write_lock`)
like the other jobs.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from docsort.config.settings import PipelineSettings
from docsort.store.storage import Collection, CollectionError

__all__ = [
    "EditError",
    "EditResult",
    "EditsReport",
    "SplitPreview",
    "honour_edits",
    "keep_split",
    "list_edits",
    "merge",
    "move",
    "rename",
    "split",
    "undo",
]

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class EditError(CollectionError):
    """The edit cannot be made: an unknown or noise cluster, a page without a cluster, a split
    preview that no longer matches its cluster, nothing to undo. Nothing is written then."""


@dataclass(frozen=True)
class EditResult:
    """What an edit did.

    Attributes:
        edit_id: its row in the edits log.
        kind: ``merge`` | ``split`` | ``move`` | ``rename``.
        clusters: the cluster ids it put pages in (the merge target, the split parts, the move
            target) or renamed.
        n_pages: the pages it pinned.
        message: one line for the user.
    """

    edit_id: int
    kind: str
    clusters: tuple[int, ...]
    n_pages: int
    message: str


@dataclass(frozen=True)
class SplitPreview:
    """A proposed split of one cluster, not yet kept (:func:`keep_split` keeps it).

    Attributes:
        cluster: the cluster to split.
        parts: K int64 arrays of page ids, largest part first, together exactly the cluster's
            pages at preview time.
        method: how the parts were found, e.g. ``"kmeans (fused vectors, seed 0)"``.
        seed: the k-means ``random_state``.
    """

    cluster: int
    parts: tuple[np.ndarray, ...]
    method: str
    seed: int

    @property
    def page_ids(self) -> np.ndarray:
        """All the pages of the preview, int64, ascending."""
        return np.sort(np.concatenate(self.parts)) if self.parts else np.zeros(0, np.int64)


@dataclass
class EditsReport:
    """How a clustering honoured the edits (:func:`honour_edits`).

    Attributes:
        edits: edits not undone; kept: of those, the ones honoured in full.
        pinned_pages: pages placed by an edit; joined_pages: pages no edit pinned that joined an
            edited cluster through their automatic cluster (rule 2 of the module docstring).
        conflicts: one line per edit (or part of one) that could not be honoured, never empty
            when ``kept < edits``.
        notes: undone edits, which are not applied.
    """

    edits: int = 0
    kept: int = 0
    pinned_pages: int = 0
    joined_pages: int = 0
    conflicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-able form (stored with the clustering run's settings)."""
        return asdict(self)

    def summary(self) -> str:
        """One line: ``edits: 3 of 3 kept (41 pages pinned, 2 joined edited clusters); 0 conflicts``."""
        return (f"edits: {self.kept} of {self.edits} kept ({self.pinned_pages} pages pinned, {self.joined_pages} joined "
                f"edited clusters); {len(self.conflicts)} conflict{'s' if len(self.conflicts) != 1 else ''}")


def _who(who: str | None) -> str:
    """``who``, else ``$DOCSORT_USER``, else the login name (``getpass.getuser()``), else ``unknown``."""
    if who:
        return str(who)
    try:
        return os.environ.get("DOCSORT_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _members(collection: Collection, cluster_id: int) -> np.ndarray:
    """The pages now in ``cluster_id`` (int64, ascending).

    Raises:
        EditError: noise (-1), or no page is in that cluster.
    """
    if int(cluster_id) < 0:
        raise EditError("noise (-1) is not a cluster: pick a cluster id >= 0 (`docsort cluster` lists them)")
    ids, clusters, _ = collection.cluster_assignments()
    members = ids[clusters == int(cluster_id)]
    if len(members) == 0:
        raise EditError(f"no cluster {cluster_id} in {collection.root} (`docsort cluster` lists them)")
    return members


def merge(collection: Collection, a: int, b: int, *, name: str | None = None, who: str | None = None,
          lock_timeout_s: float = 60.0, log: Log = _stderr) -> EditResult:
    """Merge cluster ``b`` into cluster ``a``: every page of both is pinned to ``a``.

    Args:
        a, b: two different cluster ids >= 0; ``a`` keeps its id and name.
        name: a new (user-given) name for the merged cluster.
        who: recorded with the edit (default :func:`_who`).

    Returns:
        The :class:`EditResult` (``clusters == (a,)``).

    Raises:
        EditError: ``a == b``, noise, or an unknown cluster. CollectionBusyError: another writer
        holds the lock past ``lock_timeout_s`` seconds.
    """
    if int(a) == int(b):
        raise EditError(f"cannot merge cluster {a} with itself")
    with collection.write_lock(lock_timeout_s, on_wait=log):
        pa, pb = _members(collection, a), _members(collection, b)
        assign = {int(p): int(a) for p in np.concatenate([pa, pb])}
        names = {int(a): name} if name and name.strip() else {}
        edit_id = collection.record_edit("merge", _who(who), {"into": int(a), "from": int(b), "n_into": len(pa), "n_from": len(pb)},
                                         assign, names)
    return EditResult(edit_id, "merge", (int(a),), len(assign),
                      f"merged cluster {b} ({len(pb)} pages) into cluster {a} ({len(pa)} pages)"
                      + (f", named {name.strip()!r}" if names else ""))


def split(collection: Collection, cluster_id: int, *, into: int = 2, settings: PipelineSettings | None = None,
          seed: int = 0) -> SplitPreview:
    """Propose a split of a cluster into ``into`` parts, writing nothing.

    The cluster's pages' vectors (:func:`docsort.queries.vectors.page_vectors`, ``fused`` mode:
    the visual vectors, projected by the invariance projection, fused with the OCR text where the
    collection has a text model: what clustering uses) are split by k-means (scikit-learn
    ``KMeans``, k-means++ initialisation, ``n_init=10``, ``random_state=seed``; Arthur & Vassilvitskii
    2007, "k-means++: the advantages of careful seeding"). The vectors are L2-normalised, so the
    Euclidean k-means groups them by cosine similarity too. Same pages, vectors and seed give the
    same parts on one machine.

    Args:
        cluster_id: the cluster (>= 0).
        into: the number of parts, 2 or more and at most the cluster's page count.
        settings: the collection's effective settings (default: its manifest's, with the default pipeline).
        seed: k-means ``random_state``.

    Returns:
        A :class:`SplitPreview`; pass it to :func:`keep_split` to keep it.

    Raises:
        EditError: noise, an unknown cluster, ``into`` < 2 or more than its pages.
    """
    from sklearn.cluster import KMeans

    from docsort.queries.vectors import page_vectors

    members = _members(collection, cluster_id)
    into = int(into)
    if into < 2:
        raise EditError(f"a split needs at least 2 parts, not {into}")
    if into > len(members):
        raise EditError(f"cluster {cluster_id} has {len(members)} pages: it cannot be split into {into} parts")
    if settings is None:
        from docsort.config.settings import load_pipeline
        from docsort.store.manifest import effective_settings

        settings = effective_settings(collection, load_pipeline("default"))
    pv = page_vectors(collection, settings, "fused", members)
    labels = KMeans(n_clusters=into, n_init=10, random_state=int(seed)).fit_predict(np.asarray(pv.vectors, np.float64))
    parts = [np.sort(pv.ids[labels == k]).astype(np.int64) for k in range(into)]
    parts = [p for p in parts if len(p)]
    parts.sort(key=lambda p: (-len(p), int(p[0])))
    if len(parts) < 2:
        raise EditError(f"cluster {cluster_id}: k-means found only one part (its pages' vectors are identical)")
    return SplitPreview(int(cluster_id), tuple(parts), f"kmeans ({pv.mode} vectors, seed {int(seed)})", int(seed))


def keep_split(collection: Collection, preview: SplitPreview, *, who: str | None = None, lock_timeout_s: float = 60.0,
               log: Log = _stderr) -> EditResult:
    """Keep a :func:`split` preview: each part gets a fresh cluster id and its pages are pinned there.

    The old id is no longer used by these pages (its user-given name, if any, stays with the id;
    name the parts with :func:`rename`).

    Returns:
        The :class:`EditResult`, ``clusters`` the parts' new ids in the preview's order.

    Raises:
        EditError: the cluster's pages changed since the preview (an edit or a clustering
            meanwhile): preview again.
    """
    with collection.write_lock(lock_timeout_s, on_wait=log):
        now = _members(collection, preview.cluster)
        if not np.array_equal(now, preview.page_ids):
            raise EditError(f"cluster {preview.cluster} changed since the split was previewed "
                            f"({len(now)} pages now, {len(preview.page_ids)} then): preview it again")
        new_ids = collection.allocate_cluster_ids(len(preview.parts))
        assign = {int(p): cid for cid, part in zip(new_ids, preview.parts) for p in part}
        edit_id = collection.record_edit(
            "split", _who(who), {"cluster": preview.cluster, "parts": new_ids, "sizes": [len(p) for p in preview.parts],
                                 "method": preview.method}, assign)
    return EditResult(edit_id, "split", tuple(new_ids), len(assign),
                      f"split cluster {preview.cluster} into " + ", ".join(f"cluster {c} ({len(p)} pages)"
                                                                    for c, p in zip(new_ids, preview.parts)))


def move(collection: Collection, page_ids: Iterable[int], *, to: int | None = None, new: bool = False, name: str | None = None,
         who: str | None = None, lock_timeout_s: float = 60.0, log: Log = _stderr) -> EditResult:
    """Move pages to an existing cluster (``to``) or to a new one (``new``) and pin them there.

    Args:
        page_ids: stored page ids that have a cluster assignment (noise and provisional pages too).
        to: the target cluster (>= 0, with pages); exactly one of ``to`` and ``new``.
        new: put the pages in a fresh cluster.
        name: a (user-given) name for the target cluster.

    Returns:
        The :class:`EditResult`, ``clusters == (target,)``.

    Raises:
        EditError: no pages, both or neither of ``to``/``new``, an unknown or noise target.
        CollectionError: a page id without a cluster assignment (nothing is written).
    """
    pages = list(dict.fromkeys(int(p) for p in page_ids))
    if not pages:
        raise EditError("no pages to move")
    if (to is None) == (not new):
        raise EditError("move pages either to a cluster (to=ID) or to a new one (new), not both or neither")
    with collection.write_lock(lock_timeout_s, on_wait=log):
        if new:
            target = collection.allocate_cluster_ids(1)[0]
        else:
            _members(collection, int(to))
            target = int(to)
        names = {target: name} if name and name.strip() else {}
        edit_id = collection.record_edit("move", _who(who), {"to": target, "new": bool(new), "n_pages": len(pages)},
                                         {p: target for p in pages}, names)
    return EditResult(edit_id, "move", (target,), len(pages),
                      f"moved {len(pages)} page{'s' if len(pages) != 1 else ''} to {'new ' if new else ''}cluster {target}"
                      + (f", named {name.strip()!r}" if names else ""))


def rename(collection: Collection, cluster_id: int, name: str, *, who: str | None = None, lock_timeout_s: float = 60.0,
           log: Log = _stderr) -> EditResult:
    """Give a cluster a user name (logged as an edit; :func:`undo` restores the previous name).

    Raises:
        EditError: an empty name, noise, or an unknown cluster.
    """
    name = (name or "").strip()
    if not name:
        raise EditError("a cluster name cannot be empty")
    with collection.write_lock(lock_timeout_s, on_wait=log):
        _members(collection, cluster_id)
        edit_id = collection.record_edit("rename", _who(who), {"cluster": int(cluster_id), "name": name}, {}, {int(cluster_id): name})
    return EditResult(edit_id, "rename", (int(cluster_id),), 0, f"cluster {cluster_id} is now {name!r}")


def undo(collection: Collection, *, lock_timeout_s: float = 60.0, log: Log = _stderr) -> dict:
    """Undo the last edit not yet undone: its pages get back exactly the cluster, membership and
    probability they had before it, its names their previous state.

    Edits are undone last first, so an edit that built on a later one is always undone before
    it. An edit made before a re-clustering can be undone after it: its pages go back to the
    clusters they had before the edit (ids are never reused, so these are the same clusters).

    Returns:
        The undone edit (as :func:`list_edits` gives it).

    Raises:
        EditError: there is nothing to undo.
    """
    with collection.write_lock(lock_timeout_s, on_wait=log):
        edit = collection.undo_last_edit()
    if edit is None:
        raise EditError(f"nothing to undo in {collection.root}")
    return edit


def describe(edit: dict) -> str:
    """One line for an edit of :func:`list_edits`, e.g. ``merge cluster 3 into 1 (12 pages)``."""
    p = edit["payload"]
    kind = edit["kind"]
    if kind == "merge":
        text = f"merge cluster {p['from']} into {p['into']}"
    elif kind == "split":
        text = f"split cluster {p['cluster']} into " + ", ".join(str(c) for c in p["parts"])
    elif kind == "move":
        text = f"move {p['n_pages']} page{'s' if p['n_pages'] != 1 else ''} to {'new ' if p.get('new') else ''}cluster {p['to']}"
    else:
        text = f"rename cluster {p['cluster']} to {p['name']!r}"
    names = p.get("names") or {}
    if kind != "rename" and names:
        text += " named " + ", ".join(repr(n) for n in names.values())
    return text


def list_edits(collection: Collection) -> list[dict]:
    """The edits log, oldest first: ``{"id", "kind", "payload", "who", "at" (UTC ISO), "undone",
    "n_pages", "text"}`` (``text`` from :func:`describe`)."""
    return [{**e, "text": describe(e)} for e in collection.edits()]


def honour_edits(collection: Collection, page_ids: np.ndarray, labels: np.ndarray, membership: np.ndarray,
                 probabilities: np.ndarray, label_map: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int], EditsReport]:
    """Apply the pinned assignments of the edits to a new clustering (the module docstring's two
    rules) and report what could not be honoured. Reads only; the caller (the cluster job) holds
    the write lock and stores the result.

    Args:
        page_ids: int64 (n,), ascending, the clustered pages.
        labels: int64 (n,), the automatic clusters as stored ids (after
            :func:`~docsort.core.clustering.match_cluster_ids`), -1 noise.
        membership: str (n,); probabilities: float32 (n,), as the clustering gave them.
        label_map: ``{HDBSCAN label: stored id}`` of the clustering.

    Returns:
        ``(labels, membership, probabilities, label_map, report)``: the arrays with the edits
        applied (a pinned page is a ``member`` with probability 1.0), the label map with automatic
        clusters taken over by an edited cluster pointing to it, and the :class:`EditsReport`.
    """
    page_ids = np.asarray(page_ids, np.int64)
    auto = np.asarray(labels, np.int64)
    out = auto.copy()
    membership = np.asarray(membership).astype("<U11")
    probabilities = np.asarray(probabilities, np.float32).copy()
    label_map = dict(label_map)
    report = EditsReport()
    all_edits = collection.edits()
    active = [e for e in all_edits if not e["undone"]]
    report.edits = len(active)
    for e in all_edits:
        if e["undone"]:
            report.notes.append(f"edit {e['id']} ({describe(e)}) was undone: not applied")
    if not active:
        return out, membership, probabilities, label_map, report
    by_id = {e["id"]: e for e in active}
    edit_ids, pins, targets = collection.edit_pins()
    # Latest edit per page wins (edit order): the last occurrence of each page in (edit, page) order.
    pos = np.searchsorted(page_ids, pins)
    stored = np.zeros(len(pins), bool)
    if len(page_ids):
        stored = (pos < len(page_ids)) & (page_ids[np.minimum(pos, len(page_ids) - 1)] == pins)
    rev = np.arange(len(pins))[::-1]
    _, last_rev = np.unique(pins[rev], return_index=True)
    latest = np.zeros(len(pins), bool)
    latest[rev[last_rev]] = True
    honoured = latest & stored
    winner = {int(p): int(e) for p, e in zip(pins[latest], edit_ids[latest])}
    final = dict(zip(pins[latest].tolist(), targets[latest].tolist()))
    moved_on = np.array([final[int(p)] != int(t) for p, t in zip(pins, targets)], bool)
    bad: set[int] = set()
    for eid in np.unique(edit_ids):
        mine = edit_ids == eid
        e = by_id[int(eid)]
        gone = int((mine & ~stored).sum())
        if gone:
            bad.add(int(eid))
            report.conflicts.append(f"edit {eid} ({describe(e)}): {gone} of its pages are no longer in the collection")
        over = mine & stored & ~latest & moved_on  # a later edit put them elsewhere
        if over.any():
            bad.add(int(eid))
            later: dict[int, int] = {}
            for p in pins[over]:
                later[winner[int(p)]] = later.get(winner[int(p)], 0) + 1
            report.conflicts.append(
                f"edit {eid} ({describe(e)}): " + "; ".join(
                    f"{n} of its pages follow the later edit {w} ({describe(by_id[w])})" for w, n in sorted(later.items())))
    # Rule 1: pinned pages go where their latest edit put them.
    at = pos[honoured]
    out[at] = targets[honoured]
    membership[at] = "member"
    probabilities[at] = 1.0
    pinned = np.zeros(len(page_ids), bool)
    pinned[at] = True
    report.pinned_pages = int(pinned.sum())
    # Rule 2: an automatic cluster more than half pinned to one cluster X is X; its unpinned pages join X.
    taken: dict[int, int] = {}
    for a in np.unique(auto[auto >= 0]):
        inside = auto == a
        size = int(inside.sum())
        got = out[inside & pinned]
        if len(got) * 2 <= size:
            continue
        values, counts = np.unique(got, return_counts=True)
        best = int(np.argmax(counts))
        if 2 * int(counts[best]) > size:
            x = int(values[best])
            join = inside & ~pinned & (out != x)
            report.joined_pages += int(join.sum())
            out[join] = x
            taken[int(a)] = x
    label_map = {k: taken.get(int(v), int(v)) for k, v in label_map.items()}
    # A renamed cluster with no pages left keeps its name, but the rename no longer shows: say so.
    present = set(np.unique(out).tolist())
    for e in active:
        if e["kind"] == "rename" and e["payload"]["cluster"] not in present:
            bad.add(int(e["id"]))
            report.conflicts.append(f"edit {e['id']} ({describe(e)}): cluster {e['payload']['cluster']} has no pages after "
                                    "this clustering (its pages went to other clusters); the name stays with the id")
    report.kept = len(active) - len(bad)
    return out, membership, probabilities, label_map, report
