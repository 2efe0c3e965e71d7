"""The deny-list: revoked sessions and deactivated users."""

import time
import uuid

import pytest

from libs.common.errors import AppError
from libs.common.events import make_envelope, timestamp
from libs.common.revocation import RevocationList
from libs.common.tokens import AccessClaims
from repolens.events.v1 import events_pb2


def _claims(*, user_id: uuid.UUID | None = None, session_id: uuid.UUID | None = None, iat: int = 0) -> AccessClaims:
    return AccessClaims(
        user_id=user_id or uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        role="owner",
        session_id=session_id or uuid.uuid4(),
        token_id="j",
        issued_at=iat or int(time.time()),
        expires_at=int(time.time()) + 900,
    )


def test_revoked_session_is_refused_and_others_pass() -> None:
    revocations = RevocationList(access_token_ttl_s=900)
    session = uuid.uuid4()
    revocations.apply(
        make_envelope(event_type="session.revoked", payload=events_pb2.SessionRevoked(session_id=str(session)))
    )
    with pytest.raises(AppError):
        revocations.check(_claims(session_id=session))
    revocations.check(_claims())


def test_deactivation_refuses_tokens_issued_before_it_only() -> None:
    import datetime as dt

    revocations = RevocationList(access_token_ttl_s=900)
    user = uuid.uuid4()
    at = dt.datetime.now(dt.UTC)
    revocations.apply(
        make_envelope(
            event_type="user.deactivated",
            payload=events_pb2.UserDeactivated(user_id=str(user), deactivated_at=timestamp(at)),
        )
    )
    with pytest.raises(AppError):
        revocations.check(_claims(user_id=user, iat=int(at.timestamp()) - 5))
    revocations.check(_claims(user_id=user, iat=int(at.timestamp()) + 2))


def test_prune_forgets_entries_older_than_any_live_token() -> None:
    revocations = RevocationList(access_token_ttl_s=60)
    session = uuid.uuid4()
    revocations.revoke_session(session)
    revocations._sessions[session] -= 1000
    revocations.prune()
    revocations.check(_claims(session_id=session))
