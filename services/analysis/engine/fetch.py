"""The fetch step: a shallow, hardened `git clone` of one ref into a fresh directory, under time and size limits.

Git runs as an asyncio subprocess in a session of its own, so a timeout, a size overrun, a cancellation
(`should_stop()`) or a cancelled task kills the whole process group (git, `git-remote-https`, `index-pack`,
`upload-pack` for `file://`). The partial destination is removed on any failure.

Hardening (argv `-c` options, environment built from scratch rather than inherited):

* `protocol.allow=never` plus `protocol.https.allow=always` (remote) or `protocol.file.allow=always` (local), and
  the same through `GIT_ALLOW_PROTOCOL`; no submodules; `--` before positional arguments; refs checked with
  `check_ref` again.
* No system or global configuration (`GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`, `HOME` and
  `XDG_CONFIG_HOME` in an empty temporary directory), no credential helpers, `GIT_TERMINAL_PROMPT=0`,
  `core.hooksPath=/dev/null`, `core.fsmonitor=false`, an empty template directory, `GIT_LFS_SKIP_SMUDGE=1`.
* `core.symlinks=false`: symbolic links in the repository are checked out as small text files holding the link
  target, so the analysers that read the tree can never be led outside it.
* Remote only: `http.followRedirects=false`. Redirects would leave the host allow-list; a renamed or moved
  repository therefore fails (as not found / access denied) and the tenant must give its current URL.
* The tenant's GitHub token is used only for `https://github.com/...` and reaches git only through the environment
  (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_0`/`GIT_CONFIG_VALUE_0` setting `http.https://github.com/.extraHeader`), so
  it is not in any process's argv, not written to the clone's `.git/config`, and scrubbed from every message.

Limits: `should_stop()` and the deadline are checked every `POLL_INTERVAL_S` (0.2 s); the size of `dest` (apparent
size of its files, `.git` and the pack being received included) is measured in a thread every tick and checked once
more at the end, so a fast transfer may overshoot `max_bytes` by about two ticks' worth of data before git is killed.

History: `depth` commits (git's `--depth`, 1 by default) are fetched; with more than one, the blobs of older
commits are left on the server (`--filter=blob:none`: a partial clone holding commits and trees, enough for
`git log --name-only`), and a clone that turns out larger than `max_bytes` is retried with depth 1 under the same
deadline, because history only feeds the churn section and must never cost the analysis. A commit count bounds
the transfer rather than a date (`--shallow-since`): upload-pack refuses the two together, and a date alone lets a
busy repository send years' worth of commits; the churn step applies the date window when it reads the log.
`offline_command` reads the finished clone with every transport refused, so a partial clone can never fetch a
missing object on demand.

Refs: empty means the remote's default branch; a branch or tag name (a `refs/heads/` or `refs/tags/` prefix is
dropped; a branch wins over a tag of the same name) is cloned with `--branch`; a 40-hex (or 64-hex) commit sha is
fetched directly (`git init` + `git fetch <url> <sha>` + `git checkout --detach`), which works with servers that
allow any reachable commit to be wanted (GitHub, and git's own protocol v2 used for `file://`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import structlog

from libs.common import errors
from libs.common.errors import ErrorSpec
from services.analysis.engine.context import StepError
from services.analysis.urls import RepositoryLocation, check_ref

if TYPE_CHECKING:
    from services.analysis.engine.context import Context

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 0.2
MAX_CAPTURED_OUTPUT = 64 * 1024
MAX_MESSAGE_LENGTH = 1000
GITHUB_HOST = "github.com"

FetchReason = Literal["timeout", "too_large", "not_found", "auth", "git"]

_SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]{1,1024}")
# Token shapes scrubbed even when they are not the token we were given.
_SECRET_PATTERNS = (
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{10,}|github_pat_[A-Za-z0-9_]{20,})"),
    re.compile(r"(?i)(authorization:\s*\w+\s+)\S+"),
    re.compile(r"(://)[^/@\s]+@"),
)
_NOT_FOUND_RE = re.compile(
    r"not found in upstream|couldn't find remote ref|no such remote ref|not our ref|"
    r"does not appear to be a git repository|repository '[^']*' not found|remote: repository not found|"
    r"returned error: 404|unknown revision|could not find remote branch",
    re.IGNORECASE,
)
_AUTH_RE = re.compile(
    r"could not read (?:username|password)|terminal prompts disabled|authentication failed|"
    r"returned error: 40[13]|invalid username or password",
    re.IGNORECASE,
)


class FetchError(RuntimeError):
    """Fetching failed; `reason` is one of `FetchReason`. The message never holds the token."""

    def __init__(self, reason: FetchReason, message: str) -> None:
        self.reason: FetchReason = reason
        super().__init__(message)


class FetchCancelled(Exception):  # noqa: N818 - the name the engine uses for a stop, not an error
    """`should_stop()` returned True: git was killed and the destination removed."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    commit_sha: str
    resolved_ref: str  # `refs/heads/<branch>`, `refs/tags/<tag>` or the commit sha that was asked for
    size_bytes: int  # apparent size of the files under `dest`, `.git` included
    seconds: float


