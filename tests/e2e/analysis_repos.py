"""Real git repositories made on the spot, for analyses to clone."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip()


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def git_repository(root: Path, files: dict[str, str], *, branch: str = "main") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write(root, files)
    _git(root, "init", "-q", "-b", branch)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "planted")
    return root


def git_branch(root: Path, branch: str, files: dict[str, str], *, start: str = "main") -> str:
    """A branch of the repository at `root` from `start`, with one more commit adding `files`; its commit sha."""
    _git(root, "checkout", "-q", "-b", branch, start)
    _write(root, files)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", f"on {branch}")
    sha = _git(root, "rev-parse", "HEAD")
    _git(root, "checkout", "-q", start)
    return sha


def head_of(root: Path, ref: str = "main") -> str:
    return _git(root, "rev-parse", ref)


def complex_function(name: str, branches: int) -> str:
    """A Python function of cyclomatic complexity `branches` + 1."""
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(branches))
    return f"def {name}(x):\n{body}    return -1\n"
