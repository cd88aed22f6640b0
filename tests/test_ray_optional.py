"""Ray is optional (issue 17): docsort without it imports nothing of Ray, and ``--ray`` then says how to
get it; the pure helpers of :mod:`docsort.core.distributed`. Fast tier: no Ray is started here."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from docsort.config.settings import PipelineSettings, RaySettings, load_pipeline
from docsort.core.distributed import RayMissingError, embed_actor_plan, seeded_sample


def test_docsort_imports_no_ray_at_module_level():
    # Every `import ray` of docsort is inside a function (lazy): without Ray installed every module imports.
    import ast

    from .conftest import REPO

    found = []
    for path in sorted((REPO / "docsort").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only (function bodies are not walked)
            for stmt in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else []:
                names = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else (
                    [stmt.module or ""] if isinstance(stmt, ast.ImportFrom) else [])
                found += [f"{path.relative_to(REPO)}:{stmt.lineno}" for n in names if n == "ray" or n.startswith("ray.")]
    assert found == [], found


def test_ray_flag_without_ray_is_a_clear_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from docsort.faces.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when not installed
    res = CliRunner().invoke(app, ["ingest", "sample_docs/leptonica/map1.jpg", "-c", str(tmp_path / "col"), "--ray", "local"])
    assert res.exit_code == 3, res.output
    assert "pip install 'docsort[ray]'" in res.output


def test_cluster_on_ray_without_ray_is_a_clear_error(monkeypatch):
    from docsort.jobs.ray_cluster import cluster_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayMissingError, match=r"pip install 'docsort\[ray\]'"):
        cluster_on_ray(np.eye(8, dtype=np.float32), PipelineSettings().with_ray("local"))


def test_ray_pipeline_is_the_default_run_on_ray():
    ray = load_pipeline("ray")
    assert ray.ray.address == "local"
    assert ray.model_copy(update={"ray": RaySettings(), "name": "default", "description": ""}) == PipelineSettings()
    assert PipelineSettings().ray.address == ""  # the default runs in this process


def test_embed_actor_plan_one_actor_per_gpu_else_leaves_cpus_for_rendering():
    s = RaySettings()
    assert embed_actor_plan(s, {"CPU": 64.0, "GPU": 4.0}) == (4, 1.0, 1.0, 1.0)
    assert embed_actor_plan(s, {"CPU": 2.0}) == (1, 1.0, 0.0, 1.0)  # 1 CPU left to render
    assert embed_actor_plan(s, {"CPU": 16.0}) == (15, 1.0, 0.0, 1.0)
    assert embed_actor_plan(RaySettings(cpus_per_actor=4.0), {"CPU": 16.0}) == (3, 4.0, 0.0, 1.0)
    assert embed_actor_plan(RaySettings(embed_actors=2), {"CPU": 16.0})[0] == 2
    assert embed_actor_plan(s, {"CPU": 1.0}) == (1, 0.5, 0.0, 0.5)  # both fit on one CPU


def test_seeded_sample_is_reproducible_distinct_and_sorted():
    a, b = seeded_sample(1000, 100, 7), seeded_sample(1000, 100, 7)
    assert np.array_equal(a, b) and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert not np.array_equal(a, seeded_sample(1000, 100, 8))
    assert np.array_equal(seeded_sample(50, 100, 7), np.arange(50))


def test_where_a_job_runs_is_never_pinned_by_the_collection(tmp_path):
    """A collection first ingested on Ray does not make later commands (the app's, `docsort ocr`
    without --ray) run on Ray: the manifest does not record [ray]."""
    from docsort.store.manifest import _new_manifest, effective_settings, recorded_settings, write_manifest
    from docsort.store.storage import Collection

    class _Extractor:  # what _new_manifest reads of an extractor
        description = {"backbone": "none", "weights": {"note": "", "source": "bundled", "spec": "bundled"}}

    on_ray = PipelineSettings().with_ray("local")
    col = Collection(tmp_path / "col", create=True)
    try:
        write_manifest(col, _new_manifest(on_ray, _Extractor()))
        assert "ray" not in col.manifest()["pipeline"]
        assert recorded_settings(col).ray.address == ""
        assert effective_settings(col, PipelineSettings()).ray.address == ""
        assert effective_settings(col, on_ray, explicit=True).ray.address == "local"  # a chosen pipeline's [ray] applies
    finally:
        col.close()
