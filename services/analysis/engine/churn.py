"""The churn step: how often, how lately and by how many people each file changed, from the clone's own history.

One `git log` reads the window: `--since` its start, `--max-count` the commit cap, `--no-merges` (a merge's changes
are counted on the commits it brings in), `--no-renames` (a renamed file starts afresh under its new name; rename
detection would read blobs, which a partial clone does not have), `--name-only -z` (raw paths, no quoting). It runs
through `offline_command`, so it can never fetch anything, in a session of its own that is killed on timeout or
stop, and its output is read up to `MAX_LOG_BYTES`: past that, or past the deadline, the commits read so far are
counted and the result says it is incomplete.

Counted per file still in the checkout (deleted and renamed-away paths are dropped): commits in the window that
touched it, the newest of their committer dates (when the change landed, which a rebase moves, rather than when it
was written), and the number of distinct author emails. Emails are compared in memory and never leave this module.

A shallow clone's oldest commits are grafted to have no parents, so `git log` would show them adding every file of
their tree: they are skipped (`.git/shallow` lists them). A clone of depth 1 thus has no churn at all
(`history` false), which is what the fetch falls back to when history is too large.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.analysis.engine.fetch import GitCommand, offline_command
from services.analysis.engine.inventory import Cancelled

if TYPE_CHECKING:
    from services.analysis.engine.context import Context

MAX_LOG_BYTES = 32 * 1024 * 1024
POLL_INTERVAL_S = 0.2

# A commit header as formatted below: record separator, sha, committer time, author email.
_HEADER_RE = re.compile(rb"\x1e([0-9a-f]{40}|[0-9a-f]{64})\x1f([0-9]{1,12})\x1f([^\x1f]*)")
_FORMAT = "--format=%x1e%H%x1f%ct%x1f%aE"


@dataclass(frozen=True, slots=True)
class FileChurn:
    changes: int  # commits in the window that touched the file
    last_change: int  # committer time of the newest of them, Unix seconds
    authors: int  # distinct author emails among them


@dataclass(frozen=True, slots=True)
class Churn:
    """The history of one checkout over one window; `files` holds only paths present in the checkout."""

    window_days: int
    since: int  # start of the window, Unix seconds
    max_commits: int
    history: bool = False  # the clone held commits beyond HEAD's own
    commits: int = 0  # commits read in the window (shallow boundaries skipped)
    complete: bool = True  # false when the log was cut by the output bound or the time limit
    files: Mapping[str, FileChurn] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "window_days": self.window_days,
            "since": iso_time(self.since) if self.since else None,
            "max_commits": self.max_commits,
            "history": self.history,
            "commits": self.commits,
            "files_changed": len(self.files),
            "complete": self.complete,
        }


def no_history() -> Churn:
    """What an analysis reports when no history was read at all."""
    return Churn(window_days=0, since=0, max_commits=0)


def iso_time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _Tally:
    changes: int = 0
    last_change: int = 0
    authors: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class LogCount:
    commits: int = 0
    tallies: dict[bytes, _Tally] = field(default_factory=dict)


def parse_log(data: bytes, *, since: int, skip: frozenset[str] = frozenset(), complete: bool = True) -> LogCount:
    """Tally `git log -z --name-only` output written with `_FORMAT`.

    Tokens are NUL-terminated: a header, then the commit's paths, the first one preceded by the newline git puts
    between header and file list. A path that happens to look exactly like a header would be misread; only a
    repository's own churn could suffer from it. With `complete` false, the last commit (whose file list may be
    cut) is dropped.
    """
    count = LogCount()
    tokens = data.split(b"\0")
    if complete:
        tokens = tokens[:-1]  # what follows the last NUL: nothing, or a stray newline
    else:
        last_header = max((i for i, t in enumerate(tokens) if _HEADER_RE.fullmatch(t)), default=0)
        tokens = tokens[:last_header]
    current: tuple[int, bytes] | None = None  # (committer time, author) of the commit whose paths follow
    after_header = False
    for token in tokens:
        header = _HEADER_RE.fullmatch(token)
        if header is not None:
            sha, seconds, author = header.group(1).decode(), int(header.group(2)), header.group(3)
            after_header = True
            current = None
            if sha in skip or seconds < since:
                continue
            count.commits += 1
            current = (seconds, author.strip().lower())
            continue
        path = token[1:] if after_header and token.startswith(b"\n") else token
        after_header = False
        if current is None or not path:
            continue
        tally = count.tallies.setdefault(path, _Tally())
        tally.changes += 1
        tally.last_change = max(tally.last_change, current[0])
        tally.authors.add(current[1])
    return count


def _present(src: Path, tallies: Mapping[bytes, _Tally]) -> dict[str, FileChurn]:
    """The tallies of paths that are regular files in the checkout, keyed as the other steps name files."""
    files = {}
    for raw, tally in tallies.items():
        path = os.fsdecode(raw)
        parts = path.split("/")
        if path.startswith("/") or ".." in parts or ".git" in parts:
            continue
        full = src / path
        if full.is_file() and not full.is_symlink():
            files[path] = FileChurn(changes=tally.changes, last_change=tally.last_change, authors=len(tally.authors))
    return files


def _shallow_commits(src: Path) -> frozenset[str]:
    try:
        return frozenset((src / ".git" / "shallow").read_text("ascii").split())
    except (OSError, UnicodeDecodeError):
        return frozenset()


# ---------------------------------------------------------------------------------------------------- running


@dataclass(frozen=True, slots=True)
class _Output:
    returncode: int | None  # None: killed (output bound or time limit)
    stdout: bytes


async def _read_bounded(stream: asyncio.StreamReader, into: bytearray, limit: int) -> bool:
    """Read into `into` until the end (True) or until `limit` bytes are held (False)."""
    while chunk := await stream.read(65536):
        into += chunk
        if len(into) >= limit:
            del into[limit:]
            return False
    return True


async def _run_git(command: GitCommand, *, deadline: float, limit: int, should_stop: Callable[[], bool]) -> _Output:
    """Run git, keeping at most `limit` bytes of its output; its process group is killed on any early exit."""
    if should_stop():
        raise Cancelled()
    proc = await asyncio.create_subprocess_exec(
        *command.argv,
        env=dict(command.env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    if proc.stdout is None:
        raise RuntimeError("git's output is not piped")
    out = bytearray()
    reading = asyncio.ensure_future(_read_bounded(proc.stdout, out, limit))
    returncode: int | None = None
    try:
        while not reading.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait({reading}, timeout=min(POLL_INTERVAL_S, remaining))
            if should_stop():
                raise Cancelled()
        if reading.done() and reading.result():
            remaining = max(deadline - time.monotonic(), 0.1)
            with contextlib.suppress(TimeoutError):
                returncode = await asyncio.wait_for(proc.wait(), timeout=remaining)
    finally:
        if returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                await asyncio.wait_for(proc.wait(), timeout=5)
        reading.cancel()
    return _Output(returncode=returncode, stdout=bytes(out))


async def churn(
    src: Path,
    *,
    window_days: int,
    max_commits: int,
    timeout_s: float,
    should_stop: Callable[[], bool],
    now: datetime | None = None,
    max_log_bytes: int = MAX_LOG_BYTES,
) -> Churn:
    """Churn of the checkout `src` over the `window_days` before `now`, from at most `max_commits` commits.

    `timeout_s` bounds both git calls together. Raises `Cancelled` when `should_stop()` turns true; a git failure
    gives an empty, incomplete result rather than failing the analysis, since churn only adds to the report.
    """
    deadline = time.monotonic() + timeout_s
    since = int(((now or datetime.now(UTC)) - timedelta(days=window_days)).timestamp())
    skip = await asyncio.to_thread(_shallow_commits, src)
    home = Path(tempfile.mkdtemp(prefix="repolens-git-home-"))
    try:
        head = await _run_git(
            offline_command(src, "rev-parse", "--verify", "HEAD^{commit}", home=home),
            deadline=deadline,
            limit=4096,
            should_stop=should_stop,
        )
        if head.returncode != 0:
            return Churn(window_days=window_days, since=since, max_commits=max_commits, complete=False)
        if head.stdout.decode("ascii", "replace").strip() in skip:
            return Churn(window_days=window_days, since=since, max_commits=max_commits)  # depth 1: no history
        log_command = offline_command(
            src,
            *("log", f"--since=@{since}", f"--max-count={max_commits}", "--no-merges", "--no-renames"),
            *("--name-only", "-z", _FORMAT, "HEAD", "--"),
            home=home,
        )
        log = await _run_git(log_command, deadline=deadline, limit=max_log_bytes, should_stop=should_stop)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if log.returncode not in (0, None):
        return Churn(window_days=window_days, since=since, max_commits=max_commits, history=True, complete=False)
    complete = log.returncode == 0
    counted = await asyncio.to_thread(parse_log, log.stdout, since=since, skip=skip, complete=complete)
    files = await asyncio.to_thread(_present, src, counted.tallies)
    return Churn(
        window_days=window_days,
        since=since,
        max_commits=max_commits,
        history=True,
        commits=counted.commits,
        complete=complete,
        files=files,
    )


async def step(ctx: Context) -> None:
    """Which files changed how often over the window, from the clone's history (read offline)."""
    settings = ctx.settings
    ctx.history = await churn(
        ctx.checkout,
        window_days=settings.churn_window_days,
        max_commits=settings.churn_max_commits,
        timeout_s=settings.fetch_timeout_s,
        should_stop=ctx.should_stop,
    )
