"""The events the tenants service consumes, and their handlers."""

from __future__ import annotations

from libs.common.consumer import Handler
from libs.common.event_types import USER_REGISTERED, EventType
from services.tenants import use_cases

HANDLERS: dict[EventType, Handler] = {USER_REGISTERED: use_cases.create_personal_tenant}
