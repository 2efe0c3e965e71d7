"""Real git repositories made on the spot, for analyses to clone."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_repository(root: Path, files: dict[str, str], *, branch: str = "main") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=30,
        )

    git("init", "-q", "-b", branch)
    git("add", "-A")
    git("commit", "-q", "-m", "planted")
    return root
