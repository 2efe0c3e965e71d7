"""The engine's steps after the clone, in order, on a checked-out tree: one call, one report section."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from services.analysis.engine.complexity import SUPPORTED_LANGUAGES, ComplexityResult, complexity
from services.analysis.engine.dependencies import declared_dependencies
from services.analysis.engine.findings import (
    Finding,
    complexity_findings,
    quality_gate,
    secret_findings,
    size_findings,
    sort_findings,
)
from services.analysis.engine.inventory import EXCLUDED_DIRS, VCS_NAMES, Cancelled, inventory
from services.analysis.engine.review import rule_based_review
from services.analysis.engine.secrets import SecretScan, scan_secrets

Progress = Callable[[str, int], None]
TOP_FUNCTIONS = 100
CHUNK_FILES = 250
T = TypeVar("T")


@dataclass
class Outcome:
    """What the steps produced: the report sections and each step's time."""

    sections: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _merged(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for count in counts:
        total.update(count)
    return dict(total)


def _in_parallel(
    pool: Executor,
    src: Path,
    code_files: list[tuple[str, str]],
    paths: list[str],
    should_stop: Callable[[], bool],
) -> tuple[ComplexityResult, SecretScan]:
    """Chunks small enough that a cancellation never waits long: running chunks are abandoned, not awaited."""
    measuring = [pool.submit(complexity, src, chunk) for chunk in _chunks(code_files, CHUNK_FILES)]
    scanning = [pool.submit(scan_secrets, src, chunk) for chunk in _chunks(paths, 2 * CHUNK_FILES)]
    pending: set[Future[Any]] = {*measuring, *scanning}
    while pending:
        _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        if should_stop():
            for future in pending:
                future.cancel()
            raise Cancelled()
    measured = [future.result() for future in measuring]
    scanned = [future.result() for future in scanning]
    return (
        ComplexityResult(
            functions=[f for part in measured for f in part.functions],
            files_parsed=sum(part.files_parsed for part in measured),
            skipped=_merged(part.skipped for part in measured),
        ),
        SecretScan(
            findings=sorted(
                (f for part in scanned for f in part.findings), key=lambda f: (f.path, f.line, f.column, f.rule_id)
            ),
            files_scanned=sum(part.files_scanned for part in scanned),
            skipped=_merged(part.skipped for part in scanned),
        ),
    )


def tracked_files(src: Path) -> list[str]:
    """Every regular file of the tree outside version-control and dependency folders, as relative paths.

    Secrets and manifests hide in files the inventory does not count (`.env`, `go.mod`, `Pipfile`)."""
    found = []
    for directory, subdirectories, names in os.walk(src):
        subdirectories[:] = [d for d in subdirectories if d not in EXCLUDED_DIRS and d not in VCS_NAMES]
        base = Path(directory)
        for name in names:
            path = base / name
            if not path.is_symlink() and path.is_file():
                found.append(path.relative_to(src).as_posix())
    return sorted(found)


def analyse(
    src: Path,
    *,
    gate: dict[str, int],
    should_stop: Callable[[], bool],
    progress: Progress,
    pool: Executor | None = None,
) -> Outcome:
    """Runs inventory, complexity, secrets, dependencies, then findings, the quality gate and the review;
    `progress(step, percent)` follows it. With a process `pool`, complexity and secrets run side by side
    on all its processes, a chunk of files per task."""
    outcome = Outcome()

    def step(name: str, percent: int) -> float:
        if should_stop():
            raise Cancelled()
        progress(name, percent)
        return time.perf_counter()

    started = step("inventory", 40)
    counted = inventory(
        src,
        should_stop=should_stop,
        on_progress=lambda done, total: progress("inventory", 40 + 15 * done // max(total, 1)),
    )
    outcome.timings["inventory"] = round(time.perf_counter() - started, 3)
    outcome.sections["inventory"] = counted.to_dict()

    started = step("complexity", 60)
    code_files = [(f.path, f.language) for f in counted.files if f.language in SUPPORTED_LANGUAGES]
    paths = tracked_files(src)
    if pool is None:
        measured = complexity(src, code_files, should_stop=should_stop)
        outcome.timings["complexity"] = round(time.perf_counter() - started, 3)
        started = step("secrets", 80)
        scanned = scan_secrets(src, paths, should_stop=should_stop)
        outcome.timings["secrets"] = round(time.perf_counter() - started, 3)
    else:
        measured, scanned = _in_parallel(pool, src, code_files, paths, should_stop)
        outcome.timings["complexity_and_secrets"] = round(time.perf_counter() - started, 3)
    ranked = sorted(measured.functions, key=lambda f: (-f.cyclomatic, f.path, f.start_line))
    outcome.sections["complexity"] = {
        "functions": len(measured.functions),
        "files_parsed": measured.files_parsed,
        "skipped": measured.skipped,
        "average": round(sum(f.cyclomatic for f in ranked) / len(ranked), 2) if ranked else 0,
        # The report keeps the functions worth reading, not all of them: a large repository has tens of thousands.
        "top": [asdict(f) for f in ranked[:TOP_FUNCTIONS]],
    }
    outcome.sections["secrets"] = scanned.to_dict()

    started = step("dependencies", 88)
    declared = declared_dependencies(src, paths)
    outcome.sections["dependencies"] = declared.to_dict()
    outcome.sections["sbom"] = declared.to_cyclonedx()
    outcome.timings["dependencies"] = round(time.perf_counter() - started, 3)

    started = step("findings", 92)
    findings: list[Finding] = size_findings(counted.files, max_file_lines=gate["max_file_lines"])
    findings += complexity_findings(measured.functions, max_complexity=gate["max_function_complexity"])
    findings += secret_findings(scanned.findings)
    largest = max((f.code + f.comment + f.blank for f in counted.files), default=0)
    worst = ranked[0].cyclomatic if ranked else 0
    verdict = quality_gate(findings, max_function_complexity_found=worst, max_file_lines_found=largest, gate=gate)
    outcome.sections["findings"] = [asdict(f) for f in sort_findings(findings)]
    outcome.sections["quality_gate"] = verdict.to_dict()
    outcome.sections["review"] = rule_based_review(outcome.sections)
    outcome.timings["findings"] = round(time.perf_counter() - started, 3)
    return outcome
