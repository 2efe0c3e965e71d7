"""The engine's steps on a process pool give the same report as in one thread."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from repolens.tenants.v1 import tenants_pb2
from services.analysis.engine import pipeline, scan
from services.analysis.engine.inventory import Cancelled
from tests.e2e.analysis_repos import git_repository

ROOT = Path(__file__).resolve().parents[2]
GATE = tenants_pb2.QualityGate(max_function_complexity=2, max_high_findings=0, max_secrets=0, max_file_lines=1000)


def _tree(root: Path) -> Path:
    files = {
        f"pkg/m{i}.py": f"def f{i}(a, b):\n    if a and b:\n        return {i}\n    return 0\n" for i in range(600)
    }
    files["config/.env"] = "GITHUB_TOKEN=ghp_" + "Zq8" * 12 + "\n"
    return git_repository(root, files)


def test_pool_and_thread_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "CHUNK_FILES", 50)  # many chunks, so merging is really exercised
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


_KILLED_OWNER = """
import os, signal, sys
from services.analysis.engine.pipeline import start_pool
pool = start_pool(2)
pids = sorted({pool.submit(os.getpid).result() for _ in range(20)})
print(" ".join(map(str, pids)), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as a worker killed mid-analysis: no chance to stop its pool
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_pool_processes_end_when_their_worker_is_killed() -> None:
    owner = subprocess.run(
        [sys.executable, "-c", _KILLED_OWNER], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert owner.returncode == -signal.SIGKILL, owner.stderr
    children = [int(pid) for pid in owner.stdout.split()]
    assert len(children) == 2, owner.stdout
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children):
        assert time.monotonic() < deadline, f"pool processes outlived their worker: {children}"
        time.sleep(0.2)
