"""The complexity step against lizard, the tool users compare it with, on a real corpus: this repository's code.

The per-language fixtures (test_complexity.py) pin hand-checked values; this test checks that on code nobody
wrote for the test the two tools find the same functions and agree on cyclomatic complexity. Functions are
matched by file and start line. We also measure lambdas, which lizard does not, so counts are compared one way:
every function lizard finds must be ours too. `bench/complexity_accuracy.py` runs the same comparison on any
tree (Django's: see the README).
"""

from __future__ import annotations

from pathlib import Path

import lizard

from services.analysis.engine.complexity import complexity

ROOT = Path(__file__).resolve().parents[2]


def test_same_functions_and_mostly_equal_cyclomatic_complexity_as_lizard() -> None:
    files = sorted(
        (path.relative_to(ROOT).as_posix(), "Python")
        for folder in ("libs", "services", "gateway")
        for path in (ROOT / folder).rglob("*.py")
    )
    assert len(files) > 50
    ours = {(f.path, f.start_line): f for f in complexity(ROOT, files).functions}
    theirs = {
        (path, function.start_line): function
        for path, _ in files
        for function in lizard.analyze_file(str(ROOT / path)).function_list
    }
    assert len(theirs) > 500
    missed = sorted(theirs.keys() - ours.keys())
    assert not missed, f"functions lizard finds and we do not: {missed[:10]}"
    equal = sum(ours[key].cyclomatic == function.cyclomatic_complexity for key, function in theirs.items())
    assert equal / len(theirs) >= 0.9, f"cyclomatic complexity equal on {equal} of {len(theirs)} functions"
