"""The pipeline keeps only the functions its report uses, and the report is what all of them would give."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import pytest

from repolens.tenants.v1 import tenants_pb2
from services.analysis.engine import pipeline, scan
from services.analysis.engine.churn import Churn, FileChurn
from services.analysis.engine.complexity import complexity
from services.analysis.engine.findings import complexity_findings, sort_findings
from services.analysis.engine.hotspots import hotspots

GATE = tenants_pb2.QualityGate(max_function_complexity=6, max_high_findings=0, max_secrets=0, max_file_lines=1000)


def _function(name: str, decisions: int) -> str:
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(decisions))
    return f"def {name}(x):\n{body}    return -1\n\n\n"


def _tree(root: Path) -> list[str]:
    """40 files of 1 to 12 functions, of complexity 1 to 12, with ties: many chunks, each of several files."""
    rng = random.Random(7)
    paths = []
    for i in range(40):
        path = f"pkg/mod{i:02}.py"
        source = "".join(_function(f"f{i}_{j}", rng.randrange(12)) for j in range(1 + rng.randrange(12)))
        (root / "pkg").mkdir(parents=True, exist_ok=True)
        (root / path).write_text(source)
        paths.append(path)
    return paths


def test_the_report_from_the_kept_functions_is_the_report_from_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "CHUNK_FILES", 3)
    monkeypatch.setattr(scan, "TOP_FUNCTIONS", 7)
    paths = _tree(tmp_path)
    churn = Churn(
        window_days=365,
        since=1,
        max_commits=1000,
        history=True,
        commits=50,
        files={
            path: FileChurn(changes=1 + n % 5, last_change=1_700_000_000, authors=1) for n, path in enumerate(paths)
        },
    )
    outcome = pipeline.analyse(tmp_path, gate=GATE, should_stop=lambda: False, progress=lambda s, p: None, churn=churn)

    everything = complexity(tmp_path, [(path, "Python") for path in paths]).functions
    assert len(everything) > 200
    ranked = sorted(everything, key=lambda f: (-f.cyclomatic, f.path, f.start_line))
    report = outcome.sections["complexity"]
    assert report["functions"] == len(everything)
    assert report["average"] == round(sum(f.cyclomatic for f in everything) / len(everything), 2)
    assert report["top"] == [f._asdict() for f in ranked[:7]]
    assert outcome.sections["hotspots"] == hotspots(churn, everything)
    expected = [asdict(f) for f in sort_findings(complexity_findings(everything, max_complexity=6))]
    found = [f for f in outcome.sections["findings"] if f["rule_id"] == "complexity.function"]
    assert found == expected
    assert len(found) > 20


def test_a_part_keeps_fewer_functions_than_it_measured(tmp_path: Path) -> None:
    paths = _tree(tmp_path)
    items, _ = scan.plan(tmp_path, lambda: False, {})
    part = scan.scan_files(str(tmp_path), items, complexity_limit=100)
    measured = complexity(tmp_path, [(path, "Python") for path in paths]).functions
    assert part.functions == len(measured)
    assert part.cyclomatic == sum(f.cyclomatic for f in measured)
    # Only the top of the report and three per file are left, not the hundreds measured.
    assert len(part.measured.functions) <= scan.TOP_FUNCTIONS + 3 * len(paths) < len(measured)
    assert sum(part.file_complexity.values()) == part.cyclomatic
