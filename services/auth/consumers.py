"""The events the auth service consumes, and their handlers."""

from __future__ import annotations

from libs.common.consumer import Handler
from libs.common.event_types import MEMBERSHIP_CHANGED, TENANT_DELETED, EventType
from services.auth import use_cases

HANDLERS: dict[EventType, Handler] = {
    MEMBERSHIP_CHANGED: use_cases.apply_membership_changed,
    TENANT_DELETED: use_cases.apply_tenant_deleted,
}
