"""The churn step on real git repositories whose commits carry controlled dates (no mocks of git)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.analysis.engine.churn import churn, iso_time
from services.analysis.engine.inventory import Cancelled

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def git(repo: Path, *args: str, when: datetime | None = None, author: str = "Ann <ann@example.com>") -> str:
    name, _, email = author.partition(" <")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(repo),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email.rstrip(">"),
        "GIT_COMMITTER_NAME": "Committer",
        "GIT_COMMITTER_EMAIL": "committer@example.com",
    }
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = when.isoformat()
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


def write(repo: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)


def commit(repo: Path, when: datetime, files: dict[str, str], *, author: str = "Ann <ann@example.com>") -> str:
    write(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"change at {when:%Y-%m-%d}", when=when, author=author)
    return git(repo, "rev-parse", "HEAD")


def days_ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """Five months of changes to app.py by three people, plus one commit from before the window.

    old.py is renamed to new.py, gone.py is added then deleted, and side.py comes in through a merge."""
    repo = tmp_path / "history"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, days_ago(700), {"app.py": "v0\n", "old.py": "o\n", "notes.txt": "n0\n"})
    commit(repo, days_ago(300), {"app.py": "v1\n", "gone.py": "g\n"})
    git(repo, "mv", "old.py", "new.py")
    commit(repo, days_ago(250), {"app.py": "v2\n"}, author="Bob <bob@example.com>")
    (repo / "gone.py").unlink()
    commit(repo, days_ago(200), {"app.py": "v3\n"}, author="Ann <ANN@example.com>")
    git(repo, "checkout", "-q", "-b", "side")
    commit(repo, days_ago(150), {"side.py": "s\n"}, author="Cy <cy@example.com>")
    git(repo, "checkout", "-q", "main")
    commit(repo, days_ago(120), {"app.py": "v4\n", "notes.txt": "n1\n"}, author="Cy <cy@example.com>")
    git(repo, "merge", "-q", "--no-ff", "-m", "merge side", "side", when=days_ago(100))
    return repo


async def test_churn_counts_changes_dates_and_authors_in_the_window(history: Path) -> None:
    counted = await churn(history, window_days=365, max_commits=1000, timeout_s=30, should_stop=lambda: False, now=NOW)
    assert counted.history
    assert counted.complete
    assert counted.commits == 5  # the merge itself and the commit from 700 days ago are not counted
    assert counted.since == int(days_ago(365).timestamp())
    assert set(counted.files) == {"app.py", "new.py", "notes.txt", "side.py"}  # old.py and gone.py are gone
    app = counted.files["app.py"]
    assert app.changes == 4
    assert app.authors == 3  # Ann (in two spellings), Bob, Cy
    assert app.last_change == int(days_ago(120).timestamp())
    assert counted.files["new.py"].changes == 1  # the rename starts its history afresh
    assert counted.files["notes.txt"].changes == 1  # its first version is older than the window
    assert counted.files["side.py"].changes == 1
    summary = counted.summary()
    assert summary == {
        "window_days": 365,
        "since": iso_time(counted.since),
        "max_commits": 1000,
        "history": True,
        "commits": 5,
        "files_changed": 4,
        "complete": True,
    }
    assert "example.com" not in repr(counted)  # authors are counted, never kept


async def test_a_shorter_window_and_a_commit_cap_read_less(history: Path) -> None:
    recent = await churn(history, window_days=160, max_commits=1000, timeout_s=30, should_stop=lambda: False, now=NOW)
    assert recent.commits == 2
    assert {path: c.changes for path, c in recent.files.items()} == {"app.py": 1, "notes.txt": 1, "side.py": 1}
    capped = await churn(history, window_days=365, max_commits=1, timeout_s=30, should_stop=lambda: False, now=NOW)
    assert capped.commits == 1
    assert set(capped.files) == {"app.py", "notes.txt"}  # the newest non-merge commit


async def test_no_commit_in_the_window_gives_empty_churn(history: Path) -> None:
    later = NOW + timedelta(days=1000)
    counted = await churn(history, window_days=30, max_commits=1000, timeout_s=30, should_stop=lambda: False, now=later)
    assert counted.history
    assert counted.commits == 0
    assert counted.files == {}


async def test_output_bound_keeps_whole_commits_and_says_so(history: Path) -> None:
    counted = await churn(
        history, window_days=365, max_commits=1000, timeout_s=30, should_stop=lambda: False, now=NOW, max_log_bytes=150
    )
    assert not counted.complete
    assert 0 < counted.commits < 5
    assert counted.files["app.py"].changes <= counted.commits


async def test_stop_raises_cancelled(history: Path) -> None:
    with pytest.raises(Cancelled):
        await churn(history, window_days=365, max_commits=1000, timeout_s=30, should_stop=lambda: True, now=NOW)


async def test_not_a_repository_gives_an_incomplete_empty_result(tmp_path: Path) -> None:
    counted = await churn(tmp_path, window_days=365, max_commits=10, timeout_s=30, should_stop=lambda: False)
    assert not counted.complete
    assert counted.files == {}
