"""NATS event handlers of the tenants service."""

from __future__ import annotations

from libs.common.consumer import Handler
from libs.common.events import subject_for
from services.tenants import use_cases

SUBJECTS = [subject_for("auth", "user.registered")]
HANDLERS: dict[str, Handler] = {"user.registered": use_cases.create_personal_tenant}
