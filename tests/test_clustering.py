"""Issue 5: soft reassignment of noise, provisional clusters for new pages, stable cluster ids,
and migration of schema-1 collections, on the real pages of sample_docs, in-process (UMAP's
numba JIT is paid once per session by the ``sample_collection`` fixture).

UMAP with a fixed ``random_state`` is reproducible on one machine, not across CPUs (issue 12), so
no test here assumes one machine's clusters: where a test needs noise pages, reassigned pages or a
cluster that moves, it builds that situation (a fixed embedding handed to HDBSCAN, a previous
clustering constructed from this machine's own) and checks properties on the real pages."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from docsort.core.clustering import cluster_vectors, match_cluster_ids, reassign_noise
from docsort.jobs.cluster import cluster
from docsort.queries.tables import cluster_table
from docsort.jobs.export import export_pages
from docsort.jobs.ingest import ingest
from docsort.store.storage import Collection

from .conftest import SAMPLE_DOCS, sample_labels

QUIET = dict(progress=False, log=lambda m: None)


def _hdbscan(settings, **changes):
    return settings.model_copy(update={"hdbscan": settings.hdbscan.model_copy(update=changes)})


def _embedding_with_known_noise() -> np.ndarray:
    """A fixed 2-D embedding whose clusters and noise are known by construction: three tight
    clusters of 15 points (two of them 3 apart, the third far off), five points on the way between
    the two close ones, and one lone point far from everything. HDBSCAN (min_cluster_size 6,
    min_samples 10) finds the three clusters and leaves the lone point and some bridge points as
    noise; the bridge points' soft membership of a cluster is far above the lone point's."""
    rng = np.random.default_rng(0)
    a = np.array([0.0, 0.0]) + rng.normal(0, 0.25, (15, 2))
    b = np.array([3.0, 0.0]) + rng.normal(0, 0.25, (15, 2))
    c = np.array([0.0, 12.0]) + rng.normal(0, 0.25, (15, 2))
    bridge = np.c_[np.linspace(1.0, 2.0, 5), np.zeros(5)]
    return np.concatenate([a, b, c, bridge, [[-5.0, -5.0]]]).astype(np.float32)


def test_soft_clustering_reassigns_noise_above_the_threshold_and_reports_it_apart(collection_copy, settings):
    import hdbscan
    import pandas as pd

    from docsort.core.clustering import cluster_embedding

    # HDBSCAN on an embedding built so that noise exists (UMAP's output differs across CPUs;
    # HDBSCAN on a given embedding does not).
    emb = _embedding_with_known_noise()
    noisy = _hdbscan(settings, min_cluster_size=6, min_samples=10)
    plain = cluster_embedding(emb, noisy.hdbscan)
    lone = len(emb) - 1
    assert plain.n_clusters == 3 and plain.n_reassigned == 0 and plain.labels[lone] == -1 and plain.n_noise >= 2
    assert len(set(plain.labels[:15])) == len(set(plain.labels[15:30])) == len(set(plain.labels[30:45])) == 1
    soft = hdbscan.all_points_membership_vectors(plain.models["hdbscan"])
    best, strength = soft.argmax(1), soft.max(1)
    noise_strength = np.sort(strength[plain.labels < 0])
    assert strength[lone] == noise_strength[0] < noise_strength[1]
    # A threshold between the lone point's membership and the bridge points': all bridge noise
    # is reassigned, the lone point is not.
    threshold = float((noise_strength[0] + noise_strength[1]) / 2)

    result = cluster_embedding(emb, _hdbscan(noisy, reassign_noise_threshold=threshold).hdbscan)
    moved = result.membership == "reassigned"
    # Same fit plus reassignment of exactly the noise points whose largest soft membership
    # reaches the threshold, to that cluster; confident members untouched.
    np.testing.assert_array_equal(moved, (plain.labels < 0) & (strength >= threshold))
    assert 0 < result.n_reassigned == plain.n_noise - 1 and result.n_noise == 1 and result.labels[lone] == -1
    np.testing.assert_array_equal(result.labels[moved], best[moved])
    np.testing.assert_allclose(result.probabilities[moved], strength[moved], rtol=1e-6)
    keep = ~moved
    np.testing.assert_array_equal(result.labels[keep], plain.labels[keep])
    assert set(result.membership[result.labels < 0]) <= {"noise"} and set(result.membership[plain.labels >= 0]) == {"member"}
    # A lower threshold reassigns a superset; 1.0 reassigns nothing here.
    looser = reassign_noise(plain.models["hdbscan"], plain.labels, plain.probabilities, threshold / 10)[1] == "reassigned"
    assert looser[moved].all() and looser.sum() >= moved.sum()
    assert not (reassign_noise(plain.models["hdbscan"], plain.labels, plain.probabilities, 1.0)[1] == "reassigned").any()

    # Stored, on the real pages (whatever UMAP makes of them on this CPU): the table, the run,
    # the counts and the export keep members, reassigned and noise pages apart and agree.
    with Collection(collection_copy) as col:
        n_pages = col.counts()["pages"]
        stored = cluster(col, _hdbscan(noisy, reassign_noise_threshold=0.3), log=lambda m: None)
        table = col.page_table()
        rows = cluster_table(col)
        counts = col.counts()
        run = col.last_cluster_run()
        export_pages(col, collection_copy / "pages.csv")
    assert stored.n_members + stored.n_reassigned + stored.n_noise == n_pages == len(table)
    assert (table["membership"] == "reassigned").sum() == stored.n_reassigned == run["n_reassigned"] == counts["reassigned_pages"]
    assert (table["membership"] == "noise").sum() == stored.n_noise == run["n_noise"] == counts["noise_pages"]
    assert sum(r.reassigned for r in rows) == stored.n_reassigned and sum(r.pages for r in rows) == n_pages
    assert all(r.members + r.reassigned == r.pages for r in rows)
    assert run["settings"]["hdbscan"]["reassign_noise_threshold"] == 0.3
    csv = pd.read_csv(collection_copy / "pages.csv")
    assert csv["membership"].value_counts().to_dict() == table["membership"].value_counts().to_dict()


def test_pages_ingested_after_clustering_get_provisional_clusters_without_a_refit(tmp_path, settings, extractor):
    files = sorted({p for p, _ in sample_labels()})
    root = tmp_path / "collection"
    # New documents: byte-different copies (a trailer after the end marker, so a new sha256) of
    # files already clustered, plus the files never seen. A copy's pages are the same pixels as
    # their clustered twins, so each must be placed in its twin's cluster.
    twins = tmp_path / "twins"
    twins.mkdir()
    copies = {}
    for i, f in enumerate(files[1::2][:6]):
        dst = twins / f"copy{i}-{Path(f).name}"
        dst.write_bytes(Path(f).read_bytes() + b"\n%docsort-test-copy\n")
        copies[str(dst)] = f
    with Collection(root, create=True) as col:
        ingest(col, files[1::2], settings, extractor=extractor, **QUIET)
        cluster(col, settings, log=lambda m: None)
        before = col.page_table()
        run_before = col.last_cluster_run()["id"]
        models = (root / Collection.MODELS).read_bytes()

        report = ingest(col, [SAMPLE_DOCS, twins], settings, extractor=extractor, **QUIET)
        after = col.page_table()
        new = after[~after["page_id"].isin(before["page_id"])]
        n_copies = sum(int((before["path"] == f).sum()) for f in copies.values())
        assert report.provisional_pages == len(new) == 41 - len(before) + n_copies
        assert (new["membership"] == "provisional").all() and new["cluster"].notna().all()
        assert set(new["cluster"].astype(int)) <= set(before["cluster"].astype(int)) | {-1}
        assert np.isfinite(new[["umap_x", "umap_y", "probability"]].to_numpy(float)).all()
        assert new["probability"].between(0, 1).all()
        # Each copy's page lands in its twin's cluster.
        twin_cluster = {(p, n): int(c) for p, n, c in zip(before["path"], before["page"], before["cluster"])}
        placed = [(int(c), twin_cluster[(copies[p], n)]) for p, n, c in zip(new["path"], new["page"], new["cluster"]) if p in copies]
        assert len(placed) == n_copies > 0 and all(a == b for a, b in placed), placed
        # No re-fit: same run, same models file, earlier pages' assignments untouched.
        assert col.last_cluster_run()["id"] == run_before and (root / Collection.MODELS).read_bytes() == models
        old = after[after["page_id"].isin(before["page_id"])].reset_index(drop=True)
        cols = ["page_id", "cluster", "probability", "umap_x", "umap_y", "membership"]
        assert old[cols].equals(before[cols])
        assert col.counts()["provisional_pages"] == len(new)

        # A full re-cluster settles every page.
        cluster(col, settings, log=lambda m: None)
        final = col.page_table()
    assert not (final["membership"] == "provisional").any() and final["cluster"].notna().all()


def test_recluster_keeps_ids_and_user_names_by_overlap_and_gives_new_clusters_fresh_ids(collection_copy, settings):
    col = Collection(collection_copy)
    with col:
        table = col.page_table()
        ids = table["page_id"].to_numpy(np.int64)
        current = table["cluster"].to_numpy(np.int64)
        clusters = sorted(set(current.tolist()) - {-1})
        assert len(clusters) >= 2, f"sample_docs gave {len(clusters)} clusters; need two to build the situation"
        # A previous clustering built by construction from this machine's own clustering (which
        # the same settings reproduce on this machine): other ids (100 + rank), the two largest
        # clusters merged into one, and two pages of another cluster (or of the merged one) noise.
        sizes = {c: int((current == c).sum()) for c in clusters}
        big, second = sorted(clusters, key=lambda c: (-sizes[c], c))[:2]
        old = np.full(len(current), -1, np.int64)
        for rank, c in enumerate(clusters):
            old[current == c] = 100 + rank
        old[current == second] = old[np.flatnonzero(current == big)[0]]
        donor = next((c for c in clusters if c not in (big, second) and sizes[c] >= 3), big)
        old[np.flatnonzero(current == donor)[:2]] = -1
        col.store_clustering(ids, old, np.ones(len(ids), np.float32), np.zeros((len(ids), 2), np.float32), {"test": "constructed"}, 0.0)
        for cid in sorted(set(old.tolist()) - {-1}):
            col.rename_cluster(int(cid), f"kind {cid}")
        next_before = col.next_cluster_id()
        assert next_before == old.max() + 1

        result = cluster(col, settings, log=lambda m: None)
        after = col.page_table()
        new = after["cluster"].to_numpy(np.int64)
        raw = np.array([{v: k for k, v in result.label_map.items()}[c] if c >= 0 else -1 for c in new])
        # Same settings, same machine: the same partition as before the constructed run.
        assert adjusted_rand_score(raw, current) == 1.0
        assert any(k != v for k, v in result.label_map.items())  # ids were really remapped
        # The pairing maximises the total overlap (checked by brute force over all pairings).
        a, b = sorted(set(raw) - {-1}), sorted(set(old) - {-1})
        overlap = np.array([[np.sum((raw == i) & (old == j)) for j in b] for i in a])
        best = max(sum(overlap[i, p[i]] for i in range(len(a)) if p[i] is not None)
                   for p in itertools.permutations(list(range(len(b))) + [None] * max(0, len(a) - len(b)), len(a)))
        kept = [(i, b.index(result.label_map[c])) for i, c in enumerate(a) if result.label_map[c] in b]
        assert sum(overlap[i, j] for i, j in kept) == best
        for cid in set(new) - {-1}:
            members = new == cid
            if cid in b:  # matched: shares most of the old cluster or of its own earlier pages
                both = (members & (old == cid)).sum()
                assert 2 * both > (old == cid).sum() or 2 * both > members.sum()
                assert set(after.loc[members, "cluster_name"]) == {f"kind {cid}"}
            else:  # unmatched: a fresh id, never used before
                assert cid >= next_before
        # The merged cluster came back as two: one keeps the merged id, the other is new.
        merged_id = old[np.flatnonzero(current == big)[0]]
        assert {int(new[current == big][0]), int(new[current == second][0])} >= {int(merged_id)}
        assert len(set(new) - {-1} - set(b)) >= 1
        retired_next = col.next_cluster_id()
        assert retired_next == max(next_before, new.max() + 1)
        # Again: fresh ids never reuse a retired one, and nothing moves.
        again = cluster(col, settings, log=lambda m: None)
        assert all(v in set(new) or v >= retired_next for v in again.label_map.values())
        assert col.page_table()["cluster"].tolist() == new.tolist()
        assert col.next_cluster_id() >= retired_next


def test_match_cluster_ids_on_its_own():
    # Old: 0 = pages 0-3, 1 = pages 4-6, noise = 7; page 8 is new (-2).
    old = np.array([0, 0, 0, 0, 1, 1, 1, -1, -2])
    # New: the old clusters swapped numbers, 4-5 split off with the new page, 3 is noise now.
    new = np.array([1, 1, 1, -1, 0, 2, 2, 0, 2])
    ids, mapping = match_cluster_ids(old, new, next_id=7)
    # Hungarian pairing: new 1 -> old 0 (3 pages), new 2 -> old 1 (2 of its 3 pages); new 0 (page 4
    # and the old noise page) is a new cluster with a fresh id.
    assert mapping == {1: 0, 2: 1, 0: 7}
    assert ids.tolist() == [0, 0, 0, -1, 7, 1, 1, 7, 1]
    # A new cluster that only brushes an old one does not inherit its id.
    old = np.array([0] * 10 + [-1] * 4)
    new = np.array([-1] * 9 + [0] * 5)
    ids, mapping = match_cluster_ids(old, new, next_id=1)
    assert mapping == {0: 1}
    # Nothing clustered before: HDBSCAN's labels are kept.
    ids, mapping = match_cluster_ids(np.full(5, -2), np.array([1, 0, -1, 1, 0]), next_id=0)
    assert ids.tolist() == [1, 0, -1, 1, 0]


def test_a_schema_1_collection_is_migrated_when_opened(collection_copy):
    db = sqlite3.connect(collection_copy / Collection.DB)
    labels = [r[0] for r in db.execute("SELECT cluster FROM page_clusters ORDER BY page_id")]
    db.execute("ALTER TABLE page_clusters DROP COLUMN membership")
    db.execute("ALTER TABLE cluster_runs DROP COLUMN n_reassigned")
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.execute("PRAGMA user_version = 0")  # as docsort before numbered migrations left it
    db.execute("DELETE FROM meta WHERE key = 'next_cluster_id'")
    db.commit()
    db.close()
    with Collection(collection_copy) as col:
        table = col.page_table()
        assert table["cluster"].tolist() == labels
        assert table["membership"].tolist() == ["noise" if c < 0 else "member" for c in labels]
        assert col.last_cluster_run()["n_reassigned"] == 0
        assert col.next_cluster_id() == max(labels) + 1
    db = sqlite3.connect(collection_copy / Collection.DB)
    from docsort.store.storage import SCHEMA_VERSION

    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    db.close()
    with Collection(collection_copy) as col:  # a second open finds nothing to do
        assert col.counts()["clustered_pages"] == len(labels)


def test_reassign_noise_threshold_must_lie_in_0_1():
    from pydantic import ValidationError

    from docsort.config.settings import HdbscanSettings

    assert HdbscanSettings().reassign_noise_threshold == 0.0  # off by default (see HdbscanSettings)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError):
            HdbscanSettings(reassign_noise_threshold=bad)


def test_cluster_command_prints_members_reassigned_and_noise_apart(collection_copy, tmp_path, settings):
    import re

    from typer.testing import CliRunner

    from docsort.faces.cli import app, cluster_summary
    from docsort.core.clustering import cluster_embedding

    pattern = re.compile(r"(\d+) clusters: (\d+) pages confident members, (\d+) reassigned from noise "
                         r"\(soft membership >= ([\d.]+)\); (\d+) of (\d+) pages noise")
    # The line, on a clustering known by construction to have members, reassigned and noise pages.
    emb = _embedding_with_known_noise()
    result = cluster_embedding(emb, _hdbscan(settings, min_cluster_size=6, min_samples=10, reassign_noise_threshold=0.1).hdbscan)
    assert result.n_reassigned > 0 and result.n_noise > 0
    found = pattern.search(cluster_summary(result, 0.1))
    assert found and tuple(map(float, found.groups())) == (3, result.n_members, result.n_reassigned, 0.1, result.n_noise, len(emb))
    assert "(reassignment off)" in cluster_summary(cluster_embedding(emb, settings.hdbscan), 0.0)

    # The command on real pages: what it prints is what it stored, whatever this CPU's UMAP gives.
    noisy = tmp_path / "noisy.toml"
    noisy.write_text("[features]\nweights = \"bundled\"\n[hdbscan]\nmin_cluster_size = 6\nmin_samples = 8\n")
    res = CliRunner().invoke(app, ["cluster", "-c", str(collection_copy), "-p", str(noisy), "--reassign-noise", "0.3"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    found = pattern.search(text)
    assert found, text
    clusters, members, reassigned, threshold, noise, pages = map(float, found.groups())
    with Collection(collection_copy) as col:
        kinds = col.page_table()["membership"].value_counts().to_dict()
        run = col.last_cluster_run()
    assert (members, reassigned, noise, pages) == (kinds.get("member", 0), kinds.get("reassigned", 0), kinds.get("noise", 0), 41)
    assert threshold == 0.3 and clusters == run["n_clusters"] and run["settings"]["hdbscan"]["reassign_noise_threshold"] == 0.3


def test_consensus_of_runs_that_disagree_keeps_the_majority_grouping():
    from docsort.core.clustering import co_association, consensus_labels

    # Three groups of 20 points; three runs find them, one merges groups 0 and 1, one calls half
    # of group 2 noise and splits group 1 in halves.
    truth = np.repeat([0, 1, 2], 20)
    runs = [truth.copy() for _ in range(5)]
    runs[3][truth == 1] = 0
    runs[4][40:50] = -1
    runs[4][20:30] = 7
    c = co_association(runs)
    assert c.shape == (60, 60) and c.dtype == np.float64 and np.array_equal(c, c.T)
    assert np.all(np.diag(c) == 1.0)
    assert c[0, 1] == 1.0 and c[0, 20] == pytest.approx(0.2) and c[20, 30] == pytest.approx(0.8)
    assert c[40, 41] == pytest.approx(0.8) and c[40, 50] == pytest.approx(0.8) and c[0, 40] == 0.0
    for mcs, ms in [(3, 1), (5, 3), (10, 5)]:
        labels, strengths = consensus_labels(runs, mcs, ms)
        # One dissenting run splits nothing and merges nothing (without the majority epsilon,
        # group 1 and group 2 would each come out as two clusters of 10).
        assert adjusted_rand_score(truth, labels) == 1.0 and (labels >= 0).all(), (mcs, np.bincount(labels + 1))
        assert strengths.dtype == np.float32 and ((strengths >= 0) & (strengths <= 1)).all()
    with pytest.raises(ValueError, match="different lengths"):
        co_association([truth, truth[:-1]])
    with pytest.raises(ValueError, match="no labelings"):
        co_association([])


def test_a_consensus_clustering_of_real_pages_is_recorded_placed_and_capped(sample_collection, settings):
    from docsort.core.clustering import consensus_seeds, predict_clusters

    with Collection(sample_collection) as col:
        ids, vecs = col.vectors()
    umap3 = settings.umap.model_copy(update={"consensus_runs": 3})
    steps = []
    result = cluster_vectors(vecs, umap3, settings.hdbscan, on_step=steps.append)
    assert result.notes == []
    # What the CLI's spinner and the app's bar say while it runs.
    assert steps == ["UMAP run 1 of 3", "UMAP run 2 of 3", "UMAP run 3 of 3", "the 2-D map", "combining 3 runs"]
    seeds = consensus_seeds(settings.umap.random_state, 3)
    assert seeds[0] == settings.umap.random_state and len(set(seeds)) == 3
    # Seed sets of two random_state values share no run (random_state + r would share two of three).
    assert not set(seeds) & set(consensus_seeds(settings.umap.random_state + 1, 3))
    assert result.params["umap"]["consensus_runs_used"] == 3 and result.params["umap"]["consensus_seeds"] == seeds
    assert result.models["hdbscan"] is None and np.array_equal(result.models["consensus"]["labels"], result.labels)
    assert result.embedding.shape == (len(ids), settings.umap.n_components) and result.embedding_2d.shape == (len(ids), 2)
    assert result.n_clusters >= 2 and set(result.membership) <= {"member", "noise"}
    # Same vectors, same settings: the same consensus (on one machine).
    assert np.array_equal(cluster_vectors(vecs, umap3, settings.hdbscan).labels, result.labels)
    # Pages are placed by their neighbours among run 0's points with the consensus labels: the
    # clustered pages themselves mostly land in their own cluster.
    placed, strengths, xy, how = predict_clusters(result.models, vecs)
    assert set(how) <= {"neighbours", "noise"} and xy.shape == (len(ids), 2)
    members = result.labels >= 0
    assert (placed[members] == result.labels[members]).mean() >= 0.8, (placed, result.labels)
    # Above consensus_max_pages, or asked to reassign noise (which needs one run's soft
    # clustering): one run, and a note that says why.
    capped = cluster_vectors(vecs, umap3.model_copy(update={"consensus_max_pages": len(ids) - 1}), settings.hdbscan)
    assert capped.params["umap"]["consensus_runs_used"] == 1 and capped.models["hdbscan"] is not None
    assert any(f"not a consensus of 3: {len(ids)} pages are more than consensus_max_pages" in n for n in capped.notes)
    noisy = _hdbscan(settings, reassign_noise_threshold=0.1).hdbscan
    soft = cluster_vectors(vecs, umap3, noisy)
    assert soft.params["umap"]["consensus_runs_used"] == 1 and soft.params["hdbscan"]["reassign_noise_threshold"] == 0.1
    assert any("not a consensus of 3: reassigning noise" in n for n in soft.notes), soft.notes
    # `docsort cluster` says which it made.
    from docsort.faces.cli import cluster_summary

    n_neighbors = min(settings.umap.n_neighbors, len(ids) - 1)
    assert f"n_neighbors={n_neighbors}, consensus of 3 runs, HDBSCAN" in cluster_summary(result, 0.0)
    assert f"n_neighbors={n_neighbors}, one run, HDBSCAN" in cluster_summary(capped, 0.0)


def test_a_collection_recorded_before_the_consensus_keeps_one_run_until_a_pipeline_is_chosen(collection_copy, settings):
    import json

    from docsort.store.manifest import effective_settings

    path = collection_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["pipeline"]["umap"]["consensus_runs"] == settings.umap.consensus_runs > 1
    with Collection(collection_copy) as col:
        assert effective_settings(col, settings).umap.consensus_runs == settings.umap.consensus_runs
    # As an older docsort wrote it: no consensus keys. Its clusterings were one run; they stay so.
    for key in ("consensus_runs", "consensus_max_pages"):
        del manifest["pipeline"]["umap"][key]
    path.write_text(json.dumps(manifest))
    with Collection(collection_copy) as col:
        kept = effective_settings(col, settings)
        chosen = effective_settings(col, settings, explicit=True)
        assert kept.umap.consensus_runs == 1 and kept.umap.n_neighbors == manifest["pipeline"]["umap"]["n_neighbors"]
        assert chosen.umap.consensus_runs == settings.umap.consensus_runs
        result = cluster(col, kept, log=lambda m: None)
    assert result.params["umap"]["consensus_runs_used"] == 1


def test_automatic_hdbscan_sizes_follow_the_collection_size_and_older_manifests_keep_theirs(collection_copy, settings):
    import json
    import math

    from docsort.core.clustering import auto_min_cluster_size, cluster_embedding
    from docsort.store.manifest import effective_settings

    h = settings.hdbscan
    assert (h.min_cluster_size, h.min_samples, h.min_cluster_size_divisor, h.min_samples_divisor) == (0, 0, 1.45, 3)
    for n in (5, 41, 200, 1000, 20000):
        assert auto_min_cluster_size(n, 1.45) == max(3, round(math.sqrt(n) / 1.45))
    assert [auto_min_cluster_size(n) for n in (36, 41, 200, 1000, 20000)] == [4, 4, 10, 22, 98]
    assert [auto_min_cluster_size(n, 2.0) for n in (36, 1000, 20000)] == [3, 16, 71]
    with pytest.raises(ValueError, match="divisor"):
        auto_min_cluster_size(100, 0.0)
    # The sizes HDBSCAN got are recorded; an explicit size wins over the rule.
    emb = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    auto = cluster_embedding(emb, h).params["hdbscan"]
    assert (auto["min_cluster_size"], auto["min_samples"]) == (10, 3)
    fixed = cluster_embedding(emb, _hdbscan(settings, min_cluster_size=8).hdbscan).params["hdbscan"]
    assert (fixed["min_cluster_size"], fixed["min_samples"]) == (8, 2)

    # A manifest written before the divisors existed keeps sqrt(n) / 2 and half of it (3 and 1 on
    # sample_docs' 41 pages) until a pipeline is chosen; the clustering records the sizes it used.
    path = collection_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    for key in ("min_cluster_size_divisor", "min_samples_divisor"):
        assert manifest["pipeline"]["hdbscan"][key] == getattr(h, key)
        del manifest["pipeline"]["hdbscan"][key]
    path.write_text(json.dumps(manifest))
    with Collection(collection_copy) as col:
        kept = effective_settings(col, settings)
        chosen = effective_settings(col, settings, explicit=True)
        assert (kept.hdbscan.min_cluster_size_divisor, kept.hdbscan.min_samples_divisor) == (2.0, 2)
        assert (chosen.hdbscan.min_cluster_size_divisor, chosen.hdbscan.min_samples_divisor) == (1.45, 3)
        old = cluster(col, kept, log=lambda m: None)
        new = cluster(col, chosen, log=lambda m: None)
    assert (old.params["hdbscan"]["min_cluster_size"], old.params["hdbscan"]["min_samples"]) == (3, 1)
    assert (new.params["hdbscan"]["min_cluster_size"], new.params["hdbscan"]["min_samples"]) == (4, 1)
