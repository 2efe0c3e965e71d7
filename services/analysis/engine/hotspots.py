"""The hotspots step: the files that are both changed often and complex, ranked, with the functions that make them so.

A complex file nobody touches costs little, and a file changed daily costs little while it stays simple; the risk
and the maintenance effort sit where both meet. So, over the files that have both churn and measured functions:

    score(f) = (changes(f) / max changes) * (complexity(f) / max complexity)

where `changes` is the number of commits in the churn window that touched the file and `complexity` the sum of the
cyclomatic complexities of all its functions (every function, not only the report's top list), each maximum taken
over those candidate files. The score is between 0 and 1, and 1 only for a file that leads on both counts; it ranks
files exactly as changes * complexity does, and the normalisation only makes it readable within one report (it is
not comparable across repositories). Ties go to more changes, then more complexity, then the path.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from services.analysis.engine.churn import Churn, iso_time, no_history
from services.analysis.engine.complexity import FunctionMetrics

if TYPE_CHECKING:
    from services.analysis.engine.context import Context

TOP_HOTSPOTS = 10
FUNCTIONS_PER_HOTSPOT = 3


def hotspot_order(function: FunctionMetrics) -> tuple[int, int, str]:
    """The order of a hotspot's functions: most complex first."""
    return -function.cyclomatic, function.start_line, function.name


def hotspots(
    churn: Churn,
    functions: Iterable[FunctionMetrics],
    *,
    totals: Mapping[str, int] | None = None,
    top: int = TOP_HOTSPOTS,
    functions_per_file: int = FUNCTIONS_PER_HOTSPOT,
) -> list[dict[str, Any]]:
    """The `top` hotspots, best first, each with its `functions_per_file` most complex functions. A file's
    complexity is the sum over its functions: from `totals` when given (then `functions` need hold only each
    file's most complex ones), else from `functions`."""
    by_file: defaultdict[str, list[FunctionMetrics]] = defaultdict(list)
    for function in functions:
        if function.path in churn.files:
            by_file[function.path].append(function)
    if totals is None:
        totals = {path: sum(f.cyclomatic for f in measured) for path, measured in by_file.items()}
    else:
        totals = {path: totals[path] for path in by_file}
    candidates = [path for path, total in totals.items() if total > 0 and churn.files[path].changes > 0]
    if not candidates:
        return []
    most_changes = max(churn.files[path].changes for path in candidates)
    most_complexity = max(totals[path] for path in candidates)

    def score(path: str) -> float:
        return (churn.files[path].changes / most_changes) * (totals[path] / most_complexity)

    ranked = sorted(candidates, key=lambda p: (-score(p), -churn.files[p].changes, -totals[p], p))
    report = []
    for path in ranked[:top]:
        changed = churn.files[path]
        worst = sorted(by_file[path], key=hotspot_order)
        report.append(
            {
                "path": path,
                "changes": changed.changes,
                "last_change": iso_time(changed.last_change),
                "authors": changed.authors,
                "complexity": totals[path],
                "score": round(score(path), 4),
                "functions": [
                    {"name": f.name, "line": f.start_line, "cyclomatic": f.cyclomatic}
                    for f in worst[:functions_per_file]
                ],
            }
        )
    return report


def step(ctx: Context) -> None:
    """The churn section (what history was read) and the hotspots: the history against the scan's functions."""
    history = ctx.history or no_history()
    scanned = ctx.scanned
    assert scanned is not None, "hotspots come after the scan"
    ctx.sections["churn"] = history.summary()
    ctx.sections["hotspots"] = hotspots(history, scanned.measured.functions, totals=scanned.file_complexity)
