"""Repository URL and git ref rules: what may be handed to `git clone`."""

import subprocess
from pathlib import Path

import pytest

from services.analysis.urls import (
    MAX_REF_LENGTH,
    RepositoryLocation,
    RepositoryUrlError,
    check_ref,
    check_repository_url,
)

HOSTS = ("github.com", "GitLab.com")


@pytest.mark.parametrize(
    ("url", "normalised", "host"),
    [
        ("https://github.com/owner/name", "https://github.com/owner/name", "github.com"),
        ("https://github.com/owner/name.git", "https://github.com/owner/name.git", "github.com"),
        ("https://github.com/owner/name/", "https://github.com/owner/name", "github.com"),
        ("HTTPS://GitHub.COM/Owner/Name", "https://github.com/Owner/Name", "github.com"),
        ("https://github.com:443/owner/name", "https://github.com/owner/name", "github.com"),
        ("https://github.com/org/.github", "https://github.com/org/.github", "github.com"),
        ("https://github.com/a-b_c/d.e~f", "https://github.com/a-b_c/d.e~f", "github.com"),
        ("https://gitlab.com/group/sub/project", "https://gitlab.com/group/sub/project", "gitlab.com"),
    ],
)
def test_accepted_remote_urls(url: str, normalised: str, host: str) -> None:
    location = check_repository_url(url, allowed_hosts=HOSTS, allow_local=False)
    assert location == RepositoryLocation(kind="remote", url=normalised, host=host, path=None)


