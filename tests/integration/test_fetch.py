"""The fetch step against real local git repositories (no network, no mocks of git)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.analysis.engine.churn import Churn, churn
from services.analysis.engine.fetch import (
    FetchCancelled,
    FetchError,
    classify_git_error,
    clone_command,
    fetch,
    git_environment,
    offline_command,
    scrub,
    sha_fetch_commands,
)
from services.analysis.urls import RepositoryLocation, RepositoryUrlError, check_repository_url

TOKEN = "ghp_SECRETsecretSECRETsecret0123456789"
B64_TOKEN = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
MB = 1024 * 1024


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.com"]
    unsigned = ["-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"]
    done = subprocess.run(
        ["git", *identity, *unsigned, "-C", str(repo), *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def new_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return path


def commit_file(repo: Path, name: str, content: bytes, message: str) -> str:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_bytes(content)
    git(repo, "add", "--", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def local(repo: Path) -> RepositoryLocation:
    return check_repository_url(str(repo), allowed_hosts=(), allow_local=True)


@dataclass(frozen=True)
class Source:
    repo: Path
    first: str  # tagged v1 (annotated) and v1-light (lightweight)
    main: str
    feature: str


@pytest.fixture
def source(tmp_path: Path) -> Source:
    repo = new_repo(tmp_path / "source")
    first = commit_file(repo, "README.md", b"# first\n", "first")
    git(repo, "tag", "-a", "v1", "-m", "version 1")
    git(repo, "tag", "v1-light")
    main = commit_file(repo, "src/app.py", b"print('main')\n", "second")
    git(repo, "checkout", "-q", "-b", "feature")
    feature = commit_file(repo, "feature.txt", b"feature\n", "feature")
    git(repo, "checkout", "-q", "main")
    return Source(repo, first, main, feature)


def processes_mentioning(text: str) -> list[int]:
    """Live processes (other than us) whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


# ----------------------------------------------------------------------------------------------- successes


