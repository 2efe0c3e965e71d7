"""The hotspot score and ranking, and the parsing of `git log` output they are built on."""

from __future__ import annotations

import pytest

from services.analysis.engine.churn import Churn, FileChurn, iso_time, no_history, parse_log
from services.analysis.engine.complexity import FunctionMetrics
from services.analysis.engine.hotspots import hotspots

DAY = 86_400
T0 = 1_700_000_000


def function(path: str, name: str, cyclomatic: int, line: int = 1) -> FunctionMetrics:
    return FunctionMetrics(
        name=name,
        path=path,
        start_line=line,
        end_line=line + 5,
        cyclomatic=cyclomatic,
        length=6,
        parameters=0,
        max_nesting=0,
    )


def churn_of(files: dict[str, int]) -> Churn:
    return Churn(
        window_days=365,
        since=T0 - 365 * DAY,
        max_commits=1000,
        history=True,
        commits=max(files.values(), default=0),
        files={path: FileChurn(changes=n, last_change=T0 - n * DAY, authors=1 + n % 3) for path, n in files.items()},
    )


def test_score_is_normalised_changes_times_normalised_complexity() -> None:
    churn = churn_of({"hot.py": 10, "busy.py": 20, "knotty.py": 2})
    functions = [
        function("hot.py", "parse", 12, line=40),
        function("hot.py", "tiny", 1, line=10),
        function("hot.py", "helper", 3, line=20),
        function("busy.py", "a", 1),
        function("busy.py", "b", 1, line=9),
        function("knotty.py", "monster", 30),
    ]
    ranked = hotspots(churn, functions)
    # changes max 20, complexity max 30 (knotty.py): hot 10/20*16/30, busy 20/20*2/30, knotty 2/20*30/30
    assert [h["path"] for h in ranked] == ["hot.py", "knotty.py", "busy.py"]
    assert [h["score"] for h in ranked] == [round(0.5 * 16 / 30, 4), 0.1, round(2 / 30, 4)]
    top = ranked[0]
    assert top["changes"] == 10
    assert top["complexity"] == 16  # every function of the file counts, not only the worst
    assert top["authors"] == 2
    assert top["last_change"] == iso_time(T0 - 10 * DAY)
    assert top["functions"] == [
        {"name": "parse", "line": 40, "cyclomatic": 12},
        {"name": "helper", "line": 20, "cyclomatic": 3},
        {"name": "tiny", "line": 10, "cyclomatic": 1},
    ]


def test_the_file_leading_on_both_counts_scores_one() -> None:
    churn = churn_of({"core.py": 8, "side.py": 4})
    ranked = hotspots(churn, [function("core.py", "f", 9), function("side.py", "g", 3)])
    assert ranked[0]["path"] == "core.py"
    assert ranked[0]["score"] == 1.0
    assert ranked[1]["score"] == round(0.5 * 3 / 9, 4)


def test_files_without_churn_or_functions_are_no_hotspots() -> None:
    churn = churn_of({"README.md": 50, "app.py": 3})
    ranked = hotspots(churn, [function("app.py", "run", 4), function("untouched.py", "big", 40)])
    assert [h["path"] for h in ranked] == ["app.py"]
    assert ranked[0]["score"] == 1.0  # README.md, with no functions, does not set the scale
    assert hotspots(no_history(), [function("app.py", "run", 4)]) == []
    assert hotspots(churn_of({"app.py": 3}), []) == []


def test_ties_go_to_more_changes_then_more_complexity_then_the_path() -> None:
    churn = churn_of({"b.py": 2, "a.py": 4, "c.py": 4, "d.py": 2})
    functions = [
        function("b.py", "f", 4),
        function("a.py", "f", 2),  # 4 * 2 = 8, like b.py's 2 * 4, but more changes
        function("c.py", "f", 2),  # the same as a.py: the path decides
        function("d.py", "f", 4),
    ]
    assert [h["path"] for h in hotspots(churn, functions)] == ["a.py", "c.py", "b.py", "d.py"]


@pytest.mark.parametrize(("top", "per_file"), [(1, 1), (2, 2)])
def test_top_n_and_functions_per_file_are_bounded(top: int, per_file: int) -> None:
    churn = churn_of({f"m{i}.py": i + 1 for i in range(5)})
    functions = [function(f"m{i}.py", f"f{j}", j + 1, line=j) for i in range(5) for j in range(4)]
    ranked = hotspots(churn, functions, top=top, functions_per_file=per_file)
    assert len(ranked) == top
    assert ranked[0]["path"] == "m4.py"
    assert [f["name"] for f in ranked[0]["functions"]] == [f"f{3 - j}" for j in range(per_file)]


# ------------------------------------------------------------------------------------------------ log parsing


def header(sha: str, seconds: int, email: str) -> bytes:
    return b"\x1e" + sha.encode() * 40 + b"\x1f" + str(seconds).encode() + b"\x1f" + email.encode() + b"\0"


def test_parse_log_counts_commits_files_dates_and_authors() -> None:
    data = (
        header("a", T0, "Ann@Example.com")
        + b"\nsrc/app.py\0README.md\0"
        + header("b", T0 - DAY, "bob@example.com")
        + header("c", T0 - 2 * DAY, "ann@example.com")  # no files: an empty commit
        + b"\nsrc/app.py\0\nodd\nname\0"
        + header("d", T0 - 400 * DAY, "old@example.com")  # before the window
        + b"\nsrc/app.py\0"
    )
    counted = parse_log(data, since=T0 - 365 * DAY)
    assert counted.commits == 3
    assert {path: t.changes for path, t in counted.tallies.items()} == {
        b"src/app.py": 2,
        b"README.md": 1,
        b"\nodd\nname": 1,  # a leading newline after the first path belongs to the name
    }
    app = counted.tallies[b"src/app.py"]
    assert app.last_change == T0
    assert len(app.authors) == 1  # emails compared case-insensitively


def test_parse_log_skips_shallow_boundaries_and_a_cut_last_commit() -> None:
    data = header("a", T0, "a@x") + b"\nkept.py\0" + header("b", T0 - DAY, "b@x") + b"\nall.py\0every.py\0"
    assert set(parse_log(data, since=0, skip=frozenset({"b" * 40})).tallies) == {b"kept.py"}
    cut = parse_log(data[:-5], since=0, complete=False)
    assert cut.commits == 1
    assert set(cut.tallies) == {b"kept.py"}