@dataclass(frozen=True, slots=True)
class GitCommand:
    """One git invocation: argv (never holds secrets) and the complete environment to run it with."""

    argv: tuple[str, ...]
    env: Mapping[str, str]


def _never() -> bool:
    return False


# --------------------------------------------------------------------------------------------------- building


def _protocol(location: RepositoryLocation) -> str:
    return "https" if location.kind == "remote" else "file"


def git_argv(location: RepositoryLocation, *args: str) -> tuple[str, ...]:
    """`git` with the hardening options for this location, followed by `args`."""
    protocol = _protocol(location)
    options = [f"protocol.{protocol}.allow=always"]
    if location.kind == "remote":
        options.append("http.followRedirects=false")
    return _hardened_argv(options, args)


def _hardened_argv(extra_options: Sequence[str], args: Sequence[str]) -> tuple[str, ...]:
    options = [
        "protocol.allow=never",
        *extra_options,
        "core.hooksPath=/dev/null",
        "core.fsmonitor=false",
        "core.symlinks=false",
        "credential.helper=",
        "submodule.recurse=false",
        "fetch.recurseSubmodules=false",
        "gc.auto=0",
        "maintenance.auto=false",
        "advice.detachedHead=false",
        "init.defaultBranch=main",
    ]
    argv = ["git"]
    for option in options:
        argv += ["-c", option]
    return (*argv, *args)


_PASSED_THROUGH = (
    "PATH",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
)


def _uses_token(location: RepositoryLocation, github_token: str | None) -> bool:
    return bool(github_token) and location.kind == "remote" and location.host == GITHUB_HOST


def _auth_header(token: str) -> str:
    return "Authorization: Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode("ascii")


def git_environment(location: RepositoryLocation, *, home: Path, github_token: str | None = None) -> dict[str, str]:
    """The environment for git: built from scratch, with the token (github.com remotes only) as env config."""
    env = _base_environment(home, allowed_protocols=_protocol(location))
    if github_token and _uses_token(location, github_token):
        if not _TOKEN_RE.fullmatch(github_token):
            raise FetchError("auth", "the GitHub token has an invalid format")
        env.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": f"http.https://{GITHUB_HOST}/.extraHeader",
                "GIT_CONFIG_VALUE_0": _auth_header(github_token),
            }
        )
    return env


def offline_command(repo: Path, *args: str, home: Path) -> GitCommand:
    """`git -C repo args` with the same hardening, able to reach no remote at all.

    For reading a finished clone: a partial clone would otherwise fetch a missing object from its promisor remote
    on demand, reaching the network (without the token) long after the fetch step and its limits. Every transport
    is refused (`protocol.allow=never`, an empty `GIT_ALLOW_PROTOCOL`); `GIT_NO_LAZY_FETCH` says it too to git
    2.44 and later.
    """
    env = _base_environment(home, allowed_protocols="")
    env["GIT_NO_LAZY_FETCH"] = "1"
    return GitCommand(_hardened_argv((), ("-C", str(repo), *args)), env)


