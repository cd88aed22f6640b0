"""Pipelines validate on load; the README's commands and .ci/run agree."""

from __future__ import annotations

import re

import pytest

from docsort.config.settings import PipelineError, PipelineSettings, load_pipeline

from .conftest import REPO


def test_default_pipeline_file_is_the_schema_default():
    loaded = load_pipeline("default")
    assert loaded == PipelineSettings(description=loaded.description)
    assert load_pipeline(REPO / "pipelines" / "default.toml") == loaded


def test_bad_pipelines_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[features]\nbatch_size = 0\n")
    with pytest.raises(PipelineError, match="batch_size"):
        load_pipeline(bad)
    bad.write_text("[umap]\nn_neighbours = 5\n")  # misspelt key
    with pytest.raises(PipelineError, match="n_neighbours"):
        load_pipeline(bad)
    bad.write_text("not toml = = =")
    with pytest.raises(PipelineError, match="cannot read pipeline"):
        load_pipeline(bad)
    with pytest.raises(PipelineError, match="not found"):
        load_pipeline("no-such-pipeline")


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup, flags=re.S)


def test_readme_gives_two_setup_commands_and_ci_runs_the_test_one():
    main_job, tests = _readme_commands()
    assert "docsort ingest sample_docs" in main_job and "docsort cluster" in main_job and "docsort search" in main_job
    assert "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci.splitlines()
    # The file searched by command 1 exists.
    query = main_job.rsplit("docsort search ", 1)[1].split()[0]
    assert (REPO / query).is_file()


def test_every_pipeline_in_the_repository_loads_and_ocr_turns_ocr_on():
    names = sorted(p.stem for p in (REPO / "pipelines").glob("*.toml"))
    assert "default" in names and "ocr" in names
    for name in names:
        load_pipeline(name)
    ocr = load_pipeline("ocr")
    assert ocr.ocr.enabled and ocr.model_copy(update={"ocr": load_pipeline("default").ocr, "name": "default",
                                                      "description": ""}) == PipelineSettings()
