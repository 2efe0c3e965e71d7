"""Tenants and memberships: the organisations users act in, and their roles there."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

ROLES = ("owner", "admin", "member", "viewer")
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 100

# Event types this service publishes.
TENANT_CREATED = "tenant.created"
MEMBERSHIP_CHANGED = "membership.changed"


def personal_slug(username: str) -> str:
    """Personal tenants take `~username`: `~` never appears in an organisation's slug, so they cannot clash."""
    return "~" + username.lower()


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
class Page:
    items: list[TenantMembership]
    next_cursor: uuid.UUID | None
