"""Identities: users, sessions, refresh tokens, signing keys and the rules on their values."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass

from libs.common import access_tokens, errors
from libs.common.errors import AppError

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,39}$")
# Deliberately loose: one @, a dot in the domain, no spaces or control characters. Delivery proves the rest. The
# gateway's schema states the same rule (gateway/schemas.py EMAIL).
_EMAIL_CHAR = r"[^@\s\x00-\x1f\x7f-\x9f\uFEFF]"
EMAIL = re.compile(rf"^{_EMAIL_CHAR}{{1,64}}@{_EMAIL_CHAR}+\.{_EMAIL_CHAR}+$")
PASSWORD_MIN, PASSWORD_MAX = 8, 128
FULL_NAME_MAX = 200

ROLES = ("owner", "admin", "member", "viewer")


def invalid(field: str, reason: str) -> AppError:
    return AppError(errors.VALIDATION, details={"field": field, "reason": reason})


def validate_registration(*, username: str, email: str, password: str, full_name: str) -> None:
    """The service checks its own input, whatever the gateway did before."""
    if not USERNAME.fullmatch(username):
        raise invalid("username", "3-40 letters, digits, '_', '.', '-', starting with a letter or digit")
    if len(email) > 254 or not EMAIL.fullmatch(email):
        raise invalid("email", "not an email address")
    validate_password(password)
    if len(full_name) > FULL_NAME_MAX:
        raise invalid("full_name", f"at most {FULL_NAME_MAX} characters")


def validate_password(password: str) -> None:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise invalid("password", f"{PASSWORD_MIN}-{PASSWORD_MAX} characters")


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    username: str
    email: str
    full_name: str
    password_hash: str
    is_active: bool
    personal_tenant_id: uuid.UUID
    last_tenant_id: uuid.UUID | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Membership:
    """auth's projection of a tenants membership, used to put tenant and role in tokens."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: str
    personal: bool
    version: int


@dataclass(frozen=True, slots=True)
class Session:
    """One tenant's tokens of a login. Every session opened from one login (switching tenants opens one) shares
    its `family_id` and its absolute `expires_at`, and ends with it: logout, refresh-token reuse, deactivation."""

    id: uuid.UUID
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    family_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class RefreshToken:
    id: uuid.UUID
    session_id: uuid.UUID
    expires_at: dt.datetime
    used_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    public_key: bytes
    private_key_encrypted: bytes
    created_at: dt.datetime
    retired_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str
    expires_in: int
    tenant_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Me:
    user: User
    tenant_id: uuid.UUID
    role: str
    session_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A personal access token of one user in one tenant; the token itself is never stored, only its hash."""

    id: uuid.UUID
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    scopes: tuple[str, ...]
    prefix: str
    created_at: dt.datetime
    expires_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


ACCESS_TOKEN_NAME_MAX = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
ACCESS_TOKENS_PER_USER_MAX = 100


def validate_access_token_request(*, name: str, scopes: list[str], expires_in_days: int, max_days: int) -> None:
    """Name, scopes and lifetime of a new token; every problem names its field."""
    if not name or len(name) > ACCESS_TOKEN_NAME_MAX or _CONTROL.search(name):
        raise invalid("name", f"1-{ACCESS_TOKEN_NAME_MAX} characters, no control characters")
    unknown = sorted(set(scopes) - set(access_tokens.SCOPES))
    if not scopes or unknown or len(set(scopes)) != len(scopes):
        raise invalid("scopes", "one or more of " + ", ".join(access_tokens.SCOPES) + ", each once")
    if not 1 <= expires_in_days <= max_days:
        raise invalid("expires_in_days", f"1-{max_days}")
