"""NATS event handlers of the auth service."""

from __future__ import annotations

from libs.common.consumer import Handler
from libs.common.events import subject_for
from services.auth import use_cases

DURABLE = "auth"
SUBJECTS = [subject_for("tenants", "membership.changed")]
HANDLERS: dict[str, Handler] = {"membership.changed": use_cases.apply_membership_changed}
