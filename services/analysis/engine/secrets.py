"""The secret-scanning step: credentials committed to a repository, found by their known token formats and by
high-entropy values assigned to names like `password` or `api_key`.

`scan_secrets(root, files)` reads each listed file (relative '/'-separated paths under `root`) and reports one
`SecretFinding` per secret occurrence. The secret itself is never stored, logged or returned: a finding carries a
redacted form (at most the first 4 characters, which for the provider formats are the public prefix, then `…` and
the length) and a fingerprint.

Rules (`RULES`; severity in brackets):

* `aws-access-key-id` [high]: `AKIA`/`ASIA` + 16 upper-case letters or digits.
* `aws-secret-access-key` [critical]: 40 base64 characters assigned to `aws_secret_access_key` (any case, `_`
  optional) with `=`, `:`, `:=` or `=>`; the value needs an entropy of at least 3.5 bits per character.
* `github-token` [critical]: `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` + 36 or more letters and digits;
  `github_pat_` + 60 or more letters, digits and `_` (fine-grained tokens).
* `repolens-pat` [critical]: `rlp_` + 30 letters and digits + a 6-character checksum of them (a RepoLens personal
  access token: a look-alike whose checksum does not match is not reported).
* `gitlab-token` [critical]: `glpat-` + 20 or more letters, digits, `_`, `-`.
* `slack-token` [high]: `xoxa-`, `xoxb-`, `xoxp-`, `xoxr-`, `xoxs-` + 10 or more letters, digits, `-`.
* `slack-webhook` [high]: `https://hooks.slack.com/services|workflows|triggers/…` (the secret is the path).
* `stripe-live-key` [critical]: `sk_live_`/`rk_live_` + 20 or more letters and digits (test keys are not secret).
* `google-api-key` [medium]: `AIza` + 35 letters, digits, `_`, `-` (often meant to be public, but restricted).
* `private-key` [critical]: a `-----BEGIN … PRIVATE KEY-----` line followed, before `-----END`, by at least 64
  base64 characters: lines made of base64 only (around them white space, quotes, `,`, `+`, `;` of a string
  literal are ignored; `Proc-Type:`-style headers and blank lines are skipped), on the following lines or on the
  same line after literal `\\n` escapes (a key in a JSON string); a header alone (code that parses keys) is not a
  finding. The secret is the key body.
* `jwt` [medium]: three base64url parts, the first starting `eyJ` and decoding to a JSON object with `alg` or
  `typ`, each part at least 10 characters (the signature 16).
* `generic-secret` [medium]: a quoted value (`"…"`, `'…'` or backquotes, no white space) assigned with `=`, `:`,
  `:=` or `=>` to a name containing `password`, `passwd`, `secret`, `token`, `api_key`/`apikey`/`api-key`,
  `access_key`, `auth_key`, `private_key` or `credential`, where the value is at least 16 characters long
  (`GENERIC_MIN_LENGTH`), has a Shannon entropy of at least 3.5 bits per character (`GENERIC_MIN_ENTROPY`; a
  random 16-character alphanumeric string has about 3.7 to 4, `correcthorsebattery` 3.1, `my_database_password`
  3.5, `SuperSecret2024!` 3.3) and holds a digit or both upper- and lower-case letters (so identifiers, words and
  constant names such as `requires_csrf_token` or `django-insecure-` are not reported). A value some other rule
  already reported is not reported again.
  In configuration files (`CONFIG_PATHS`: `.env*`, `*.env`, `*.ini`, `*.cfg`, `*.conf`, `*.properties`,
  `*.yaml`, `*.yml`, `*.toml`) the value may also be unquoted, running to the end of the line (or to a ` #`
  comment) and made of letters, digits and `+/=_.~!@$%^&*-`.

A file is scanned line by line, and only the lines that can match: every rule has literal keywords (`AKIA`,
`ghp_`, `password`, ...) that any match contains, all of them are located in one Aho-Corasick pass over the
file's lower-cased bytes (a case-sensitive keyword must then be spelled as the rule spells it), and the rule's
pattern, compiled once at import, runs on those lines alone. No pattern matches across a line break (only
`private-key` then reads the following lines for the key body).

Not reported (placeholders, recognised before the entropy tests; counted in `skipped["placeholder"]`): values
containing `changeme`, `change_me`, `change-me`, `example`, `placeholder`, `dummy`, `redacted`, `your_`,
`your-`, `<`, `>`, `${`, `{{`, `%s`, `%(`, `$(` or `...` (any case), `xxxx` or `XXXX`, or starting with `your`
(`Your`, `YOUR`, also after a `prefix_` like `ghp_`), and values whose last three quarters consist of at most two
distinct characters (`ghp_000…`, `AKIAXXXX…`). Short or case-insensitive fragments (`xxx`, `your` anywhere) would
turn up by chance in about one random token in 500.

Test code (`is_test_path`: a path segment `test`, `tests`, `testing`, `__tests__`, `testdata`, `fixtures`,
`fixture`, `__fixtures__`, `__snapshots__`, `spec`, `specs`, `e2e`, or a file named `test_*`, `*_test.*`,
`*.test.*`, `*.spec.*`, `conftest.py`): the `generic-secret` rule is not applied there (passwords in tests are
almost always throw-away values; counted in `skipped["test_generic"]`), and the provider-format rules report with
their severity lowered by one level (critical → high → medium → low), because a value with a real provider format
in a fixture may still be a live credential.

Files skipped, counted in `SecretScan.skipped` by reason: `lock_file` (inventory's `GENERATED_NAMES`: lock files
and similar; full of hashes), `binary` (a NUL byte in the first 8 KiB), `too_large` (more than `max_file_bytes`),
`not_regular` (missing, a directory, a symbolic link, a device), `outside_root` (an absolute path, a `..` segment,
or a path leading out of `root` through a symbolic link), `unreadable`.

Fingerprints: the sha256 (hex) of a per-rule constant salt, the rule id, the path and the secret value. They do
not depend on the line, so a finding keeps its fingerprint when the secret moves within its file. For the provider
formats and keys the value is high-entropy, so the hash cannot be inverted; for `generic-secret` values (which can
be guessable passwords) the salt defeats precomputed tables, not a dictionary attack by someone who knows this
code and the path: treat fingerprints as confidential if the values may be weak.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ahocorasick_rs import BytesAhoCorasick

from libs.common import access_tokens
from services.analysis.engine.findings import SEVERITIES
from services.analysis.engine.inventory import GENERATED_NAMES

__all__ = [
    "CONFIG_PATHS",
    "GENERIC_MIN_ENTROPY",
    "GENERIC_MIN_LENGTH",
    "RULES",
    "SEVERITIES",
    "Rule",
    "SecretFinding",
    "SecretScan",
    "is_placeholder",
    "is_test_path",
    "scan_file",
    "scan_secrets",
    "shannon_entropy",
]

GENERIC_MIN_LENGTH = 16
GENERIC_MIN_ENTROPY = 3.5  # bits per character
_AWS_SECRET_MIN_ENTROPY = 3.5
_PRIVATE_KEY_MIN_BODY = 64
_PRIVATE_KEY_MAX_LINES = 200
_BINARY_PROBE = 8192
_REVEAL = 4


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    severity: str
    pattern: re.Pattern[str]  # group "value" is the secret
    keywords: tuple[str, ...]  # one must occur in the text (in `lower` case if `lowered`) for the rule to run
    lowered: bool = False
    min_entropy: float = 0.0
    paths: re.Pattern[str] | None = None  # when set, the rule runs only on the paths it matches
    valid: Callable[[str], bool] | None = None  # when set, a value it refuses is a look-alike, not a secret

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity}


_NOT_B64URL_BEFORE = r"(?<![A-Za-z0-9_-])"
_NOT_B64URL_AFTER = r"(?![A-Za-z0-9_-])"
_ASSIGN = r"""["']?\s*(?::=|=>|[:=])\s*"""
_KEY_NAME = (
    r"(?i:(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|auth[_-]?key"
    r"|private[_-]?key|credential)[A-Za-z0-9_.-]*)"
)
# Every spelling `_KEY_NAME` admits, so that only lines that can match are tried (a bare "key" is on most lines).
_GENERIC_KEYWORDS = (
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    *(f"{word}{sep}key" for word in ("api", "access", "auth", "private") for sep in ("", "_", "-")),
)
# Configuration files, where values are often written unquoted: dotenv, INI, properties, YAML, TOML.
CONFIG_PATHS = re.compile(r"(?:^|.*/)(?:\.env[^/]*|[^/]*\.(?:env|ini|cfg|conf|properties|ya?ml|toml))", re.IGNORECASE)

RULES: tuple[Rule, ...] = (
    Rule(
        "aws-access-key-id",
        "high",
        re.compile(r"(?<![A-Za-z0-9])(?P<value>(?:AKIA|ASIA)[0-9A-Z]{16})(?![A-Za-z0-9])"),
        ("AKIA", "ASIA"),
    ),
    Rule(
        "aws-secret-access-key",
        "critical",
        re.compile(
            r"(?i:aws_?secret_?(?:access_?)?key)" + _ASSIGN + r"""["']?(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"""
        ),
        ("aws",),
        lowered=True,
        min_entropy=_AWS_SECRET_MIN_ENTROPY,
    ),
    Rule(
        "github-token",
        "critical",
        re.compile(
            r"(?<![A-Za-z0-9_])(?P<value>gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})(?![A-Za-z0-9_])"
        ),
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    Rule(  # ours: the checksum tells a real token from a look-alike
        "repolens-pat",
        "critical",
        re.compile(r"(?<![A-Za-z0-9_])(?P<value>rlp_[A-Za-z0-9]{36})(?![A-Za-z0-9_])"),
        ("rlp_",),
        valid=access_tokens.looks_like_token,
    ),
    Rule(
        "gitlab-token",
        "critical",
        re.compile(_NOT_B64URL_BEFORE + r"(?P<value>glpat-[A-Za-z0-9_-]{20,255})" + _NOT_B64URL_AFTER),
        ("glpat-",),
    ),
    Rule(
        "slack-token",
        "high",
        re.compile(r"(?<![A-Za-z0-9-])(?P<value>xox[abprs]-[A-Za-z0-9-]{10,250})(?![A-Za-z0-9-])"),
        ("xox",),
    ),
    Rule(
        "slack-webhook",
        "high",
        re.compile(r"https://hooks\.slack\.com/(?P<value>(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,})"),
        ("hooks.slack.com",),
    ),
    Rule(
        "stripe-live-key",
        "critical",
        re.compile(r"(?<![A-Za-z0-9_])(?P<value>[sr]k_live_[A-Za-z0-9]{20,247})(?![A-Za-z0-9_])"),
        ("k_live_",),
    ),
    Rule(
        "google-api-key",
        "medium",
        re.compile(_NOT_B64URL_BEFORE + r"(?P<value>AIza[0-9A-Za-z_-]{35})" + _NOT_B64URL_AFTER),
        ("AIza",),
    ),
    Rule(
        "private-key",
        "critical",
        re.compile(r"-----BEGIN[ A-Z0-9]{0,30} PRIVATE KEY(?: BLOCK)?-----(?P<value>)"),
        ("PRIVATE KEY",),
    ),
    Rule(
        "jwt",
        "medium",
        re.compile(
            _NOT_B64URL_BEFORE
            + r"(?P<value>(?P<header>eyJ[A-Za-z0-9_-]{7,})\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{16,})"
            + r"(?![A-Za-z0-9_.-])"
        ),
        ("eyJ",),
    ),
    Rule(
        "generic-secret",
        "medium",
        re.compile(
            _KEY_NAME
            + _ASSIGN
            + r"""(?P<q>["'`])(?P<value>[^"'`\s\\]{"""
            + str(GENERIC_MIN_LENGTH)
            + r""",500})(?P=q)"""
        ),
        _GENERIC_KEYWORDS,
        lowered=True,
        min_entropy=GENERIC_MIN_ENTROPY,
    ),
    Rule(  # the same, unquoted, in configuration files: the value runs to the end of the line or a ` #` comment
        "generic-secret",
        "medium",
        re.compile(
            _KEY_NAME
            + _ASSIGN
            + r"(?P<value>[A-Za-z0-9+/=_.~!@$%^&*-]{"
            + str(GENERIC_MIN_LENGTH)
            + r",500})\s*(?:\s#.*)?$"
        ),
        _GENERIC_KEYWORDS,
        lowered=True,
        min_entropy=GENERIC_MIN_ENTROPY,
        paths=CONFIG_PATHS,
    ),
)
_GENERIC = "generic-secret"

_PLACEHOLDER_PARTS = (  # matched in the lower-cased value
    "changeme",
    "change_me",
    "change-me",
    "example",
    "placeholder",
    "dummy",
    "redacted",
    "your_",
    "your-",
    "<",
    ">",
    "${",
    "{{",
    "%s",
    "%(",
    "$(",
    "...",
)
# Matched case-sensitively: in random base62 tokens `xxx` in any case turns up once in ~500, `xxxx` or `XXXX` once
# in ~100 000, a leading `your` once in ~450 000.
_PLACEHOLDER_CASED = re.compile(r"xxxx|XXXX|^(?:[a-z]+_)?(?:your|Your|YOUR)")
_TEST_SEGMENTS = frozenset(
    {
        "test",
        "tests",
        "testing",
        "__tests__",
        "testdata",
        "fixtures",
        "fixture",
        "__fixtures__",
        "__snapshots__",
        "spec",
        "specs",
        "e2e",
    }
)
_TEST_FILE = re.compile(r"^(?:test_.*|.*_test\.[^.]+|.*\.(?:test|spec)\.[^.]+|conftest\.py)$", re.IGNORECASE)
_LOWER_SEVERITY = {"critical": "high", "high": "medium", "medium": "low", "low": "low"}
_B64_LINE = re.compile(r"[A-Za-z0-9+/=]+")
_PEM_HEADER = re.compile(r"[A-Za-z-]+: ")  # `Proc-Type: 4,ENCRYPTED` in encrypted PEM keys
_END_MARKER = "-----END"


@dataclass(frozen=True, slots=True)
class SecretFinding:
    rule_id: str
    severity: str
    path: str  # relative to the root, '/'-separated
    line: int  # 1-based
    column: int  # 1-based, where the secret starts (for `private-key`: the BEGIN line's start)
    redacted: str  # at most the first 4 characters, '…' and the length: never the secret
    fingerprint: str  # sha256 hex of (salt, rule_id, path, secret), see the module's docstring

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "severity": self.severity,
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "redacted": self.redacted,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True, slots=True)
class SecretScan:
    findings: list[SecretFinding]  # by path, line, column, rule
    files_scanned: int
    skipped: dict[str, int]  # reason -> count, see the module's docstring

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: {"findings": [...], "files_scanned": n, "skipped": {...}}."""
        return {
            "findings": [f.to_dict() for f in self.findings],
            "files_scanned": self.files_scanned,
            "skipped": dict(self.skipped),
        }


def shannon_entropy(value: str) -> float:
    """Shannon entropy of `value`'s characters, in bits per character (0.0 for an empty string)."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def is_placeholder(value: str) -> bool:
    """True for values that stand for a secret rather than being one (see the module's docstring)."""
    lowered = value.lower()
    if any(part in lowered for part in _PLACEHOLDER_PARTS) or _PLACEHOLDER_CASED.search(value):
        return True
    return len(set(value[len(value) // 4 :])) <= 2


def is_test_path(path: str) -> bool:
    """True if `path` (relative, '/'-separated) looks like test code or test data."""
    parts = path.split("/")
    if any(part.lower() in _TEST_SEGMENTS for part in parts[:-1]):
        return True
    return bool(_TEST_FILE.match(parts[-1]))


def scan_secrets(
    root: Path,
    files: Iterable[str],
    *,
    should_stop: Callable[[], bool] = lambda: False,
    max_file_bytes: int = 1_000_000,
) -> SecretScan:
    """Scan `files` (paths relative to `root`, '/'-separated) for secrets, the way the scan step does (engine/scan.py:
    its per-file path). A path that leaves the tree or is no regular file is skipped. Raises `Cancelled` soon after
    `should_stop()` turns True (it is asked before each file)."""
    from services.analysis.engine import scan  # the scan step imports this module
    from services.analysis.engine.scan import Item

    root_real = os.path.realpath(root)
    skipped: dict[str, int] = {}
    items: list[Item] = []
    for rel in files:
        reason = _unsafe(root_real, rel)
        if not reason:
            items.append((rel, None, os.lstat(os.path.join(root_real, rel)).st_size, False, True))
        else:
            skipped[reason] = skipped.get(reason, 0) + 1
    part = scan.scan_files(root_real, items, 10**9, should_stop, step_max_file_bytes=max_file_bytes)
    for reason, count in part.secrets_skipped.items():
        skipped[reason] = skipped.get(reason, 0) + count
    findings = sorted(part.secrets, key=lambda f: (f.path, f.line, f.column, f.rule_id))
    return SecretScan(findings=findings, files_scanned=part.secrets_scanned, skipped=skipped)


def scan_file(
    rel: str, data: bytes | str, skipped: dict[str, int], max_file_bytes: int = 1_000_000
) -> list[SecretFinding] | None:
    """The findings of one file from its bytes (read up to `max_file_bytes` + 1, or a skip reason instead), or
    None when it is skipped (its reason counted in `skipped`). `rel` must name a regular file inside the tree,
    reached without following a symbolic link (the engine's own walk gives only those)."""
    reason = data if isinstance(data, str) else _skip_reason(rel, data, max_file_bytes)
    if reason:
        skipped[reason] = skipped.get(reason, 0) + 1
        return None
    assert isinstance(data, bytes)
    return _scan_text(rel, data, skipped)


def _unsafe(root_real: str, rel: str) -> str:
    """Why a path given by a caller must not be read ("" when it may): outside the tree, or not a regular file."""
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or os.path.isabs(rel):
        return "outside_root"
    full = os.path.join(root_real, *parts)
    try:
        st = os.lstat(full)
    except OSError:
        return "not_regular"
    if not stat.S_ISREG(st.st_mode):
        return "not_regular"
    if os.path.commonpath([root_real, os.path.realpath(full)]) != root_real:
        return "outside_root"
    return ""


def _skip_reason(rel: str, data: bytes, max_bytes: int) -> str:
    if rel.rsplit("/", 1)[-1] in GENERATED_NAMES:
        return "lock_file"
    if len(data) > max_bytes:
        return "too_large"
    if b"\0" in data[:_BINARY_PROBE]:
        return "binary"
    return ""


def _scan_text(path: str, data: bytes, skipped: dict[str, int]) -> list[SecretFinding]:
    present = _keyword_hits(data)
    if not present:
        return []
    text = data.decode("utf-8", errors="replace")
    # In ASCII text a byte offset is a character offset: the lines to try are where the keywords were found.
    hits = present if data.isascii() else None
    in_tests = is_test_path(path)
    lower: str | None = None
    taken: list[tuple[int, int]] = []  # spans of values already reported
    out: list[SecretFinding] = []
    lines = _LineCounter(text)
    for rule in RULES:
        if rule.paths is not None and not rule.paths.fullmatch(path):
            continue
        if not any(k in present for k in rule.keywords):
            continue
        if not rule.lowered or hits is not None:
            haystack = text
        else:
            if lower is None:
                lower = _lower(text)
            haystack = lower
        if rule.id == _GENERIC and in_tests:
            n = sum(1 for _ in _matches(rule, text, haystack, hits))
            if n:
                skipped["test_generic"] = skipped.get("test_generic", 0) + n
            continue
        for match in _matches(rule, text, haystack, hits):
            start, end = match.span("value")
            if rule.id == "private-key":
                value = _private_key_body(text, match.end())
                start = match.start()
                if len(value) < _PRIVATE_KEY_MIN_BODY:
                    continue
            else:
                value = match.group("value")
                if rule.id == "jwt" and not _jwt_header(match.group("header")):
                    continue
                if rule.valid is not None and not rule.valid(value):
                    continue
                if rule.id == _GENERIC and any(s < end and start < e for s, e in taken):
                    continue
            if is_placeholder(value):
                skipped["placeholder"] = skipped.get("placeholder", 0) + 1
                continue
            if rule.min_entropy and shannon_entropy(value) < rule.min_entropy:
                continue
            if rule.id == _GENERIC and not _mixed(value):
                continue
            taken.append((start, end))
            line_start = text.rfind("\n", 0, start) + 1
            line = lines.number(line_start)
            out.append(
                SecretFinding(
                    rule_id=rule.id,
                    severity=_LOWER_SEVERITY[rule.severity] if in_tests else rule.severity,
                    path=path,
                    line=line,
                    column=start - line_start + 1,
                    redacted=_redact(rule.id, value),
                    fingerprint=_fingerprint(rule.id, path, value),
                )
            )
    return out


class _LineCounter:
    """1-based line numbers of offsets, counting newlines from the last offset asked (findings come in order)."""

    __slots__ = ("_line", "_pos", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1

    def number(self, offset: int) -> int:
        if offset < self._pos:
            self._pos, self._line = 0, 1
        self._line += self._text.count("\n", self._pos, offset)
        self._pos = offset
        return self._line


def _lower(text: str) -> str:
    """`text` in lower case, offset for offset (`str.lower` can lengthen a few non-ASCII characters)."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text.translate(_ASCII_LOWER)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _keyword_finder() -> tuple[BytesAhoCorasick, list[list[tuple[str, bytes | None]]]]:
    """One automaton for every rule's keywords, lower-cased; per keyword, the rules' spellings of it (with the
    exact bytes to look for when the rule is case-sensitive)."""
    spellings: dict[bytes, set[tuple[str, bytes | None]]] = {}
    for rule in RULES:
        for keyword in rule.keywords:
            exact = None if rule.lowered else keyword.encode()
            spellings.setdefault(keyword.lower().encode(), set()).add((keyword, exact))
    needles = sorted(spellings)
    return BytesAhoCorasick(needles), [sorted(spellings[n], key=str) for n in needles]


_FINDER, _SPELLINGS = _keyword_finder()


def _keyword_hits(data: bytes) -> dict[str, list[int]]:
    """Where the rules' keywords occur in `data` (byte offsets, by keyword): one pass of an Aho-Corasick automaton
    over the lower-cased bytes finds them all, where a search per keyword would read the text twenty times; a
    case-sensitive keyword found in lower case must be spelled as the rule spells it."""
    hits: dict[str, list[int]] = {}
    for index, start, _ in _FINDER.find_matches_as_indexes(data.lower(), overlapping=True):
        for keyword, exact in _SPELLINGS[index]:
            if exact is None or data.startswith(exact, start):
                hits.setdefault(keyword, []).append(start)
    return hits


def _matches(rule: Rule, text: str, haystack: str, hits: dict[str, list[int]] | None) -> Iterator[re.Match[str]]:
    """The rule's matches on the lines holding one of its keywords, line by line, in order. The keywords are where
    `hits` says (offsets in `text`) or, without it, looked for in `haystack` (`text`, or lower-cased)."""
    lines: set[int] = set()
    for keyword in rule.keywords:
        if hits is not None:
            lines.update(text.rfind("\n", 0, i) + 1 for i in hits.get(keyword, ()))
            continue
        i = haystack.find(keyword)
        while i != -1:
            line_start = text.rfind("\n", 0, i) + 1
            lines.add(line_start)
            line_end = text.find("\n", i)
            if line_end == -1:
                break
            i = haystack.find(keyword, line_end)
    for line_start in sorted(lines):
        line_end = text.find("\n", line_start)
        yield from rule.pattern.finditer(text, line_start, len(text) if line_end == -1 else line_end)


def _private_key_body(text: str, pos: int) -> str:
    """The base64 characters after a BEGIN header at `pos`, up to the END marker (or a bounded number of lines)."""
    stop = text.find(_END_MARKER, pos)
    limit = pos
    for _ in range(_PRIVATE_KEY_MAX_LINES):
        nl = text.find("\n", limit)
        if nl == -1:
            limit = len(text)
            break
        limit = nl + 1
    if stop == -1 or stop > limit:
        stop = limit
    body: list[str] = []
    for raw in text[pos:stop].replace("\\r\\n", "\n").replace("\\n", "\n").split("\n"):
        line = raw.strip().strip("\"',+;")
        if not line or _PEM_HEADER.match(line):
            continue
        if not _B64_LINE.fullmatch(line):
            break
        body.append(line)
    return "".join(body)


def _jwt_header(header: str) -> bool:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(decoded, dict) and ("alg" in decoded or "typ" in decoded)


def _mixed(value: str) -> bool:
    """A digit, or both upper and lower case letters: not a word, an identifier or a constant's name."""
    has_upper = has_lower = False
    for ch in value:
        if ch.isdigit():
            return True
        has_upper = has_upper or ch.isupper()
        has_lower = has_lower or ch.islower()
    return has_upper and has_lower


def _redact(rule_id: str, value: str) -> str:
    reveal = 0 if rule_id == "private-key" else min(_REVEAL, len(value) // 4)
    return f"{value[:reveal]}…({len(value)} chars)"


def _fingerprint(rule_id: str, path: str, value: str) -> str:
    salt = f"repolens/secret-scan/{rule_id}/v1"
    data = "\0".join((salt, rule_id, path, value)).encode("utf-8", errors="surrogatepass")
    return hashlib.sha256(data).hexdigest()
