"""Rules for the repository URLs and git refs that tenants may ask us to analyse.

Pure checks, no network: `check_repository_url` decides whether a URL may be handed to `git clone` and returns
its normalised form; `check_ref` does the same for a branch or tag name.

Decisions:

* Remote repositories: only `https://` (scheme case-insensitive), a host equal to one of `allowed_hosts` (compared
  lowercased, exactly: no suffix or prefix matching, no trailing dot, no IP literals, ASCII letters, digits, `-`
  and `.` only), and no port other than the default one (`:443` is accepted and dropped, any other port is
  refused: an allowed host's other ports are not what the allow-list means).
* No user info (`user@`, `user:token@`) anywhere in the authority, no query, no fragment, no percent-encoding (it
  could hide `..` or `/`), path segments of ASCII letters, digits and `._~-` only, at least two segments
  (owner/name), no empty segment and no `..` anywhere. The normalised URL is `https://<host>/<segments>`: host
  lowercased, default port and trailing slashes dropped, case and a `.git` suffix of the path kept (some servers
  need it).
* Local repositories (only with `allow_local`, meant for development and tests): an absolute path or a
  `file:///absolute/path` URL naming an existing directory that is a git work tree (has `.git`) or a bare
  repository (`HEAD`, `objects/`, `refs/`). Symlinks are resolved; the normalised URL is `file://<resolved path>`
  (not percent-encoded) because git needs `file://` to honour `--depth`.
* Everything else is refused: other schemes (`http`, `ssh`, `git`, `ftp`, ...), scp-like `host:path`, the
  `<transport>::<address>` form (`ext::`, `fd::`, ...), anything starting with `-`, control characters,
  whitespace, backslashes, relative paths.

Error messages never repeat the URL (it may hold credentials); `RepositoryUrlError.reason` says what was wrong.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

MAX_URL_LENGTH = 2048
MAX_HOST_LENGTH = 253
MAX_SEGMENT_LENGTH = 255
MAX_SEGMENTS = 20
MAX_REF_LENGTH = 200

UrlReason = Literal[
    "empty",
    "length",
    "characters",
    "option",
    "transport",
    "scheme",
    "relative",
    "credentials",
    "host_not_allowed",
    "port",
    "query",
    "fragment",
    "path",
    "local_not_allowed",
    "local_path",
    "local_not_found",
    "not_a_repository",
    "ref",
]

_MESSAGES: dict[str, str] = {
    "empty": "the repository URL is empty",
    "length": "the repository URL is too long",
    "characters": "the repository URL contains whitespace, control characters or backslashes",
    "option": "the repository URL must not start with '-'",
    "transport": "git remote-helper addresses ('<transport>::...') are not accepted",
    "scheme": "only https:// repository URLs are accepted",
    "relative": "relative paths are not accepted; use an https:// URL",
    "credentials": "the repository URL must not contain a user name or credentials",
    "host_not_allowed": "the repository host is not allowed",
    "port": "the repository URL must not name a port other than 443",
    "query": "the repository URL must not contain a query",
    "fragment": "the repository URL must not contain a fragment",
    "path": "the repository URL path must be /owner/name (letters, digits, '.', '_', '~', '-'; no '..')",
    "local_not_allowed": "local repositories are not accepted",
    "local_path": "a local repository must be an absolute path or a file:/// URL",
    "local_not_found": "the local repository directory does not exist",
    "not_a_repository": "the local directory is not a git repository",
    "ref": "the git ref is not a valid branch or tag name",
}


class RepositoryUrlError(ValueError):
    """A repository URL or ref was refused; `reason` is a short machine-readable word (see `UrlReason`)."""

    def __init__(self, reason: UrlReason, message: str | None = None) -> None:
        self.reason: UrlReason = reason
        super().__init__(message or _MESSAGES[reason])


@dataclass(frozen=True, slots=True)
class RepositoryLocation:
    """Where to clone from: a checked, normalised URL (`https://...` or `file:///...`)."""

    kind: Literal["remote", "local"]
    url: str
    host: str | None
    path: Path | None


_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._~-]+")


def _has_bad_characters(text: str) -> bool:
    return any(ch.isspace() or ch == "\\" or unicodedata.category(ch).startswith("C") for ch in text)


def check_repository_url(url: str, *, allowed_hosts: Collection[str], allow_local: bool) -> RepositoryLocation:
    """Check a repository URL given by a tenant; return where to clone from or raise `RepositoryUrlError`."""
    if not url:
        raise RepositoryUrlError("empty")
    if len(url) > MAX_URL_LENGTH:
        raise RepositoryUrlError("length")
    if _has_bad_characters(url):
        raise RepositoryUrlError("characters")
    if url.startswith("-"):
        raise RepositoryUrlError("option")
    if _TRANSPORT_RE.match(url):
        raise RepositoryUrlError("transport")
    if url.startswith("/") or url[:5].lower() == "file:":
        if not allow_local:
            raise RepositoryUrlError("local_not_allowed")
        return _check_local(url)
    scheme = _SCHEME_RE.match(url)
    if scheme is None:
        # `git@github.com:owner/name` (scp-like) and `host:path` have a colon before any slash.
        head = url.split("/", 1)[0]
        raise RepositoryUrlError("scheme" if ":" in head else "relative")
    if scheme.group(1).lower() != "https":
        raise RepositoryUrlError("scheme")
    return _check_https(url[scheme.end() :], allowed_hosts)


def _check_https(rest: str, allowed_hosts: Collection[str]) -> RepositoryLocation:
    """`rest` is what follows `https://`: authority, path, maybe query and fragment."""
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos != -1:
            end = min(end, pos)
    authority, remainder = rest[:end], rest[end:]
    if "@" in authority:
        raise RepositoryUrlError("credentials")
    host, colon, port = authority.partition(":")
    host = host.lower()
    allowed = {h.lower() for h in allowed_hosts}
    if len(host) > MAX_HOST_LENGTH or not _HOST_RE.fullmatch(host) or host not in allowed:
        raise RepositoryUrlError("host_not_allowed")
    if colon and port != "443":
        raise RepositoryUrlError("port")
    if "#" in remainder:
        raise RepositoryUrlError("fragment")
    if "?" in remainder:
        raise RepositoryUrlError("query")
    path = remainder.rstrip("/")
    if not path.startswith("/") or ".." in path:
        raise RepositoryUrlError("path")
    segments = path[1:].split("/")
    if (
        len(segments) < 2
        or len(segments) > MAX_SEGMENTS
        or any(len(s) > MAX_SEGMENT_LENGTH or not _SEGMENT_RE.fullmatch(s) or s == "." for s in segments)
    ):
        raise RepositoryUrlError("path")
    return RepositoryLocation(kind="remote", url=f"https://{host}/{'/'.join(segments)}", host=host, path=None)


def _check_local(url: str) -> RepositoryLocation:
    if url[:5].lower() == "file:":
        rest = url[5:]
        if not rest.startswith("///"):
            # `file:/x`, `file://host/x`, `file:x`: only `file:///absolute/path` is accepted.
            raise RepositoryUrlError("local_path")
        if "#" in rest:
            raise RepositoryUrlError("fragment")
        if "?" in rest:
            raise RepositoryUrlError("query")
        raw = rest[2:]
    else:
        raw = url
    # `%` is refused too: git may or may not decode it in a `file://` URL.
    if not raw.startswith("/") or raw.startswith("//") or "%" in raw:
        raise RepositoryUrlError("local_path")
    try:
        resolved = Path(raw).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise RepositoryUrlError("local_not_found") from exc
    if not resolved.is_dir():
        raise RepositoryUrlError("local_not_found")
    if not _is_git_repository(resolved):
        raise RepositoryUrlError("not_a_repository")
    return RepositoryLocation(kind="local", url=f"file://{resolved.as_posix()}", host=None, path=resolved)


def _is_git_repository(directory: Path) -> bool:
    if (directory / ".git").exists():
        return True
    return (directory / "HEAD").is_file() and (directory / "objects").is_dir() and (directory / "refs").is_dir()


_REF_FORBIDDEN = frozenset(" ~^:?*[\\")


def check_ref(ref: str) -> str:
    """Check a branch or tag name (or a full `refs/...` name, or a commit sha) before it is passed to git.

    Follows `git check-ref-format --allow-onelevel`, and further refuses a leading `-`, non-ASCII characters and
    names longer than `MAX_REF_LENGTH`. The empty string means "the default branch" and is returned unchanged.
    """
    if ref == "":
        return ref
    if (
        len(ref) > MAX_REF_LENGTH
        or ref.startswith(("-", "/"))
        or ref.endswith(("/", ".", ".lock"))
        or ref == "@"
        or ".." in ref
        or "//" in ref
        or "@{" in ref
        or any(ord(ch) < 0x21 or ord(ch) > 0x7E or ch in _REF_FORBIDDEN for ch in ref)
    ):
        raise RepositoryUrlError("ref")
    for component in ref.split("/"):
        if component.startswith(".") or component.endswith(".lock"):
            raise RepositoryUrlError("ref")
    return ref
