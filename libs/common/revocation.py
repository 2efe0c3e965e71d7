"""Deny-list of revoked sessions and deactivated users, fed from auth's events.

Access tokens are verified offline, so a logout or a deactivation must reach every verifier:
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
from libs.common.events import EVENTS_STREAM, subject_for, unpack
from libs.common.tokens import AccessClaims
from repolens.events.v1 import events_pb2

SESSION_REVOKED = "session.revoked"
USER_DEACTIVATED = "user.deactivated"

log = structlog.get_logger(__name__)


class RevocationList:
    """Sessions revoked and users deactivated, each kept only while tokens could still be alive."""

    def __init__(self, *, access_token_ttl_s: int):
        self._ttl = access_token_ttl_s
        self._sessions: dict[uuid.UUID, float] = {}
        self._users: dict[uuid.UUID, float] = {}

    def revoke_session(self, session_id: uuid.UUID) -> None:
        self._sessions[session_id] = time.time()

    def deactivate_user(self, user_id: uuid.UUID, at: float) -> None:
        self._users[user_id] = at

    def check(self, claims: AccessClaims) -> None:
        """Raises the session-revoked error for a token that must no longer work."""
        if claims.session_id in self._sessions:
            raise AppError(errors.SESSION_REVOKED)
        deactivated_at = self._users.get(claims.user_id)
        # iat has whole seconds: a token from the deactivation's second is refused too.
        if deactivated_at is not None and claims.issued_at <= deactivated_at:
            raise AppError(errors.SESSION_REVOKED)

    def prune(self) -> None:
        horizon = time.time() - self._ttl - 60
        self._sessions = {k: v for k, v in self._sessions.items() if v > horizon}
        self._users = {k: v for k, v in self._users.items() if v > horizon}

    def apply(self, envelope: events_pb2.EventEnvelope) -> None:
        if envelope.type == SESSION_REVOKED:
            self.revoke_session(uuid.UUID(unpack(envelope, events_pb2.SessionRevoked).session_id))
        elif envelope.type == USER_DEACTIVATED:
            event = unpack(envelope, events_pb2.UserDeactivated)
            self.deactivate_user(uuid.UUID(event.user_id), event.deactivated_at.ToDatetime(dt.UTC).timestamp())


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
        for event_type in (SESSION_REVOKED, USER_DEACTIVATED):
            subscription = await self._js.subscribe(
                subject_for("auth", event_type),
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