def _base_environment(home: Path, *, allowed_protocols: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ALLOW_PROTOCOL": allowed_protocols,
            "GIT_LFS_SKIP_SMUDGE": "1",
            "GIT_NO_REPLACE_OBJECTS": "1",
        }
    )
    return env


def _short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def _history_args(depth: int) -> list[str]:
    if depth < 1:
        raise ValueError("depth must be at least 1")
    # Older commits are wanted for their file lists only: their blobs stay on the server.
    return ["--depth", str(depth), *(["--filter=blob:none"] if depth > 1 else [])]


def clone_command(
    location: RepositoryLocation,
    *,
    ref: str,
    dest: Path,
    home: Path,
    github_token: str | None = None,
    depth: int = 1,
) -> GitCommand:
    """The shallow single-branch clone of a branch or tag (`ref` empty: the default branch) into `dest`."""
    short = _short_ref(check_ref(ref))
    args = ["clone", "--quiet", *_history_args(depth), "--single-branch", "--no-tags", "--no-recurse-submodules"]
    args.append("--template=")
    if short:
        args.append(f"--branch={short}")
    argv = git_argv(location, *args, "--", location.url, str(dest))
    return GitCommand(argv, git_environment(location, home=home, github_token=github_token))


def sha_fetch_commands(
    location: RepositoryLocation,
    *,
    sha: str,
    dest: Path,
    home: Path,
    github_token: str | None = None,
    depth: int = 1,
) -> tuple[GitCommand, ...]:
    """`git init`, a shallow fetch of one commit and a detached checkout of it."""
    if not _SHA_RE.fullmatch(sha):
        raise ValueError("not a commit sha")
    env = git_environment(location, home=home, github_token=github_token)
    d = str(dest)
    return (
        GitCommand(git_argv(location, "init", "--quiet", "--template=", "--", d), env),
        GitCommand(
            git_argv(
                location,
                *("-C", d, "fetch", "--quiet", *_history_args(depth), "--no-tags", "--no-recurse-submodules"),
                *("--no-write-fetch-head", "--", location.url, sha),
            ),
            env,
        ),
        GitCommand(git_argv(location, "-C", d, "checkout", "--quiet", "--detach", sha, "--"), env),
    )


