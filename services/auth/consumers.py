"""NATS event handlers of the auth service."""

from __future__ import annotations

from libs.common.consumer import Handler
from libs.common.events import subject_for
from services.auth import use_cases

SUBJECTS = [subject_for("tenants", "membership.changed"), subject_for("tenants", "tenant.deleted")]
HANDLERS: dict[str, Handler] = {
    "membership.changed": use_cases.apply_membership_changed,
    "tenant.deleted": use_cases.apply_tenant_deleted,
}
