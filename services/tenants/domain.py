"""Tenants, memberships, invitations and settings: the organisations users act in, and the rules there."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field

from libs.common import errors
from libs.common.errors import AppError

ROLES = ("owner", "admin", "member", "viewer")
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,38})[a-z0-9]$")
NAME_MAX = 100
HOST = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
LLM_PROVIDERS = ("none", "anthropic", "openai")
SECRET_FIELDS = ("github_token", "anthropic_api_key", "openai_api_key")
SECRET_MAX = 512
INVITATION_TTL = dt.timedelta(days=7)


def invalid(field_name: str, reason: str) -> AppError:
    return AppError(errors.VALIDATION, details={"field": field_name, "reason": reason})


def personal_slug(username: str) -> str:
    """Personal tenants take `~username`: `~` never appears in an organisation's slug, so they cannot clash."""
    return "~" + username.lower()


def validate_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise invalid("name", f"1-{NAME_MAX} characters")
    return name


def validate_slug(slug: str) -> str:
    if not SLUG.fullmatch(slug):
        raise invalid("slug", "3-40 lowercase letters, digits and '-', not starting or ending with '-'")
    return slug


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise invalid("role", "one of owner, admin, member, viewer")
    return role


@dataclass(frozen=True, slots=True)
class Tenant:
    id: uuid.UUID
    name: str
    slug: str
    personal: bool
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TenantMembership:
    tenant: Tenant
    role: str


@dataclass(frozen=True, slots=True)
class Member:
    user_id: uuid.UUID
    username: str
    email: str
    full_name: str
    role: str
    joined_at: dt.datetime
    version: int


@dataclass(frozen=True, slots=True)
class Invitation:
    id: uuid.UUID
    tenant_id: uuid.UUID
    invitee: str
    role: str
    invited_by: uuid.UUID
    expires_at: dt.datetime
    accepted_at: dt.datetime | None
    revoked_at: dt.datetime | None = None
    created_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class QualityGate:
    """Defaults: what a team that cares, but is not yet perfect, would accept."""

    max_function_complexity: int = 15
    max_high_findings: int = 0
    max_secrets: int = 0
    max_file_lines: int = 1000
    # New code, "clean as you code": a branch or pull request adds no high-severity finding, no complex function and no
    # secret to its base (the findings whose fingerprints the base analysis does not have).
    max_new_high_findings: int = 0
    max_new_complex_functions: int = 0
    max_new_secrets: int = 0
    # Which conditions decide the gate of a branch or pull request; the default branch is always judged overall.
    branch_gate: str = "new_code"


BRANCH_GATES = ("new_code", "overall", "both")
GATE_LIMITS = (
    "max_function_complexity",
    "max_high_findings",
    "max_secrets",
    "max_file_lines",
    "max_new_high_findings",
    "max_new_complex_functions",
    "max_new_secrets",
)


@dataclass(frozen=True, slots=True)
class Secret:
    """A stored secret: ciphertext for the engine, a masked form for people."""

    ciphertext: bytes
    masked: str


@dataclass(frozen=True, slots=True)
class Settings:
    tenant_id: uuid.UUID
    secrets: dict[str, Secret] = field(default_factory=dict)
    llm_provider: str = "none"
    llm_model: str = ""
    quality_gate: QualityGate = field(default_factory=QualityGate)
    allowed_hosts: tuple[str, ...] = ("github.com",)
    updated_at: dt.datetime | None = None


def mask(secret: str) -> str:
    """`sk-ant-api03-...` → `sk-ant-...abcd`: the vendor prefix and the last four characters, nothing more."""
    prefix = re.match(r"^(?:[A-Za-z]{2,4}[-_]){1,2}", secret)
    head = prefix.group(0) if prefix and len(secret) - len(prefix.group(0)) >= 8 else ""
    tail = secret[-4:] if len(secret) >= 12 else ""
    return f"{head}...{tail}"


def validate_secret(field_name: str, value: str) -> str:
    if len(value) > SECRET_MAX or any(ch.isspace() for ch in value):
        # The reason never quotes the value.
        raise invalid(field_name, f"at most {SECRET_MAX} characters, no spaces")
    return value


def validate_hosts(hosts: list[str]) -> tuple[str, ...]:
    cleaned = []
    for host in hosts:
        lowered = host.strip().lower()
        if not HOST.fullmatch(lowered):
            raise invalid("allowed_hosts", "host names only, like github.com (no scheme, port or path)")
        cleaned.append(lowered)
    if len(cleaned) > 50:
        raise invalid("allowed_hosts", "at most 50 hosts")
    return tuple(dict.fromkeys(cleaned))


