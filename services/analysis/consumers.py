"""NATS event handlers of the analysis service."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.consumer import Handler
from libs.common.events import subject_for
from repolens.events.v1 import events_pb2
from services.analysis import use_cases

SUBJECTS = [
    subject_for("tenants", "tenant.created"),
    subject_for("tenants", "tenant.deleted"),
    subject_for("tenants", "settings.changed"),
]


def handlers(forget_settings: Callable[[str], None]) -> dict[str, Handler]:
    async def settings_changed(conn: AsyncConnection, envelope: events_pb2.EventEnvelope) -> None:
        forget_settings(envelope.tenant_id)

    return {
        "tenant.created": use_cases.on_tenant_created,
        "tenant.deleted": use_cases.on_tenant_deleted,
        "settings.changed": settings_changed,
    }
