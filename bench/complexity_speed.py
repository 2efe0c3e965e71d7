"""Time the complexity step over a tree: `python bench/complexity_speed.py /tmp/django-sdist/django-5.2.8`.

Measures every file the inventory's language table recognises as one of the complexity step's languages.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from services.analysis.engine.complexity import SUPPORTED_LANGUAGES, complexity

_EXTENSIONS = {
    ".py": "Python",
    ".js": "JavaScript",
    ".mjs": "JavaScript",
    ".ts": "TypeScript",
    ".tsx": "TypeScript",
    ".go": "Go",
    ".java": "Java",
    ".c": "C",
    ".h": "C",
    ".cc": "C++",
    ".cpp": "C++",
    ".hpp": "C++",
    ".rs": "Rust",
    ".rb": "Ruby",
    ".php": "PHP",
    ".cs": "C#",
}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/django-sdist/django-5.2.8")  # noqa: S108
    files = [
        (p.relative_to(root).as_posix(), _EXTENSIONS[p.suffix])
        for p in sorted(root.rglob("*"))
        if p.suffix in _EXTENSIONS and p.is_file()
    ]
    assert all(lang in SUPPORTED_LANGUAGES for _, lang in files)
    size = sum((root / rel).stat().st_size for rel, _ in files)
    started = time.perf_counter()
    result = complexity(root, files)
    elapsed = time.perf_counter() - started
    worst = max(result.functions, key=lambda f: f.cyclomatic, default=None)
    print(
        f"{len(files)} files, {size / 1e6:.1f} MB, {result.files_parsed} parsed, {len(result.functions)} functions, "
        f"skipped {result.skipped}, {elapsed:.2f} s ({size / 1e6 / elapsed:.1f} MB/s); most complex: {worst}"
    )


if __name__ == "__main__":
    main()
