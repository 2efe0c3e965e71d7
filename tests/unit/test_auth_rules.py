"""Auth's own rules: input validation, password hashing, refresh tokens, key sealing."""

import datetime as dt

import pytest
from cryptography.exceptions import InvalidTag

from libs.common.errors import AppError
from libs.common.pagination import decode_cursor, encode_cursor
from services.auth import signing
from services.auth.domain import SigningKey, validate_registration
from services.auth.passwords import Passwords
from services.tenants.domain import personal_slug


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("username", {"username": "ab"}),
        ("username", {"username": "-lead"}),
        ("username", {"username": "x" * 41}),
        ("email", {"email": "no-at-sign"}),
        ("password", {"password": "short"}),
        ("password", {"password": "x" * 129}),
        ("full_name", {"full_name": "x" * 201}),
    ],
)
def test_registration_input_is_checked_in_the_service(field: str, values: dict[str, str]) -> None:
    given = {"username": "alice", "email": "a@example.com", "password": "long enough", "full_name": "A"} | values
    with pytest.raises(AppError) as caught:
        validate_registration(**given)
    assert caught.value.details["field"] == field


async def test_passwords_verify_rehash_and_reject() -> None:
    cheap = Passwords(time_cost=1, memory_kib=1024, parallelism=1)
    stored = await cheap.hash("correct horse")
    assert await cheap.verify(stored, "correct horse")
    assert not await cheap.verify(stored, "wrong horse")
    assert not await cheap.verify(None, "anything")
    assert not await cheap.verify("not-a-hash", "anything")
    owasp = Passwords(time_cost=2, memory_kib=19456, parallelism=1)
    assert owasp.needs_rehash(stored)
    assert not owasp.needs_rehash(await owasp.hash("correct horse"))
    assert "$argon2id$" in stored


def test_refresh_tokens_are_random_and_stored_as_hashes() -> None:
    token, stored = signing.new_refresh_token()
    other, _ = signing.new_refresh_token()
    assert token != other
    assert token.startswith("rt_")
    assert stored == signing.hash_refresh_token(token)
    assert token.encode() not in stored


def test_private_key_opens_only_with_its_master_key_and_reseals() -> None:
    old, new = bytes(32), bytes(range(32))
    kid, public, sealed = signing.new_key_material(old)
    key = SigningKey(
        kid=kid, public_key=public, private_key_encrypted=sealed, created_at=dt.datetime.now(), retired_at=None
    )
    with pytest.raises(InvalidTag):
        signing.open_private_key(key, new)
    resealed = SigningKey(
        kid=kid,
        public_key=public,
        private_key_encrypted=signing.reseal(key, old_master_key=old, new_master_key=new),
        created_at=key.created_at,
        retired_at=None,
    )
    assert signing.open_private_key(resealed, new).public_key() is not None


def test_personal_slug_cannot_clash_with_organisation_slugs() -> None:
    assert personal_slug("Alice") == "~alice"


def test_cursor_round_trip_and_garbage() -> None:
    import uuid

    tenant_id = uuid.uuid4()
    assert decode_cursor(encode_cursor(tenant_id)) == tenant_id
    with pytest.raises(AppError):
        decode_cursor("***")
