"""Personal access tokens: their format, their scopes, and what a scope lets a token call.

A token reads `rlp_` + 30 random base62 characters + 6 base62 characters of the CRC-32 of those 30, in the style of
GitHub's and GitLab's tokens: the prefix says whose it is, the checksum lets a scanner (ours: the `repolens-pat`
secret rule) tell a real token from a look-alike offline, without asking us. The random part holds 178 bits, so the
auth service stores only its SHA-256.

A token never reaches a service behind the gateway: the gateway exchanges it with the auth service for a short-lived
access token whose `sid` is the token's id and whose `scp` lists its scopes. Each service's interceptor refuses a
call whose RPC needs a scope the token lacks (`Access.scopes`), and the service then authorises the creator's
*current* role as for any caller: what a token does is its scopes intersected with that role.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib

PREFIX = "rlp_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY, _CHECKSUM = 30, 6
PATTERN = re.compile(rf"\b{PREFIX}([0-9A-Za-z]{{{_BODY}}})([0-9A-Za-z]{{{_CHECKSUM}}})\b")
# How much of a token a listing shows, to tell tokens apart: the prefix and the first 4 random characters.
SHOWN = len(PREFIX) + 4

ANALYSIS_READ = "analysis:read"
ANALYSIS_RUN = "analysis:run"
REPOSITORIES_WRITE = "repositories:write"
SETTINGS_READ = "settings:read"
SCOPES = {
    ANALYSIS_READ: "Read repositories, analyses, reports, findings and SARIF",
    ANALYSIS_RUN: "Queue and cancel analyses",
    REPOSITORIES_WRITE: "Register, change and delete repositories",
    SETTINGS_READ: "Read the tenant's settings (secrets masked)",
}


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM)


def new_token() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY))
    return PREFIX + body + _checksum(body)


def looks_like_token(value: str) -> bool:
    """A token of ours by its shape: prefix, length and checksum (says nothing about whether it is live)."""
    found = PATTERN.fullmatch(value)
    return found is not None and secrets.compare_digest(found.group(2), _checksum(found.group(1)))


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
