"""What the engine measured of a file, kept by the file's content, so that a later analysis reuses it.

Most analyses are of a repository analysed before, and most of its files have not changed since: parsing them
again is most of an analysis's time (`bench/engine.py --warm` shows the difference). `ParseCache` is a SQLite file
on the worker's disk (`ENGINE_CACHE_DIR`), shared by the worker's engine processes: the key is a BLAKE2b digest of
the file's bytes with the grammar that parsed them, under a version that changes with the engine and with every
grammar's package (a new release measures afresh); the value is the file's line counts and its functions, without
their path (the same bytes in two places, or in two repositories, are measured once).

Only what the parse gives is kept: secrets are looked for on every run, their findings depend on the path.

A cache is an optimisation, never a source of failure: an unreadable, locked or corrupt file gives misses (and
one warning per process), and values are JSON, never pickles, so a file someone else could write cannot run code
here. `trim` keeps it under `ENGINE_CACHE_MAX_ENTRIES` entries, dropping the least recently written.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from importlib import metadata

from services.analysis.engine.complexity import FunctionMetrics

__all__ = ["CACHE_FILE", "Measured", "ParseCache"]

CACHE_FILE = "parse-cache.sqlite3"
# Bumped whenever what the engine measures of a file changes.
_ENGINE_VERSION = "1"
_GRAMMARS = (
    "tree-sitter",
    "tree-sitter-c",
    "tree-sitter-c-sharp",
    "tree-sitter-cpp",
    "tree-sitter-go",
    "tree-sitter-java",
    "tree-sitter-javascript",
    "tree-sitter-php",
    "tree-sitter-python",
    "tree-sitter-ruby",
    "tree-sitter-rust",
    "tree-sitter-typescript",
)
_BUSY_TIMEOUT_S = 2.0

# A file's code, comment and blank lines, and its functions (path left out: the caller's path is put back).
Measured = tuple[tuple[int, int, int], list[FunctionMetrics]]


def _version() -> bytes:
    installed = []
    for name in _GRAMMARS:
        try:
            installed.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            installed.append(f"{name}=none")
    return hashlib.blake2b(";".join([_ENGINE_VERSION, *installed]).encode(), digest_size=8).digest()


class ParseCache:
    """One process's connection to the cache file at `path`; opened on first use."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._broken = False
        self._version = _version()
        self._pending: list[tuple[bytes, str]] = []

    @property
    def path(self) -> str:
        return self._path

    def key(self, data: bytes, grammar: str) -> bytes:
        return self._version + hashlib.blake2b(data, digest_size=16, person=grammar.encode()[:16]).digest()

    def get(self, key: bytes, path: str) -> Measured | None:
        db = self._connection()
        if db is None:
            return None
        try:
            row = db.execute("SELECT value FROM measured WHERE key = ?", (key,)).fetchone()
        except sqlite3.OperationalError:
            return None  # busy beyond the timeout: a miss this time
        except sqlite3.Error as exc:
            self._give_up(exc)
            return None
        if row is None:
            return None
        try:
            lines, functions = json.loads(row[0])
            return (
                (int(lines[0]), int(lines[1]), int(lines[2])),
                [FunctionMetrics(f[0], path, *(int(v) for v in f[1:7])) for f in functions],
            )
        except (ValueError, TypeError, IndexError):
            return None  # not what this code writes: measured again, and replaced

    def put(self, key: bytes, measured: Measured) -> None:
        """Queues an entry; `flush` writes the queue in one transaction."""
        lines, functions = measured
        rows = [
            [f.name, f.start_line, f.end_line, f.cyclomatic, f.length, f.parameters, f.max_nesting] for f in functions
        ]
        self._pending.append((key, json.dumps([list(lines), rows], separators=(",", ":"))))

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        db = self._connection()
        if db is None or not pending:
            return
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO measured (key, value) VALUES (?, ?)", pending)
        except sqlite3.OperationalError:
            pass  # busy beyond the timeout: these are measured again next time
        except sqlite3.Error as exc:
            self._give_up(exc)

    def trim(self, max_entries: int) -> int:
        """Drops the least recently written entries beyond `max_entries`; returns how many went."""
        db = self._connection()
        if db is None:
            return 0
        try:
            with db:
                (count,) = db.execute("SELECT count(*) FROM measured").fetchone()
                if count <= max_entries:
                    return 0
                db.execute(
                    "DELETE FROM measured WHERE rowid IN (SELECT rowid FROM measured ORDER BY rowid LIMIT ?)",
                    (count - max_entries,),
                )
                return int(count - max_entries)
        except sqlite3.OperationalError:
            return 0  # busy: trimmed after a later analysis
        except sqlite3.Error as exc:
            self._give_up(exc)
            return 0

    def prepare(self) -> bool:
        """Opens (and if need be makes) the file; False when it is unusable."""
        return self._connection() is not None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _connection(self) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        try:
            db = sqlite3.connect(self._path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=OFF")  # a cache: an entry lost in a crash is measured again
            # Made once, by `prepare` in the analysing process, before its engine processes open it: changing the
            # journal mode of a file others have open fails at once, without waiting for them.
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS measured (key BLOB PRIMARY KEY, value TEXT NOT NULL)")
        except sqlite3.Error as exc:
            self._give_up(exc)
            return None
        self._db = db
        return db

    def _give_up(self, exc: Exception) -> None:
        if not self._broken:
            # Imported here: structlog brings rich along (20 MiB in each engine process), and this is the rare path.
            import structlog

            structlog.get_logger(__name__).warning(
                "engine.cache_unusable", path=self._path, error=type(exc).__name__, detail=str(exc)
            )
        self._broken = True
        self.close()
