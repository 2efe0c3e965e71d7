"""The engine's cache: a second analysis of the same files parses none of them and reports the same."""

from __future__ import annotations

import os
import sqlite3
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from repolens.tenants.v1 import tenants_pb2
from services.analysis.engine import pipeline, scan
from services.analysis.engine.cache import CACHE_FILE, ParseCache

GATE = tenants_pb2.QualityGate(max_function_complexity=2, max_high_findings=0, max_secrets=0, max_file_lines=1000)


def _tree(root: Path) -> None:
    files = {
        "app/main.py": '"""Entry."""\n\n\ndef main(a, b):\n    # c\n    if a and b:\n        return 1\n    return 0\n',
        "app/util.py": "def helper(x):\n    return [y for y in x if y]\n",
        "copy/util.py": "def helper(x):\n    return [y for y in x if y]\n",  # the same bytes elsewhere
        "web/app.ts": "export function f(a: number): number {\n  return a > 1 ? a : 0;\n}\n",
        "web/view.tsx": "export const View = () => <div>{1 && 2}</div>;\n",
        "lib/c.c": "int f(int a) {\n  /* c */\n  while (a) { a--; }\n  return a;\n}\n",
        "README.md": "# Title\n",
        ".env": "TOKEN=ghp_" + "Zq8" * 12 + "\n",
    }
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)


def _analyse(root: Path, cache_dir: Path, pool: ProcessPoolExecutor | None = None) -> pipeline.Outcome:
    return pipeline.analyse(
        root, gate=GATE, should_stop=lambda: False, progress=lambda s, p: None, pool=pool, cache_dir=str(cache_dir)
    )


def _without_reuse(outcome: pipeline.Outcome) -> dict[str, object]:
    sections = dict(outcome.sections)
    sections["complexity"] = {k: v for k, v in sections["complexity"].items() if k != "files_reused"}
    return sections


def test_a_second_analysis_reuses_every_parsed_file_and_reports_the_same(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    _tree(root)
    cache.mkdir()
    uncached = pipeline.analyse(root, gate=GATE, should_stop=lambda: False, progress=lambda s, p: None)
    first = _analyse(root, cache)
    second = _analyse(root, cache)
    parsed = first.sections["complexity"]["files_parsed"]
    assert parsed == 6
    # The copy has the same bytes as app/util.py: measured once, found in the cache the second time.
    assert first.sections["complexity"]["files_reused"] in (0, 1)
    assert second.sections["complexity"]["files_reused"] == parsed
    assert _without_reuse(first) == _without_reuse(second) == _without_reuse(uncached)
    # The reused functions carry their own paths.
    top = {(f["path"], f["name"]) for f in second.sections["complexity"]["top"]}
    assert {("app/util.py", "helper"), ("copy/util.py", "helper")} <= top


def test_a_changed_file_is_measured_again(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    _tree(root)
    cache.mkdir()
    _analyse(root, cache)
    (root / "app/main.py").write_text(
        "def main(a):\n    while a:\n        a -= 1\n    return a\n\n\ndef extra():\n    pass\n"
    )
    again = _analyse(root, cache)
    assert again.sections["complexity"]["files_reused"] == 5
    names = {f["name"] for f in again.sections["complexity"]["top"] if f["path"] == "app/main.py"}
    assert names == {"main", "extra"}


def test_an_unusable_cache_only_costs_time(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    _tree(root)
    cache.mkdir()
    (cache / CACHE_FILE).write_bytes(b"this is not a SQLite database" * 100)
    broken = _analyse(root, cache)
    missing = _analyse(root, tmp_path / "no" / "such" / "dir")
    plain = pipeline.analyse(root, gate=GATE, should_stop=lambda: False, progress=lambda s, p: None)
    assert broken.sections["complexity"]["files_reused"] == missing.sections["complexity"]["files_reused"] == 0
    assert _without_reuse(broken) == _without_reuse(missing) == _without_reuse(plain)


def test_a_foreign_value_is_measured_again_and_replaced(tmp_path: Path) -> None:
    root, cache = tmp_path / "repo", tmp_path / "cache"
    _tree(root)
    cache.mkdir()
    _analyse(root, cache)
    with sqlite3.connect(cache / CACHE_FILE) as db:
        db.execute('UPDATE measured SET value = \'{"not": "ours"}\'')
    again = _analyse(root, cache)
    assert again.sections["complexity"]["files_reused"] == 0
    assert _analyse(root, cache).sections["complexity"]["files_reused"] == 6


def test_trim_keeps_the_newest_entries(tmp_path: Path) -> None:
    cache = ParseCache(str(tmp_path / CACHE_FILE))
    keys = [cache.key(f"file {i}".encode(), "Python") for i in range(10)]
    for key in keys:
        cache.put(key, ((1, 0, 0), []))
    cache.flush()
    assert cache.trim(4) == 6
    assert [cache.get(key, "x.py") is not None for key in keys] == [False] * 6 + [True] * 4
    assert cache.trim(4) == 0
    cache.close()


def test_the_key_depends_on_the_grammar_and_the_bytes(tmp_path: Path) -> None:
    cache = ParseCache(str(tmp_path / CACHE_FILE))
    assert cache.key(b"x", "TypeScript") != cache.key(b"x", "TSX")
    assert cache.key(b"x", "Python") != cache.key(b"y", "Python")
    assert cache.key(b"x", "Python") == ParseCache(os.devnull).key(b"x", "Python")


def test_the_pool_processes_share_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan, "CHUNK_FILES", 2)
    root, cache = tmp_path / "repo", tmp_path / "cache"
    _tree(root)
    cache.mkdir()
    with pipeline.start_pool(2) as pool:
        first = _analyse(root, cache, pool)
        second = _analyse(root, cache, pool)
    assert second.sections["complexity"]["files_reused"] == 6
    assert _without_reuse(first) == _without_reuse(second)
