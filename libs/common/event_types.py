"""Every event type of RepoLens, named once: who publishes it, the name in its envelope, its subject.

These are contracts between services, like the protobuf payloads they carry (repolens.events.v1), not rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.events import subject_for


@dataclass(frozen=True, slots=True)
class EventType:
    service: str  # the publisher
    name: str  # the envelope's `type`

    @property
    def subject(self) -> str:
        return subject_for(self.service, self.name)


USER_REGISTERED = EventType("auth", "user.registered")
USER_DEACTIVATED = EventType("auth", "user.deactivated")
USER_ACTIVATED = EventType("auth", "user.activated")
SESSION_REVOKED = EventType("auth", "session.revoked")

TENANT_CREATED = EventType("tenants", "tenant.created")
TENANT_DELETED = EventType("tenants", "tenant.deleted")
MEMBERSHIP_CHANGED = EventType("tenants", "membership.changed")
SETTINGS_CHANGED = EventType("tenants", "settings.changed")

ANALYSIS_COMPLETED = EventType("analysis", "analysis.completed")
ANALYSIS_FAILED = EventType("analysis", "analysis.failed")