async def test_fetch_default_branch(source: Source, tmp_path: Path) -> None:
    dest = tmp_path / "work" / "checkout"
    result = await fetch(local(source.repo), ref="", dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert result.commit_sha == source.main
    assert result.resolved_ref == "refs/heads/main"
    assert (dest / "README.md").read_bytes() == b"# first\n"
    assert (dest / "src" / "app.py").exists()
    assert not (dest / "feature.txt").exists()
    assert result.size_bytes > 0
    assert 0 < result.seconds < 30
    assert git(dest, "rev-list", "--count", "HEAD") == "1"  # shallow
    remote_refs = git(dest, "for-each-ref", "--format=%(refname)", "refs/remotes/")
    assert "refs/remotes/origin/main" in remote_refs.split()
    assert "feature" not in remote_refs  # single branch
    assert git(dest, "tag") == ""  # no tags
    assert not (dest / ".git" / "hooks").exists()  # empty template


@pytest.mark.parametrize("ref", ["feature", "refs/heads/feature"])
async def test_fetch_branch(source: Source, tmp_path: Path, ref: str) -> None:
    dest = tmp_path / "checkout"
    result = await fetch(local(source.repo), ref=ref, dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert result.commit_sha == source.feature
    assert result.resolved_ref == "refs/heads/feature"
    assert (dest / "feature.txt").read_text() == "feature\n"


@pytest.mark.parametrize("ref", ["v1", "v1-light", "refs/tags/v1"])
async def test_fetch_tag(source: Source, tmp_path: Path, ref: str) -> None:
    dest = tmp_path / "checkout"
    result = await fetch(local(source.repo), ref=ref, dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert result.commit_sha == source.first
    assert result.resolved_ref == f"refs/tags/{ref.removeprefix('refs/tags/')}"
    assert (dest / "README.md").exists()
    assert not (dest / "src").exists()


async def test_fetch_commit_sha(source: Source, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    result = await fetch(local(source.repo), ref=source.first, dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert result.commit_sha == source.first
    assert result.resolved_ref == source.first
    assert (dest / "README.md").exists()
    assert not (dest / "src").exists()
    assert git(dest, "rev-list", "--count", "HEAD") == "1"


async def test_fetch_bare_repository_and_empty_existing_dest(source: Source, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    git(source.repo, "clone", "-q", "--bare", ".", str(bare))
    dest = tmp_path / "checkout"
    dest.mkdir()
    result = await fetch(local(bare), ref="main", dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert result.commit_sha == source.main


async def test_symlinks_are_checked_out_as_plain_files(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "source")
    (repo / "escape").symlink_to("/etc/passwd")
    git(repo, "add", "escape")
    git(repo, "commit", "-q", "-m", "symlink")
    dest = tmp_path / "checkout"
    await fetch(local(repo), ref="", dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert not (dest / "escape").is_symlink()
    assert (dest / "escape").read_text() == "/etc/passwd"


# ------------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("ref", ["nope", "refs/tags/nope", "1" * 40])
async def test_unknown_ref_is_not_found(source: Source, tmp_path: Path, ref: str) -> None:
    dest = tmp_path / "checkout"
    with pytest.raises(FetchError) as caught:
        await fetch(local(source.repo), ref=ref, dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert caught.value.reason == "not_found"
    assert not dest.exists()


async def test_missing_repository_is_not_found(source: Source, tmp_path: Path) -> None:
    location = local(source.repo)
    shutil.rmtree(source.repo)
    dest = tmp_path / "checkout"
    with pytest.raises(FetchError) as caught:
        await fetch(location, ref="", dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert caught.value.reason == "not_found"
    assert not dest.exists()


async def test_empty_repository_is_not_found(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "empty")
    dest = tmp_path / "checkout"
    with pytest.raises(FetchError) as caught:
        await fetch(local(repo), ref="", dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert caught.value.reason == "not_found"
    assert not dest.exists()


async def test_bad_ref_is_refused_before_git_runs(source: Source, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    with pytest.raises(RepositoryUrlError) as caught:
        await fetch(local(source.repo), ref="--upload-pack=touch", dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert caught.value.reason == "ref"
    assert not dest.exists()


async def test_non_empty_dest_is_refused_and_left_alone(source: Source, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        await fetch(local(source.repo), ref="", dest=dest, timeout_s=30, max_bytes=50 * MB)
    assert (dest / "keep.txt").read_text() == "mine"


async def test_git_refuses_transports_other_than_the_location_kind(source: Source, tmp_path: Path) -> None:
    """Defence in depth: even a location that skipped `check_repository_url` cannot switch transports."""
    marker = tmp_path / "pwned"
    sneaky = [
        RepositoryLocation(kind="remote", url=f"file://{source.repo}", host="github.com", path=None),
        RepositoryLocation(kind="local", url=f"ext::sh -c touch% {marker}", host=None, path=None),
        RepositoryLocation(kind="local", url="https://github.com/owner/name", host=None, path=None),
    ]
    for location in sneaky:
        dest = tmp_path / "checkout"
        with pytest.raises(FetchError) as caught:
            await fetch(location, ref="", dest=dest, timeout_s=30, max_bytes=50 * MB)
        assert caught.value.reason == "git", location
        assert "not allowed" in str(caught.value)
        assert not dest.exists()
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ limits and stop


@pytest.fixture
def big_source(tmp_path: Path) -> Path:
    repo = new_repo(tmp_path / "big")
    commit_file(repo, "data/random.bin", os.urandom(4 * MB), "4 MB of random data")
    return repo


async def test_size_limit(big_source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        await fetch(local(big_source), ref="", dest=dest, timeout_s=30, max_bytes=1 * MB)
    assert caught.value.reason == "too_large"
    assert time.monotonic() - started < 5
    assert not dest.exists()
    assert processes_mentioning(str(big_source)) == []

    result = await fetch(local(big_source), ref="", dest=dest, timeout_s=30, max_bytes=20 * MB)
    assert result.size_bytes > 4 * MB
    assert (dest / "data" / "random.bin").stat().st_size == 4 * MB


@pytest.fixture
def stuck_source(tmp_path: Path) -> Iterator[Path]:
    """A repository whose blob is a named pipe: git blocks reading it until killed (a stalled transfer)."""
    repo = new_repo(tmp_path / "stuck")
    commit_file(repo, "blob.txt", b"never read\n", "one")
    blob = git(repo, "rev-parse", "HEAD:blob.txt")
    loose = repo / ".git" / "objects" / blob[:2] / blob[2:]
    loose.chmod(0o644)
    loose.unlink()
    os.mkfifo(loose)
    yield repo
    # Should a test fail and leave git waiting, give it a writer so it can end.
    try:
        fd = os.open(loose, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


async def wait_for_no_process(text: str, within: float = 2.0) -> list[int]:
    for _ in range(int(within / 0.05)):
        if not processes_mentioning(text):
            return []
        await asyncio.sleep(0.05)
    return processes_mentioning(text)


async def test_timeout_kills_git(stuck_source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        await fetch(local(stuck_source), ref="", dest=dest, timeout_s=0.5, max_bytes=50 * MB)
    elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout"
    assert 0.5 <= elapsed < 2.5
    assert not dest.exists()
    assert await wait_for_no_process(str(stuck_source)) == []


async def test_should_stop_cancels_within_a_second(stuck_source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    flip_at = time.monotonic() + 0.5
    with pytest.raises(FetchCancelled):
        await fetch(
            local(stuck_source),
            ref="",
            dest=dest,
            timeout_s=60,
            max_bytes=50 * MB,
            should_stop=lambda: time.monotonic() >= flip_at,
        )
    assert time.monotonic() - flip_at < 1.0
    assert not dest.exists()
    assert await wait_for_no_process(str(stuck_source)) == []


async def test_should_stop_before_start(source: Source, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    with pytest.raises(FetchCancelled):
        await fetch(local(source.repo), ref="", dest=dest, timeout_s=30, max_bytes=50 * MB, should_stop=lambda: True)
    assert not dest.exists()


async def test_cancelled_task_kills_git_and_removes_dest(stuck_source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    task = asyncio.ensure_future(fetch(local(stuck_source), ref="", dest=dest, timeout_s=60, max_bytes=50 * MB))
    await asyncio.sleep(0.5)
    assert processes_mentioning(str(stuck_source)) != []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not dest.exists()
    assert await wait_for_no_process(str(stuck_source)) == []


# ------------------------------------------------------------------------------------------------- token


def test_token_is_in_the_environment_only_and_only_for_github(tmp_path: Path) -> None:
    github = check_repository_url("https://github.com/owner/name", allowed_hosts=["github.com"], allow_local=False)
    command = clone_command(github, ref="main", dest=tmp_path / "d", home=tmp_path, github_token=TOKEN)
    argv = " ".join(command.argv)
    assert TOKEN not in argv
    assert B64_TOKEN not in argv
    assert "protocol.allow=never" in argv
    assert "protocol.https.allow=always" in argv
    assert "protocol.file.allow" not in argv
    assert "http.followRedirects=false" in argv
    assert "core.hooksPath=/dev/null" in argv
    assert command.argv[-3:] == ("--", "https://github.com/owner/name", str(tmp_path / "d"))
    assert command.env["GIT_CONFIG_KEY_0"] == "http.https://github.com/.extraHeader"
    assert command.env["GIT_CONFIG_VALUE_0"] == f"Authorization: Basic {B64_TOKEN}"
    assert command.env["GIT_TERMINAL_PROMPT"] == "0"
    assert command.env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert command.env["HOME"] == str(tmp_path)
    for sha_command in sha_fetch_commands(github, sha="a" * 40, dest=tmp_path / "d", home=tmp_path, github_token=TOKEN):
        assert TOKEN not in " ".join(sha_command.argv)
        assert B64_TOKEN not in " ".join(sha_command.argv)

    gitlab = check_repository_url("https://gitlab.com/owner/name", allowed_hosts=["gitlab.com"], allow_local=False)
    env = git_environment(gitlab, home=tmp_path, github_token=TOKEN)
    assert not any(TOKEN in v or B64_TOKEN in v for v in env.values())
    assert "GIT_CONFIG_COUNT" not in env

    local_location = RepositoryLocation(kind="local", url="file:///srv/repo", host=None, path=Path("/srv/repo"))
    command = clone_command(local_location, ref="", dest=tmp_path / "d", home=tmp_path, github_token=TOKEN)
    assert not any(TOKEN in v or B64_TOKEN in v for v in command.env.values())
    assert "protocol.file.allow=always" in command.argv
    assert "http.followRedirects=false" not in command.argv


def test_git_sends_the_header_to_github_only(tmp_path: Path) -> None:
    github = check_repository_url("https://github.com/owner/name", allowed_hosts=["github.com"], allow_local=False)
    env = git_environment(github, home=tmp_path, github_token=TOKEN)

    def header_for(url: str) -> str:
        done = subprocess.run(
            ["git", "config", "--get-urlmatch", "http.extraheader", url], env=env, capture_output=True, text=True
        )
        return done.stdout.strip()

    assert header_for("https://github.com/owner/name") == f"Authorization: Basic {B64_TOKEN}"
    assert header_for("https://github.com.evil.com/owner/name") == ""
    assert header_for("https://evil.com/owner/name") == ""
    assert header_for("http://github.com/owner/name") == ""


def test_bad_token_format_is_refused_without_echo(tmp_path: Path) -> None:
    github = check_repository_url("https://github.com/owner/name", allowed_hosts=["github.com"], allow_local=False)
    with pytest.raises(FetchError) as caught:
        git_environment(github, home=tmp_path, github_token="ghp_abc\r\nX-Evil: 1")
    assert caught.value.reason == "auth"
    assert "ghp_abc" not in str(caught.value)


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (
            "warning: Could not find remote branch x to clone.\nfatal: Remote branch x not found in upstream origin",
            "not_found",
        ),
        ("remote: Repository not found.\nfatal: repository 'https://github.com/o/n/' not found", "not_found"),
        ("fatal: remote error: upload-pack: not our ref 1111111111111111111111111111111111111111", "not_found"),
        ("fatal: couldn't find remote ref refs/heads/x", "not_found"),
        ("fatal: could not read Username for 'https://github.com': terminal prompts disabled", "auth"),
        ("remote: Invalid username or password.\nfatal: Authentication failed for 'https://github.com/o/n/'", "auth"),
        ("fatal: unable to access 'https://github.com/o/n/': The requested URL returned error: 403", "auth"),
        ("fatal: unable to access 'https://github.com/o/n/': Could not resolve host: github.com", "git"),
        ("error: unable to create file a.txt: Permission denied", "git"),
        ("fatal: transport 'file' not allowed", "git"),
    ],
)
def test_classify_git_error(stderr: str, reason: str) -> None:
    assert classify_git_error(stderr) == reason


def test_scrub() -> None:
    text = (
        f"fatal: {TOKEN} Authorization: Basic {B64_TOKEN} https://user:pass@github.com/o/n "
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnop"
    )
    cleaned = scrub(text, [TOKEN, B64_TOKEN])
    assert TOKEN not in cleaned
    assert B64_TOKEN not in cleaned
    assert "user:pass" not in cleaned
    assert "github_pat_" not in cleaned
    assert "fatal:" in cleaned


async def test_token_with_a_local_repository_is_not_used(source: Source, tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    result = await fetch(local(source.repo), ref="main", dest=dest, github_token=TOKEN, timeout_s=30, max_bytes=50 * MB)
    assert result.commit_sha == source.main
    for needle in (TOKEN.encode(), B64_TOKEN.encode(), b"extraHeader", b"extraheader"):
        assert files_containing(dest, needle) == []

    with pytest.raises(FetchError) as caught:
        await fetch(
            local(source.repo), ref="nope", dest=tmp_path / "other", github_token=TOKEN, timeout_s=30, max_bytes=MB
        )
    assert TOKEN not in str(caught.value)


class HangingProxy:
    """An HTTP proxy on loopback that accepts connections, reads the request and never answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests: list[bytes] = []
        self.connected = threading.Event()
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self._clients.append(client)
            client.settimeout(5)
            with contextlib.suppress(OSError):
                self.requests.append(client.recv(4096))
            self.connected.set()

    def close(self) -> None:
        self.server.close()
        for client in self._clients:
            client.close()


async def test_token_never_reaches_argv_of_a_running_remote_clone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A github.com clone (through a loopback proxy that stalls it): the token is in git's environment only."""
    proxy = HangingProxy()
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.port}")
    github = check_repository_url("https://github.com/owner/name", allowed_hosts=["github.com"], allow_local=False)
    seen: dict[str, list[int]] = {}

    def inspect_then_stop() -> bool:
        if not proxy.connected.is_set():
            return False
        git_pids = processes_mentioning("https://github.com/owner/name")
        seen["git"] = git_pids
        seen["token_in_argv"] = processes_mentioning(TOKEN) + processes_mentioning(B64_TOKEN)
        seen["token_in_env"] = [
            pid for pid in git_pids if B64_TOKEN.encode() in Path(f"/proc/{pid}/environ").read_bytes()
        ]
        return True

    dest = tmp_path / "checkout"
    try:
        with pytest.raises(FetchCancelled):
            await fetch(
                github,
                ref="main",
                dest=dest,
                github_token=TOKEN,
                timeout_s=30,
                max_bytes=50 * MB,
                should_stop=inspect_then_stop,
            )
    finally:
        proxy.close()
    assert proxy.requests
    assert proxy.requests[0].startswith(b"CONNECT github.com:443 ")
    assert TOKEN.encode() not in b"".join(proxy.requests)
    assert seen["git"], "git was not running"
    assert seen["token_in_argv"] == []
    assert seen["token_in_env"], "the token should reach git through its environment"
    assert not dest.exists()
    assert await wait_for_no_process("https://github.com/owner/name") == []


# ------------------------------------------------------------------------------------------------- history


def dated_commit(repo: Path, files: dict[str, bytes | None], when: datetime) -> str:
    """Write (or, for None, delete) the files and commit them with author and committer date `when`."""
    for name, content in files.items():
        if content is None:
            git(repo, "rm", "-q", "--", name)
            continue
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(content)
        git(repo, "add", "--", name)
    dates = {"GIT_AUTHOR_DATE": when.isoformat(), "GIT_COMMITTER_DATE": when.isoformat()}
    subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", "-C", str(repo), "commit", "-qm", "c"],
        check=True,
        capture_output=True,
        env={**os.environ, **dates},
    )
    return git(repo, "rev-parse", "HEAD")


def ago(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


@pytest.fixture
def dated_source(tmp_path: Path) -> list[str]:
    """Commits 600, 400, 200, 100 and 10 days old; commit i adds f<i>.py and changes common.py."""
    repo = new_repo(tmp_path / "dated")
    return [
        dated_commit(repo, {f"f{i}.py": b"x = 1\n", "common.py": f"v = {i}\n".encode()}, ago(days))
        for i, days in enumerate((600, 400, 200, 100, 10))
    ]


async def read_churn(dest: Path, window_days: int) -> Churn:
    return await churn(dest, window_days=window_days, max_commits=1000, timeout_s=30, should_stop=lambda: False)


async def test_history_up_to_the_cap_and_churn_within_the_window(dated_source: list[str], tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    await fetch(local(tmp_path / "dated"), ref="", dest=whole, timeout_s=30, max_bytes=50 * MB, depth=1000)
    assert git(whole, "rev-list", "--count", "HEAD") == "5"
    year = await read_churn(whole, 365)
    assert year.commits == 3  # 200, 100 and 10 days old
    assert set(year.files) == {"common.py", "f2.py", "f3.py", "f4.py"}
    assert year.files["common.py"].changes == 3

    capped = tmp_path / "capped"
    await fetch(local(tmp_path / "dated"), ref="", dest=capped, timeout_s=30, max_bytes=50 * MB, depth=2)
    assert git(capped, "rev-list", "--count", "HEAD") == "2"
    assert (capped / ".git" / "shallow").read_text().split() == [dated_source[3]]
    bounded = await read_churn(capped, 365)
    # The boundary commit would seem to add every file of its tree: it is not counted.
    assert bounded.commits == 1
    assert {path: c.changes for path, c in bounded.files.items()} == {"common.py": 1, "f4.py": 1}


async def test_history_of_a_commit_sha(dated_source: list[str], tmp_path: Path) -> None:
    dest = tmp_path / "checkout"
    source = local(tmp_path / "dated")
    result = await fetch(source, ref=dated_source[3], dest=dest, timeout_s=30, max_bytes=50 * MB, depth=3)
    assert result.commit_sha == dated_source[3]
    assert git(dest, "rev-list", "--count", "HEAD") == "3"
    assert (await read_churn(dest, 365)).commits == 2  # 200 and 100 days old; the boundary is 400 days old


async def test_newest_commit_older_than_the_window(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "quiet")
    dated_commit(repo, {"a.py": b"a = 1\n"}, ago(800))
    dated_commit(repo, {"a.py": b"a = 2\n"}, ago(500))
    dest = tmp_path / "checkout"
    await fetch(local(repo), ref="", dest=dest, timeout_s=30, max_bytes=50 * MB, depth=1000)
    counted = await read_churn(dest, 365)
    assert counted.history
    assert counted.commits == 0
    assert counted.files == {}


async def test_history_too_large_falls_back_to_depth_one(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "heavy")
    dated_commit(repo, {"data.bin": os.urandom(3 * MB)}, ago(30))
    head = dated_commit(repo, {"data.bin": None, "app.py": b"x = 1\n"}, ago(20))
    dest = tmp_path / "checkout"
    result = await fetch(local(repo), ref="", dest=dest, timeout_s=30, max_bytes=2 * MB, depth=1000)
    assert result.commit_sha == head
    assert result.size_bytes < 2 * MB
    assert git(dest, "rev-list", "--count", "HEAD") == "1"
    counted = await read_churn(dest, 365)
    assert not counted.history  # a depth-1 clone has no history to read
    assert counted.files == {}
    assert processes_mentioning(str(repo)) == []


async def test_partial_clone_leaves_old_blobs_behind_and_churn_needs_none(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "partial")
    git(repo, "config", "uploadpack.allowFilter", "true")  # git's own server side of `--filter`
    dated_commit(repo, {"old.bin": os.urandom(MB)}, ago(30))
    old_blob = git(repo, "rev-parse", "HEAD:old.bin")
    dated_commit(repo, {"old.bin": None, "app.py": b"x = 1\n"}, ago(20))
    dated_commit(repo, {"app.py": b"x = 2\n"}, ago(10))
    dest = tmp_path / "checkout"
    result = await fetch(local(repo), ref="", dest=dest, timeout_s=30, max_bytes=50 * MB, depth=1000)
    assert result.size_bytes < MB
    assert f"?{old_blob}" in git(dest, "rev-list", "--objects", "--missing=print", "--all").split()
    shutil.rmtree(repo)  # any fetch of a missing object would now fail, and make the log fail with it
    counted = await read_churn(dest, 365)
    assert counted.complete
    assert counted.commits == 3
    assert {path: c.changes for path, c in counted.files.items()} == {"app.py": 2}


def test_history_arguments(tmp_path: Path) -> None:
    github = check_repository_url("https://github.com/owner/name", allowed_hosts=["github.com"], allow_local=False)
    shallow = clone_command(github, ref="main", dest=tmp_path / "d", home=tmp_path).argv
    assert shallow[shallow.index("--depth") + 1] == "1"
    assert "--filter=blob:none" not in shallow
    deep = clone_command(github, ref="main", dest=tmp_path / "d", home=tmp_path, depth=500).argv
    assert deep[deep.index("--depth") + 1] == "500"
    assert "--filter=blob:none" in deep
    _, fetch_sha, _ = sha_fetch_commands(github, sha="a" * 40, dest=tmp_path / "d", home=tmp_path, depth=500)
    assert "--filter=blob:none" in fetch_sha.argv
    with pytest.raises(ValueError, match="depth"):
        clone_command(github, ref="main", dest=tmp_path / "d", home=tmp_path, depth=0)


def test_offline_commands_reach_no_remote(source: Source, tmp_path: Path) -> None:
    command = offline_command(tmp_path, "ls-remote", f"file://{source.repo}", home=tmp_path)
    assert command.env["GIT_ALLOW_PROTOCOL"] == ""
    assert "protocol.allow=never" in command.argv
    assert not [option for option in command.argv if option.endswith(".allow=always")]
    done = subprocess.run(command.argv, env=dict(command.env), capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "not allowed" in done.stderr