REFUSED = [
    # Not https.
    ("http://github.com/owner/name", "scheme"),
    ("ssh://git@github.com/owner/name", "scheme"),
    ("git://github.com/owner/name", "scheme"),
    ("ftp://github.com/owner/name", "scheme"),
    ("git+https://github.com/owner/name", "scheme"),
    ("git@github.com:owner/name.git", "scheme"),
    ("github.com:owner/name", "scheme"),
    ("https:github.com/owner/name", "scheme"),
    # Remote helpers and options.
    ("ext::ssh -oProxyCommand=touch%20/tmp/pwned x", "characters"),
    ("ext::sh%20-c%20touch%20/tmp/pwned", "transport"),
    ("fd::17", "transport"),
    ("https::github.com/owner/name", "transport"),
    ("-uhttps://github.com/owner/name", "option"),
    ("--upload-pack=touch /tmp/pwned", "characters"),
    ("--upload-pack=touch", "option"),
    # Host tricks.
    ("https://github.com.evil.com/owner/name", "host_not_allowed"),
    ("https://evil.com/github.com/owner", "host_not_allowed"),
    ("https://evil.com#github.com", "host_not_allowed"),
    ("https://evil.com?github.com", "host_not_allowed"),
    ("https://evilgithub.com/owner/name", "host_not_allowed"),
    ("https://api.github.com/owner/name", "host_not_allowed"),
    ("https://github.com./owner/name", "host_not_allowed"),
    ("https://127.0.0.1/owner/name", "host_not_allowed"),
    ("https://[::1]/owner/name", "host_not_allowed"),
    ("https://xn--gthub-n4a.com/owner/name", "host_not_allowed"),
    ("https://gíthub.com/owner/name", "host_not_allowed"),
    ("https://github%2ecom/owner/name", "host_not_allowed"),
    ("https:///owner/name", "host_not_allowed"),
    ("https://localhost/owner/name", "host_not_allowed"),
    # Credentials.
    ("https://github.com@evil.com/owner/name", "credentials"),
    ("https://user@github.com/owner/name", "credentials"),
    ("https://user:ghp_secret@github.com/owner/name", "credentials"),
    ("https://x-access-token:t@github.com/owner/name", "credentials"),
    ("https://:@github.com/owner/name", "credentials"),
    # Ports.
    ("https://github.com:22/owner/name", "port"),
    ("https://github.com:8443/owner/name", "port"),
    ("https://github.com:/owner/name", "port"),
    ("https://github.com:0443/owner/name", "port"),
    # Query and fragment.
    ("https://github.com/owner/name?ref=main", "query"),
    ("https://github.com/owner/name?", "query"),
    ("https://github.com/owner/name#main", "fragment"),
    ("https://github.com/owner/name#", "fragment"),
    # Paths.
    ("https://github.com", "path"),
    ("https://github.com/", "path"),
    ("https://github.com/owner", "path"),
    ("https://github.com/owner/", "path"),
    ("https://github.com//name", "path"),
    ("https://github.com/owner//name", "path"),
    ("https://github.com/owner/../name", "path"),
    ("https://github.com/owner/name/..", "path"),
    ("https://github.com/../../etc/passwd", "path"),
    ("https://github.com/owner/./name", "path"),
    ("https://github.com/owner/%2e%2e/name", "path"),
    ("https://github.com/owner/na%20me", "path"),
    ("https://github.com/owner/na;me", "path"),
    ("https://github.com/owner/näme", "path"),
    ("https://github.com/" + "/".join(["a"] * 21), "path"),
    ("https://github.com/owner/" + "n" * 256, "path"),
    # Characters and length.
    ("", "empty"),
    ("https://github.com/owner/name\n", "characters"),
    ("https://github.com/owner/name\r\nHost: evil.com", "characters"),
    ("https://github.com/owner/na me", "characters"),
    ("https://github.com/owner/name\x00", "characters"),
    ("https://github.com/owner/name\t", "characters"),
    (" https://github.com/owner/name", "characters"),
    ("https://github.com\\@evil.com/owner/name", "characters"),
    ("https://github.com/owner/name\u200b", "characters"),
    ("https://github.com/owner/name\u202e", "characters"),
    ("https://github.com/owner/" + "n" * 2048, "length"),
    # Relative paths.
    ("owner/name", "relative"),
    ("github.com/owner/name", "relative"),
    ("./repo", "relative"),
    ("../repo", "relative"),
    ("~/repo", "relative"),
    ("repo", "relative"),
    # Local, while not allowed.
    ("/srv/repos/project", "local_not_allowed"),
    ("file:///srv/repos/project", "local_not_allowed"),
    ("FILE:///srv/repos/project", "local_not_allowed"),
    ("file://evil.com/srv/repos/project", "local_not_allowed"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_refused_urls(url: str, reason: str) -> None:
    with pytest.raises(RepositoryUrlError) as caught:
        check_repository_url(url, allowed_hosts=HOSTS, allow_local=False)
    assert caught.value.reason == reason


@pytest.mark.parametrize(("url", "reason"), [(u, r) for u, r in REFUSED if r != "local_not_allowed"])
def test_remote_refusals_do_not_depend_on_allow_local(url: str, reason: str) -> None:
    with pytest.raises(RepositoryUrlError) as caught:
        check_repository_url(url, allowed_hosts=HOSTS, allow_local=True)
    assert caught.value.reason == reason


def test_error_messages_do_not_repeat_the_url() -> None:
    url = "https://user:ghp_supersecret@github.com/owner/name"
    with pytest.raises(RepositoryUrlError) as caught:
        check_repository_url(url, allowed_hosts=HOSTS, allow_local=False)
    assert "ghp_supersecret" not in str(caught.value)
    assert caught.value.reason == "credentials"
    assert isinstance(caught.value, ValueError)


def test_empty_allow_list_refuses_every_host() -> None:
    with pytest.raises(RepositoryUrlError) as caught:
        check_repository_url("https://github.com/owner/name", allowed_hosts=(), allow_local=False)
    assert caught.value.reason == "host_not_allowed"


# ------------------------------------------------------------------------------------------------- local


def _git_init(path: Path, *extra: str) -> Path:
    subprocess.run(["git", "init", "-q", *extra, str(path)], check=True)
    return path


def test_local_work_tree_path_and_file_url(tmp_path: Path) -> None:
    repo = _git_init(tmp_path / "repo")
    for url in (str(repo), f"file://{repo}", f"FILE://{repo}", f"{repo}/", f"{repo}/.git/.."):
        location = check_repository_url(url, allowed_hosts=HOSTS, allow_local=True)
        assert location == RepositoryLocation(kind="local", url=f"file://{repo.resolve()}", host=None, path=repo)


def test_local_bare_repository(tmp_path: Path) -> None:
    repo = _git_init(tmp_path / "bare.git", "--bare")
    location = check_repository_url(str(repo), allowed_hosts=HOSTS, allow_local=True)
    assert location.kind == "local"
    assert location.path == repo.resolve()


def test_local_symlinks_are_resolved(tmp_path: Path) -> None:
    repo = _git_init(tmp_path / "repo")
    link = tmp_path / "link"
    link.symlink_to(repo)
    location = check_repository_url(str(link), allowed_hosts=HOSTS, allow_local=True)
    assert location.path == repo.resolve()
    assert location.url == f"file://{repo.resolve()}"


def test_local_refused_when_not_allowed(tmp_path: Path) -> None:
    repo = _git_init(tmp_path / "repo")
    for url in (str(repo), f"file://{repo}"):
        with pytest.raises(RepositoryUrlError) as caught:
            check_repository_url(url, allowed_hosts=HOSTS, allow_local=False)
        assert caught.value.reason == "local_not_allowed"


def test_local_refusals(tmp_path: Path) -> None:
    repo = _git_init(tmp_path / "repo")
    plain = tmp_path / "plain"
    plain.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    (tmp_path / "per%cent").mkdir()
    cases = {
        str(tmp_path / "missing"): "local_not_found",
        str(a_file): "local_not_found",
        str(plain): "not_a_repository",
        f"file://{plain}": "not_a_repository",
        f"file://localhost{repo}": "local_path",
        f"file:{repo}": "local_path",
        f"file:/{repo}": "local_path",
        "file://": "local_path",
        f"/{repo}": "local_path",
        f"file://{repo}?x=1": "query",
        f"file://{repo}#main": "fragment",
        f"file://{tmp_path}/per%25cent": "local_path",
        str(tmp_path / "per%cent"): "local_path",
        "repo": "relative",
        "./repo": "relative",
        "-" + str(repo): "option",
    }
    for url, reason in cases.items():
        with pytest.raises(RepositoryUrlError) as caught:
            check_repository_url(url, allowed_hosts=HOSTS, allow_local=True)
        assert caught.value.reason == reason, url


def test_location_is_frozen() -> None:
    location = check_repository_url("https://github.com/o/n", allowed_hosts=HOSTS, allow_local=False)
    with pytest.raises(AttributeError):
        location.url = "https://evil.com/o/n"  # type: ignore[misc]


# -------------------------------------------------------------------------------------------------- refs

GOOD_REFS = [
    "",
    "main",
    "feature/x",
    "release-1.2",
    "v1.0.0",
    "refs/heads/main",
    "refs/tags/v1",
    "a" * MAX_REF_LENGTH,
    "0123456789abcdef0123456789abcdef01234567",
    "user@host",
    "x.lock.y",
]
BAD_REFS = [
    "-main",
    "--upload-pack=x",
    "a..b",
    "..",
    "a b",
    "a\tb",
    "a\nb",
    "a\x00b",
    "a\x7fb",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[b",
    "a\\b",
    "main.lock",
    "feature/x.lock/y",
    "main/",
    "/main",
    "a//b",
    ".hidden",
    "feature/.hidden",
    "main.",
    "@",
    "a@{1}",
    "a" * (MAX_REF_LENGTH + 1),
    "brañch",
]


@pytest.mark.parametrize("ref", GOOD_REFS)
def test_good_refs(ref: str) -> None:
    assert check_ref(ref) == ref


@pytest.mark.parametrize("ref", BAD_REFS)
def test_bad_refs(ref: str) -> None:
    with pytest.raises(RepositoryUrlError) as caught:
        check_ref(ref)
    assert caught.value.reason == "ref"


@pytest.mark.parametrize("ref", [r for r in GOOD_REFS if r] + [r for r in BAD_REFS if "\x00" not in r])
def test_refs_agree_with_git_check_ref_format(ref: str) -> None:
    """Whatever we accept, git accepts too (we are stricter: leading '-', non-ASCII, length)."""
    ours = True
    try:
        check_ref(ref)
    except RepositoryUrlError:
        ours = False
    git = subprocess.run(["git", "check-ref-format", "--allow-onelevel", ref], check=False).returncode == 0
    if ours:
        assert git
    elif ref not in ("-main", "--upload-pack=x", "brañch", "a" * (MAX_REF_LENGTH + 1)):
        assert not git
