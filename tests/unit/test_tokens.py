"""Access-token verification: every forged, altered, expired or foreign token is refused."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
import pytest

from libs.common import errors
from libs.common.errors import AppError
from libs.common.tokens import TokenVerifier, bearer_token
from services.auth import signing
from services.auth.domain import SigningKey

MASTER_KEY = bytes(range(32))


def _key() -> tuple[SigningKey, signing.Signer]:
    kid, public, sealed = signing.new_key_material(MASTER_KEY)
    key = SigningKey(
        kid=kid, public_key=public, private_key_encrypted=sealed, created_at=dt.datetime.now(dt.UTC), retired_at=None
    )
    signer = signing.Signer(
        kid=kid,
        private_key=signing.open_private_key(key, MASTER_KEY),
        issuer="repolens-auth",
        audience="repolens",
        ttl_s=900,
    )
    return key, signer


class KeySet:
    """A JWKS source whose keys a test can change, counting fetches."""

    def __init__(self, *keys: SigningKey):
        self.keys = list(keys)
        self.fetches = 0

    async def __call__(self) -> list[Mapping[str, Any]]:
        self.fetches += 1
        return [signing.public_jwk(k) for k in self.keys]


def _verifier(keys: KeySet) -> TokenVerifier:
    return TokenVerifier(fetch_jwks=keys, issuer="repolens-auth", audience="repolens", refresh_min_interval_s=0)


def _token(signer: signing.Signer, now: dt.datetime | None = None) -> str:
    return signer.access_token(
        user_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        role="owner",
        session_id=uuid.uuid4(),
        now=now or dt.datetime.now(dt.UTC),
    )


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def _refused(verifier: TokenVerifier, token: str, code: str = "ERR_AUTH_002") -> None:
    with pytest.raises(AppError) as caught:
        await verifier.verify(token)
    assert caught.value.code == code


async def test_a_valid_token_gives_its_claims() -> None:
    key, signer = _key()
    verifier = _verifier(KeySet(key))
    claims = await verifier.verify(_token(signer))
    assert claims.role == "owner"
    assert claims.expires_at - claims.issued_at == 900


async def test_alg_none_is_refused() -> None:
    key, signer = _key()
    payload = jwt.decode(_token(signer), options={"verify_signature": False})
    forged = _b64({"alg": "none", "typ": "JWT", "kid": key.kid}) + "." + _b64(payload) + "."
    await _refused(_verifier(KeySet(key)), forged)


async def test_hs256_signed_with_the_public_key_is_refused() -> None:
    key, signer = _key()
    payload = jwt.decode(_token(signer), options={"verify_signature": False})
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    body = _b64(payload)
    import hashlib
    import hmac

    mac = hmac.new(key.public_key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    await _refused(_verifier(KeySet(key)), forged)


async def test_unknown_kid_is_refused_after_one_refetch() -> None:
    key, _ = _key()
    _, stranger = _key()
    keys = KeySet(key)
    verifier = _verifier(keys)
    await verifier.refresh(force=True)
    await _refused(verifier, _token(stranger))
    assert keys.fetches == 2


async def test_a_rotated_key_is_picked_up_on_its_first_token() -> None:
    old, _ = _key()
    new, new_signer = _key()
    keys = KeySet(old)
    verifier = _verifier(keys)
    await verifier.refresh(force=True)
    keys.keys.append(new)
    claims = await verifier.verify(_token(new_signer))
    assert claims.role == "owner"


async def test_expired_token_has_its_own_code() -> None:
    key, signer = _key()
    stale = _token(signer, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    await _refused(_verifier(KeySet(key)), stale, code=errors.TOKEN_EXPIRED.code)


async def test_altered_payload_is_refused() -> None:
    key, signer = _key()
    header, _, signature = _token(signer).split(".")
    payload = jwt.decode(_token(signer), options={"verify_signature": False})
    payload["role"] = "admin"
    await _refused(_verifier(KeySet(key)), f"{header}.{_b64(payload)}.{signature}")


async def test_wrong_audience_is_refused() -> None:
    key, signer = _key()
    verifier = TokenVerifier(fetch_jwks=KeySet(key), issuer="repolens-auth", audience="someone-else")
    await _refused(verifier, _token(signer))


async def test_garbage_is_refused() -> None:
    key, _ = _key()
    await _refused(_verifier(KeySet(key)), "not-a-token")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer"])
def test_bearer_header_must_carry_a_token(header: str | None) -> None:
    with pytest.raises(AppError) as caught:
        bearer_token(header)
    assert caught.value.code == errors.INVALID_TOKEN.code


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"


async def test_verified_tokens_are_remembered_until_their_key_is_withdrawn() -> None:
    key, signer = _key()
    keys = KeySet(key)
    verifier = _verifier(keys)
    token = _token(signer)
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first  # served from the cache
    keys.keys.clear()
    await verifier.refresh(force=True)
    await _refused(verifier, token)
