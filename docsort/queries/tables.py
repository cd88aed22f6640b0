"""Summary tables for the faces: the cluster table and the collection's info. Reads only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from docsort.core.clustering import document_clusters
from docsort.store.manifest import Manifest, read_manifest, recorded_engine
from docsort.store.storage import Collection


@dataclass(frozen=True)
class ClusterRow:
    """One line of the cluster summary table.

    Attributes:
        cluster: id (-1 = noise); name: user-given or default name; pages, documents: counts
        (documents by majority of their pages); examples: up to three file names;
        members, reassigned, provisional: how many of ``pages`` are confident HDBSCAN members,
        noise pages reassigned by soft clustering, and pages placed since the last clustering
        (see :mod:`docsort.core.clustering`); for the noise row, ``members`` counts clustering noise.
    """

    cluster: int
    name: str
    pages: int
    documents: int
    examples: list[str]
    members: int = 0
    reassigned: int = 0
    provisional: int = 0


def cluster_table(collection: Collection) -> list[ClusterRow]:
    """Summary of the stored clustering: one :class:`ClusterRow` per cluster, largest first, noise
    last, with the confident members, reassigned and provisional pages of each counted apart."""
    df = collection.page_table()
    df = df[df["cluster"].notna()]
    if df.empty:
        return []
    doc_cluster = document_clusters(df["document_id"].to_numpy(), df["cluster"].to_numpy(dtype=np.int64))
    rows = []
    for cid, group in df.groupby("cluster"):
        cid = int(cid)
        examples = list(dict.fromkeys(Path(p).name for p in group["path"]))[:3]
        kinds = group["membership"].value_counts()
        rows.append(
            ClusterRow(
                cluster=cid,
                name=str(group["cluster_name"].iloc[0]),
                pages=len(group),
                documents=sum(1 for c in doc_cluster.values() if c == cid),
                examples=examples,
                members=int(kinds.get("member", 0) + kinds.get("noise", 0)),
                reassigned=int(kinds.get("reassigned", 0)),
                provisional=int(kinds.get("provisional", 0)),
            )
        )
    rows.sort(key=lambda r: (r.cluster < 0, -r.pages, r.cluster))
    return rows


def info(collection: Collection) -> dict:
    """Collection summary: counts, backbone, layer, pooling, weights source and sha256, the engine
    and precision the vectors were made with (and passed checks of other engines), last run
    (and whether it clustered visual or fused vectors), OCR text counts, OCR engine and text model."""
    manifest = read_manifest(collection) or Manifest()
    feats = manifest.features or {}
    run = collection.last_cluster_run()
    return {
        "collection": str(collection.root.resolve()),
        **collection.counts(),
        "backbone": feats.get("backbone"),
        "layer": feats.get("layer"),
        "layer_output_shape": feats.get("layer_output_shape"),
        "pooling": feats.get("pooling"),
        "dim": feats.get("dim"),
        "weights_source": feats.get("weights", {}).get("source"),
        "weights_sha256": feats.get("weights", {}).get("sha256"),
        "weights_note": feats.get("weights", {}).get("note"),
        "engine": (lambda e: f"{e['name']} {e.get('version') or '(version not recorded)'}")(recorded_engine(feats)) if feats else None,
        "precision": recorded_engine(feats)["precision"] if feats else None,
        "engine_cpu_flags": " ".join(recorded_engine(feats).get("cpu_flags") or []) or None if feats else None,
        "engine_checks": "; ".join(f"{c['name']} {c['precision']} passed, probe cosine >= {c['probe_min_cosine']} "
                                   f"vs {c['reference_engine']}" for c in manifest.engine_checks or []) or None,
        "pipeline": (manifest.pipeline or {}).get("name"),
        "created_at": manifest.created_at,
        "last_clustered": run["created_at"] if run else None,
        "clustered_by": run["settings"].get("features", "visual") if run else None,
        **collection.text_counts(),
        "ocr": (lambda o: f"{o.get('engine')} lang={o.get('lang')} dpi={o.get('dpi')}" if o else None)(manifest.ocr),
        "text_model": (lambda t: f"{t.get('method')} {t.get('dim')}-d on {t.get('pages_fitted')} pages" if t else None)(manifest.text),
        "built_on": _machine_line(manifest.machine),
        "clustered_on": _machine_line((manifest.clustering or {}).get("machine")),
        "adapted_weights": (lambda a: (f"yes: {a.get('objective', {}).get('name')}, {a.get('epochs_run')} epoch(s), layers "
                                       f"{a.get('layers')}, seed {a.get('seed')}, sha256 {str(a.get('sha256'))[:12]}"
                                       if a.get("state") == "done" else
                                       f"re-embedding unfinished (sha256 {str(a.get('sha256'))[:12]}): run docsort adapt to finish")
                            if a else "no")(manifest.adaptation),
        "classifier_in_use": (lambda f: (f"{f.get('in_use')} (cross-validated accuracy: fine-tuned {f.get('fine_tuned_accuracy')}, "
                                         f"frozen features {f.get('frozen_accuracy')}, {f.get('cv_method')})"
                                         + (f"; weights sha256 {str(f.get('sha256'))[:12]}" if f.get("in_use") == "fine-tuned" else ""))
                              if f else ("frozen features" if manifest.classifier else None))(manifest.fine_tune),
        "invariance": (lambda v: (f"{v.get('dims')}-d from {v.get('n_pages_fitted')} pages x {len(v.get('styles', []))} styles, "
                                  f"sha256 {str(v.get('sha256'))[:12]}" + ("" if v.get("active") else " (not in use)")) if v else None)(
            manifest.invariance),
    }


def _machine_line(m: dict | None) -> str | None:
    """``"CPU model, N cores, flags a b c"`` of a manifest's ``machine`` record (None before it was recorded)."""
    if not m:
        return None
    flags = " ".join(f for f in m.get("cpu_flags", []) if f.startswith(("avx512", "amx", "avx2", "sve")))
    return f"{m.get('cpu')}, {m.get('cores')} cores" + (f", {flags}" if flags else "")