# ---------------------------------------------------------------------------------------------------- running


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` without the given secrets, anything shaped like a GitHub token, auth headers or URL user info."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _SECRET_PATTERNS[0].sub("***", text)
    text = _SECRET_PATTERNS[1].sub(r"\1***", text)
    return _SECRET_PATTERNS[2].sub(r"\1***@", text)


def tree_size(root: Path) -> int:
    """Apparent size in bytes of the regular files under `root` (0 if missing); never raises."""
    total = 0
    stack = [str(root)]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


@dataclass(frozen=True, slots=True)
class _Limits:
    deadline: float  # time.monotonic()
    timeout_s: float
    should_stop: Callable[[], bool]
    watch: Path
    max_bytes: int
    secrets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Completed:
    returncode: int
    stdout: str
    stderr: str


async def _drain(stream: asyncio.StreamReader | None) -> bytes:
    """Read a pipe to its end, keeping only the last `MAX_CAPTURED_OUTPUT` bytes."""
    if stream is None:
        return b""
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > MAX_CAPTURED_OUTPUT:
            del kept[: len(kept) - MAX_CAPTURED_OUTPUT]
    return bytes(kept)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _run(command: GitCommand, limits: _Limits) -> _Completed:
    """Run git under the limits; kill its process group and raise on timeout, size overrun or stop."""
    if limits.should_stop():
        raise FetchCancelled("fetch cancelled")
    if time.monotonic() >= limits.deadline:
        raise FetchError("timeout", f"fetching took longer than {limits.timeout_s:g} s")
    proc = await asyncio.create_subprocess_exec(
        *command.argv,
        env=dict(command.env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out_task = asyncio.ensure_future(_drain(proc.stdout))
    err_task = asyncio.ensure_future(_drain(proc.stderr))
    wait_task = asyncio.ensure_future(proc.wait())
    size_task: asyncio.Future[int] | None = None
    finished = False
    try:
        pending: set[asyncio.Future[Any]] = {out_task, err_task, wait_task}
        while pending:
            remaining = limits.deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError("timeout", f"fetching took longer than {limits.timeout_s:g} s")
            _, pending = await asyncio.wait(pending, timeout=min(POLL_INTERVAL_S, remaining))
            if not pending:
                break
            if limits.should_stop():
                raise FetchCancelled("fetch cancelled")
            # One measurement at a time (in a thread: a big checkout takes a while to walk), checked a tick later.
            if size_task is not None and size_task.done():
                if size_task.result() > limits.max_bytes:
                    raise FetchError("too_large", f"the repository is larger than {limits.max_bytes} bytes")
                size_task = None
            if size_task is None:
                size_task = asyncio.ensure_future(asyncio.to_thread(tree_size, limits.watch))
        finished = True
    finally:
        if not finished:
            _kill_group(proc.pid)
            for task in (out_task, err_task, wait_task):
                task.cancel()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            # Reap the child (SIGKILL makes this immediate) so no zombie or open pipe is left behind.
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                await asyncio.wait_for(proc.wait(), timeout=5)
        if size_task is not None:
            size_task.cancel()
    return _Completed(
        returncode=wait_task.result(),
        stdout=scrub(out_task.result().decode("utf-8", "replace"), limits.secrets),
        stderr=scrub(err_task.result().decode("utf-8", "replace"), limits.secrets),
    )


def classify_git_error(stderr: str) -> FetchReason:
    """`not_found`, `auth` or `git` from git's stderr (run with `LANG=C`).

    GitHub answers a clone of a missing *or* private repository without valid credentials by asking for them, which
    git (prompts disabled) reports as "could not read Username": that is `auth`, not `not_found`.
    """
    if _NOT_FOUND_RE.search(stderr):
        return "not_found"
    if _AUTH_RE.search(stderr):
        return "auth"
    return "git"


def _failure(what: str, completed: _Completed) -> FetchError:
    text = completed.stderr.strip()
    reason = classify_git_error(text)
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("hint:")]
    detail = " / ".join(lines)[-MAX_MESSAGE_LENGTH:] or f"exit status {completed.returncode}"
    return FetchError(reason, f"git {what} failed: {detail}")


async def _checked(what: str, command: GitCommand, limits: _Limits) -> _Completed:
    completed = await _run(command, limits)
    if completed.returncode != 0:
        raise _failure(what, completed)
    return completed


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.unlink()  # a file or a dangling symlink left where the directory was to be


async def fetch(
    location: RepositoryLocation,
    *,
    ref: str,
    dest: Path,
    github_token: str | None = None,
    timeout_s: float,
    max_bytes: int,
    should_stop: Callable[[], bool] = _never,
    depth: int = 1,
) -> FetchResult:
    """Clone `ref` of `location` (checked by `check_repository_url`) into `dest`, which must not exist or be empty.

    `depth` > 1 fetches that much history (commits and trees only, see the module docstring), falling back to
    depth 1 when that is too large. Raises `FetchError` (reason `timeout`, `too_large`, `not_found`, `auth` or
    `git`), `FetchCancelled` when `should_stop()` turns true (polled every `POLL_INTERVAL_S`), or
    `RepositoryUrlError("ref")` for a bad ref; `dest` is removed on any failure, cancellation of the calling task
    included.
    """
    if depth < 1:
        raise ValueError("depth must be at least 1")
    ref = check_ref(ref)
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise FileExistsError(f"fetch destination {dest} exists and is not an empty directory")
    started = time.monotonic()
    secrets: tuple[str, ...] = ()
    if github_token:
        secrets = (github_token, _auth_header(github_token).split(" ", 2)[2])
    limits = _Limits(
        deadline=started + timeout_s,
        timeout_s=timeout_s,
        should_stop=should_stop,
        watch=dest,
        max_bytes=max_bytes,
        secrets=secrets,
    )
    home = Path(tempfile.mkdtemp(prefix="repolens-git-home-"))

    async def fetch_at(depth: int) -> tuple[str, str, int]:
        commit, resolved = await _fetch_into(
            location, ref=ref, dest=dest, home=home, token=github_token, limits=limits, depth=depth
        )
        size = await asyncio.to_thread(tree_size, dest)
        if size > max_bytes:
            raise FetchError("too_large", f"the repository is larger than {max_bytes} bytes")
        return commit, resolved, size

    try:
        try:
            commit, resolved, size = await fetch_at(depth)
        except FetchError as exc:
            if exc.reason != "too_large" or depth == 1:
                raise
            await asyncio.to_thread(_remove, dest)
            commit, resolved, size = await fetch_at(1)
    except asyncio.CancelledError:
        _remove(dest)
        raise
    except BaseException:
        await asyncio.to_thread(_remove, dest)
        raise
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return FetchResult(commit_sha=commit, resolved_ref=resolved, size_bytes=size, seconds=time.monotonic() - started)


async def _fetch_into(
    location: RepositoryLocation, *, ref: str, dest: Path, home: Path, token: str | None, limits: _Limits, depth: int
) -> tuple[str, str]:
    """Run the git commands; return (commit sha, resolved ref)."""
    if _SHA_RE.fullmatch(ref):
        init, fetch_sha, checkout = sha_fetch_commands(
            location, sha=ref, dest=dest, home=home, github_token=token, depth=depth
        )
        await _checked("init", init, limits)
        await _checked("fetch", fetch_sha, limits)
        await _checked("checkout", checkout, limits)
        resolved = ref
    else:
        clone = clone_command(location, ref=ref, dest=dest, home=home, github_token=token, depth=depth)
        await _checked("clone", clone, limits)
        resolved = ""
    # Local commands only from here: no token needed.
    env = git_environment(location, home=home)
    head = await _run(
        GitCommand(git_argv(location, "-C", str(dest), "rev-parse", "--verify", "HEAD^{commit}"), env), limits
    )
    if head.returncode != 0:
        raise FetchError("not_found", "the repository has no commits")
    commit = head.stdout.strip()
    if not resolved:
        symbolic = await _run(
            GitCommand(git_argv(location, "-C", str(dest), "symbolic-ref", "-q", "HEAD"), env), limits
        )
        resolved = symbolic.stdout.strip() if symbolic.returncode == 0 else f"refs/tags/{_short_ref(ref)}"
    return commit, resolved


_STEP_ERRORS: dict[str, ErrorSpec] = {
    "timeout": errors.FETCH_TIMEOUT,
    "too_large": errors.FETCH_TOO_LARGE,
    "not_found": errors.FETCH_NOT_FOUND,
    "auth": errors.FETCH_AUTH,
}


async def step(ctx: Context) -> None:
    """The clone of the job's ref into the checkout, with as much history as the churn step reads."""
    job, settings = ctx.job, ctx.settings
    assert job.location is not None, "a job with a tree on disk has no fetch step"
    try:
        fetched = await fetch(
            job.location,
            ref=job.ref,
            dest=ctx.checkout,
            github_token=job.config.github_token or None,
            timeout_s=settings.fetch_timeout_s,
            max_bytes=settings.max_repository_bytes,
            should_stop=ctx.should_stop,
            depth=settings.churn_max_commits,
        )
    except FetchError as exc:
        # The analysis keeps only the code; what git said (secrets scrubbed) is for the operator.
        log.warning("fetch.failed", reason=exc.reason, error=str(exc))
        raise StepError(_STEP_ERRORS.get(exc.reason, errors.FETCH_FAILED)) from None
    ctx.commit_sha = fetched.commit_sha
