"""The engine's steps on a process pool give the same report as in one thread."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from services.analysis.engine import pipeline
from services.analysis.engine.inventory import Cancelled
from tests.e2e.analysis_repos import git_repository

GATE = {"max_function_complexity": 2, "max_high_findings": 0, "max_secrets": 0, "max_file_lines": 1000}


def _tree(root: Path) -> Path:
    files = {
        f"pkg/m{i}.py": f"def f{i}(a, b):\n    if a and b:\n        return {i}\n    return 0\n" for i in range(600)
    }
    files["config/.env"] = "GITHUB_TOKEN=ghp_" + "Zq8" * 12 + "\n"
    return git_repository(root, files)


def test_pool_and_thread_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "CHUNK_FILES", 50)  # many chunks, so merging is really exercised
    src = _tree(tmp_path / "tree")

    def run(pool: ProcessPoolExecutor | None) -> pipeline.Outcome:
        return pipeline.analyse(src, gate=GATE, should_stop=lambda: False, progress=lambda s, p: None, pool=pool)

    alone = run(None)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        pooled = run(pool)
    for section in ("inventory", "complexity", "secrets", "hotspots", "findings", "quality_gate"):
        assert pooled.sections[section] == alone.sections[section], section
    assert alone.sections["complexity"]["functions"] == 600
    assert "scan" in pooled.timings


def test_pool_run_stops_on_cancel(tmp_path: Path) -> None:
    src = _tree(tmp_path / "tree")
    flag = {"stop": False}

    def progress(step: str, percent: int) -> None:
        flag["stop"] = flag["stop"] or step == "scan"  # cancelled once the pooled step has begun

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool, pytest.raises(Cancelled):
        pipeline.analyse(src, gate=GATE, should_stop=lambda: flag["stop"], progress=progress, pool=pool)
