"""Deny-list of revoked sessions, deactivated users, removed members and deleted tenants, fed from events.

Access tokens are verified offline, so a logout, a deactivation or a removal must reach every verifier:
each process replays the last `access_token_ttl_s` of revocation events at start (older
tokens have expired anyway) and follows new ones as they come.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from libs.common import errors
from libs.common.errors import AppError
from libs.common.event_types import MEMBERSHIP_CHANGED, SESSION_REVOKED, TENANT_DELETED, USER_DEACTIVATED
from libs.common.events import EVENTS_STREAM, unpack
from libs.common.tokens import AccessClaims
from repolens.events.v1 import events_pb2

FEED = (SESSION_REVOKED, USER_DEACTIVATED, MEMBERSHIP_CHANGED, TENANT_DELETED)

log = structlog.get_logger(__name__)


class RevocationList:
    """Revoked sessions, deactivated users, removed memberships and deleted tenants.

    Each entry is kept only while a token issued before it could still be alive.
    """

    def __init__(self, *, access_token_ttl_s: int):
        self._ttl = access_token_ttl_s
        self._sessions: dict[uuid.UUID, float] = {}
        self._users: dict[uuid.UUID, float] = {}
        self._memberships: dict[tuple[uuid.UUID, uuid.UUID], float] = {}
        self._tenants: dict[uuid.UUID, float] = {}

    def revoke_session(self, session_id: uuid.UUID) -> None:
        self._sessions[session_id] = time.time()

    def deactivate_user(self, user_id: uuid.UUID, at: float) -> None:
        self._users[user_id] = at

    def check(self, claims: AccessClaims) -> None:
        """Raises the session-revoked error for a token that must no longer work."""
        if claims.session_id in self._sessions:
            raise AppError(errors.SESSION_REVOKED)
        # iat has whole seconds: a token from the second of the change is refused too.
        for changed_at in (
            self._users.get(claims.user_id),
            self._memberships.get((claims.user_id, claims.tenant_id)),
            self._tenants.get(claims.tenant_id),
        ):
            if changed_at is not None and claims.issued_at <= changed_at:
                raise AppError(errors.SESSION_REVOKED)

    def prune(self) -> None:
        horizon = time.time() - self._ttl - 60
        self._sessions = {k: v for k, v in self._sessions.items() if v > horizon}
        self._users = {k: v for k, v in self._users.items() if v > horizon}
        self._memberships = {k: v for k, v in self._memberships.items() if v > horizon}
        self._tenants = {k: v for k, v in self._tenants.items() if v > horizon}

    def apply(self, envelope: events_pb2.EventEnvelope) -> None:
        if envelope.type == SESSION_REVOKED.name:
            self.revoke_session(uuid.UUID(unpack(envelope, events_pb2.SessionRevoked).session_id))
        elif envelope.type == USER_DEACTIVATED.name:
            event = unpack(envelope, events_pb2.UserDeactivated)
            self.deactivate_user(uuid.UUID(event.user_id), event.deactivated_at.ToDatetime(dt.UTC).timestamp())
        elif envelope.type == MEMBERSHIP_CHANGED.name:
            change = unpack(envelope, events_pb2.MembershipChanged)
            if change.removed:
                key = (uuid.UUID(change.user_id), uuid.UUID(change.tenant_id))
                self._memberships[key] = change.changed_at.ToDatetime(dt.UTC).timestamp()
        elif envelope.type == TENANT_DELETED.name:
            deleted = unpack(envelope, events_pb2.TenantDeleted)
            self._tenants[uuid.UUID(deleted.tenant_id)] = deleted.deleted_at.ToDatetime(dt.UTC).timestamp()


class RevocationFeed:
    """An ordered, ephemeral JetStream consumer per process that keeps a RevocationList current."""

    def __init__(self, *, js: JetStreamContext, revocations: RevocationList, access_token_ttl_s: int):
        self._js = js
        self._revocations = revocations
        self._ttl = access_token_ttl_s
        self._subscriptions: list[JetStreamContext.PushSubscription] = []
        self.ready = asyncio.Event()

    async def _on_message(self, message: Msg) -> None:
        try:
            self._revocations.apply(events_pb2.EventEnvelope.FromString(message.data))
        except Exception as exc:
            log.warning("revocation.bad_event", error=str(exc))

    async def start(self) -> None:
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self._ttl + 60)
        for event in FEED:
            subscription = await self._js.subscribe(
                event.subject,
                stream=EVENTS_STREAM,
                cb=self._on_message,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.BY_START_TIME,
                config=ConsumerConfig(opt_start_time=start),
            )
            self._subscriptions.append(subscription)
        self.ready.set()

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception as exc:
                log.debug("revocation.unsubscribe_failed", error=str(exc))
        self._subscriptions.clear()