def validate_quality_gate(gate: QualityGate) -> QualityGate:
    for name in GATE_LIMITS:
        if not 0 <= getattr(gate, name) <= 1_000_000:
            raise invalid(f"quality_gate.{name}", "0-1000000")
    if gate.max_function_complexity < 1 or gate.max_file_lines < 1:
        raise invalid("quality_gate", "max_function_complexity and max_file_lines must be at least 1")
    if gate.branch_gate not in BRANCH_GATES:
        raise invalid("quality_gate.branch_gate", " or ".join(BRANCH_GATES))
    return gate


# Permissions: the one table behind the checks below and docs/permissions.md.

PERMISSIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "tenant.read": (ROLES, "See the tenant (`GET /tenants/current`)"),
    "tenant.rename": (("owner", "admin"), "Rename it (`PATCH /tenants/current`); a personal tenant keeps its slug"),
    "tenant.delete": (("owner",), "Delete it (`DELETE /tenants/current`); never a personal tenant"),
    "members.read": (ROLES, "List members (`GET /tenants/current/members`)"),
    "members.invite": (("owner", "admin"), "Invite as admin, member or viewer; not into a personal tenant"),
    "members.grant_owner": (("owner",), "Invite as owner, or make a member owner"),
    "members.change_role": (("owner", "admin"), "Change a role (`PATCH .../members/{id}`); admins not an owner's"),
    "members.remove": (("owner", "admin"), "Remove a member; admins not an owner; anyone may remove themselves"),
    "invitations.read": (("owner", "admin"), "List pending invitations (`GET /tenants/current/invitations`)"),
    "invitations.revoke": (
        ("owner", "admin"),
        "Revoke a pending invitation (`DELETE .../invitations/{id}`); admins not an invitation as owner",
    ),
    "settings.read": (ROLES, "Read settings (`GET /settings`); secrets only masked"),
    "settings.write": (("owner", "admin"), "Change settings (`PATCH /settings`)"),
}
RULES = (
    "A tenant always keeps at least one owner: the last owner can be neither demoted nor removed (`ERR_TENANT_004`).",
    "A personal tenant has exactly one member, its owner, and is deleted only with its user (`ERR_TENANT_005`).",
    "Another tenant's resources answer 404, never 403: their existence is not revealed.",
    "An invitation is accepted only while it is pending (not accepted, revoked or expired), its tenant is active "
    "and its inviter is still a member who may grant its role; all checked in the transaction that adds the member.",
    "The role in a token is informative only; every call is authorised by the member's current role: the tenants "
    "service reads it from its database, the analysis service from its projection of `membership.changed` (in "
    "force within a second of the change), and auth puts the current role in every token it issues and in "
    "`GET /auth/me`.",
    "Analyses: members and up create, change and delete repositories and queue and cancel analyses; viewers read.",
    "A personal access token does what its scopes name and its creator's current role allows, no more; it never "
    "administers the tenant (members, invitations, renaming, deleting, changing settings) nor manages tokens "
    "(docs/tokens.md).",
)


def allowed(role: str, action: str) -> bool:
    return role in PERMISSIONS[action][0]


def ensure(role: str, action: str) -> None:
    if not allowed(role, action):
        raise AppError(errors.FORBIDDEN)


def can_grant(actor_role: str, role: str) -> bool:
    """Only an owner makes another owner; admins grant admin, member, viewer."""
    return allowed(actor_role, "members.grant_owner" if role == "owner" else "members.invite")


def ensure_can_grant(actor_role: str, role: str) -> None:
    if not can_grant(actor_role, role):
        raise AppError(errors.FORBIDDEN)


def ensure_can_change(actor_role: str, target_role: str, *, action: str, actor_is_target: bool = False) -> None:
    """Owners change anyone; admins anyone but owners; everyone may remove themselves."""
    if actor_is_target and action == "members.remove":
        return
    ensure(actor_role, action)
    if target_role == "owner":
        ensure(actor_role, "members.grant_owner")


def render_permissions() -> str:
    """docs/permissions.md."""
    lines = [
        "# Permissions",
        "",
        "Generated by `make permissions-doc` from `services/tenants/domain.py`; a test fails when it is stale,",
        "and the end-to-end role matrix checks every route against it.",
        "",
        "| action | " + " | ".join(ROLES) + " |",
        "|---|" + "---|" * len(ROLES),
    ]
    for roles, description in PERMISSIONS.values():
        marks = " | ".join("yes" if role in roles else "no" for role in ROLES)
        lines.append(f"| {description} | {marks} |")
    lines += ["", "Rules:", ""] + [f"- {rule}" for rule in RULES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_permissions(), end="")
