"""The events the analysis service consumes, and their handlers."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import Handler
from libs.common.event_types import MEMBERSHIP_CHANGED, SETTINGS_CHANGED, TENANT_CREATED, TENANT_DELETED, EventType
from repolens.events.v1 import events_pb2
from services.analysis import use_cases


def handlers(forget_settings: Callable[[str], None]) -> dict[EventType, Handler]:
    async def settings_changed(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
        forget_settings(envelope.tenant_id)

    return {
        TENANT_CREATED: use_cases.on_tenant_created,
        TENANT_DELETED: use_cases.on_tenant_deleted,
        SETTINGS_CHANGED: settings_changed,
        MEMBERSHIP_CHANGED: use_cases.on_membership_changed,
    }
