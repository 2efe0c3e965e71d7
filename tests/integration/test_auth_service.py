"""The auth service over real gRPC, PostgreSQL and NATS: registration, login, refresh, logout, users, keys."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.config import CommonSettings
from libs.common.grpc_client import error_from_rpc
from repolens.auth.v1 import auth_pb2, auth_pb2_grpc
from repolens.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from services.auth.__main__ import main as auth_cli
from tests.integration.conftest import Services, eventually, gateway_channel

PASSWORD = "correct horse battery"
# The generated stubs are typed for synchronous channels; on aio channels calls are awaitable, hence Any.


@pytest.fixture
async def auth(services: Services) -> AsyncIterator[Any]:
    async with gateway_channel(services.auth_target) as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


@pytest.fixture
async def tenants(services: Services) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(services.tenants_target) as channel:
        yield tenants_pb2_grpc.TenantsServiceStub(channel)


def _name() -> str:
    return "u" + uuid.uuid4().hex[:10]


async def _register(auth: Any, username: str | None = None) -> auth_pb2.RegisterResponse:
    username = username or _name()
    request = auth_pb2.RegisterRequest(username=username, email=f"{username}@example.com", password=PASSWORD)
    reply: auth_pb2.RegisterResponse = await auth.Register(request, timeout=10)
    return reply


async def _login(auth: Any, username: str, password: str = PASSWORD) -> auth_pb2.TokenPair:
    reply: auth_pb2.LoginResponse = await auth.Login(
        auth_pb2.LoginRequest(username=username, password=password), timeout=10
    )
    return reply.tokens


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def _code_of(call: object) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return error_from_rpc(caught.value).code


async def test_register_login_and_me(auth: Any) -> None:
    registered = await _register(auth)
    tokens = await _login(auth, registered.user.username.upper())  # usernames ignore case
    assert tokens.tenant_id == registered.personal_tenant_id
    assert tokens.token_type == "bearer"
    assert tokens.expires_in == 900
    me = await auth.GetMe(auth_pb2.GetMeRequest(), metadata=_bearer(tokens.access_token), timeout=5)
    assert me.user.id == registered.user.id
    assert me.tenant_id == registered.personal_tenant_id
    assert me.role == "owner"


async def test_usernames_and_emails_are_unique_ignoring_case(auth: Any) -> None:
    registered = await _register(auth)
    name = registered.user.username
    again = auth_pb2.RegisterRequest(username=name.upper(), email=f"other-{name}@example.com", password=PASSWORD)
    assert await _code_of(auth.Register(again, timeout=5)) == "ERR_AUTH_007"
    same_email = auth_pb2.RegisterRequest(username=_name(), email=f"{name.upper()}@EXAMPLE.com", password=PASSWORD)
    assert await _code_of(auth.Register(same_email, timeout=5)) == "ERR_AUTH_008"


async def test_invalid_registration_is_refused_by_the_service(auth: Any) -> None:
    bad = auth_pb2.RegisterRequest(username="ok_name", email="a@example.com", password="short")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth.Register(bad, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_from_rpc(caught.value).details == {"field": "password", "reason": "8-128 characters"}


async def test_wrong_password_and_unknown_user_look_the_same(auth: Any) -> None:
    registered = await _register(auth)

    async def attempt(username: str) -> tuple[str, float]:
        started = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _login(auth, username, "wrong password!")
        return error_from_rpc(caught.value).code + (caught.value.details() or ""), time.perf_counter() - started

    known = [await attempt(registered.user.username) for _ in range(5)]
    unknown = [await attempt(_name()) for _ in range(5)]
    assert (
        {answer for answer, _ in known}
        == {answer for answer, _ in unknown}
        == {"ERR_AUTH_001Invalid username or password"}
    )
    ratio = statistics.median(t for _, t in unknown) / statistics.median(t for _, t in known)
    assert 0.5 < ratio < 2.0, f"unknown-user login takes {ratio:.2f}x a wrong-password login"


async def test_refresh_rotates_and_reuse_revokes_the_family(auth: Any) -> None:
    registered = await _register(auth)
    first = await _login(auth, registered.user.username)
    second = (
        await auth.RefreshTokens(auth_pb2.RefreshTokensRequest(refresh_token=first.refresh_token), timeout=5)
    ).tokens
    assert second.refresh_token != first.refresh_token
    assert second.tenant_id == first.tenant_id
    await asyncio.sleep(0.6)  # past the reuse grace of these services (0.5 s)
    # The spent token comes back: the whole session dies, the newest refresh token included.
    reuse = auth.RefreshTokens(auth_pb2.RefreshTokensRequest(refresh_token=first.refresh_token), timeout=5)
    assert await _code_of(reuse) == "ERR_AUTH_005"
    latest = auth.RefreshTokens(auth_pb2.RefreshTokensRequest(refresh_token=second.refresh_token), timeout=5)
    assert await _code_of(latest) == "ERR_AUTH_005"
    me = auth.GetMe(auth_pb2.GetMeRequest(), metadata=_bearer(second.access_token), timeout=5)
    assert await _code_of(me) == "ERR_AUTH_005"


async def test_concurrent_refreshes_of_one_token_both_get_working_tokens(auth: Any) -> None:
    """Two tabs or two CI jobs refreshing at the same moment: not a theft, within the grace."""
    registered = await _register(auth)
    first = await _login(auth, registered.user.username)
    request = auth_pb2.RefreshTokensRequest(refresh_token=first.refresh_token)
    replies = await asyncio.gather(*(auth.RefreshTokens(request, timeout=5) for _ in range(2)))
    pairs = [reply.tokens for reply in replies]
    assert len({pair.refresh_token for pair in pairs}) == 2
    sessions = set()
    for pair in pairs:
        me = await auth.GetMe(auth_pb2.GetMeRequest(), metadata=_bearer(pair.access_token), timeout=5)
        assert me.user.id == registered.user.id
        sessions.add(me.session_id)
        again = await auth.RefreshTokens(auth_pb2.RefreshTokensRequest(refresh_token=pair.refresh_token), timeout=5)
        assert again.tokens.tenant_id == first.tenant_id
    assert len(sessions) == 1, "both pairs belong to the login's one session"


async def test_unknown_refresh_token_is_refused(auth: Any) -> None:
    call = auth.RefreshTokens(auth_pb2.RefreshTokensRequest(refresh_token="rt_nothing"), timeout=5)
    assert await _code_of(call) == "ERR_AUTH_004"
    assert await _code_of(auth.Logout(auth_pb2.LogoutRequest(refresh_token="rt_nothing"), timeout=5)) == "ERR_AUTH_004"


async def test_logout_revokes_the_session(auth: Any) -> None:
    registered = await _register(auth)
    tokens = await _login(auth, registered.user.username)
    await auth.Logout(auth_pb2.LogoutRequest(refresh_token=tokens.refresh_token), timeout=5)
    me = auth.GetMe(auth_pb2.GetMeRequest(), metadata=_bearer(tokens.access_token), timeout=5)
    assert await _code_of(me) == "ERR_AUTH_005"
    again = auth.RefreshTokens(auth_pb2.RefreshTokensRequest(refresh_token=tokens.refresh_token), timeout=5)
    assert await _code_of(again) == "ERR_AUTH_005"


async def test_me_needs_a_token(auth: Any) -> None:
    assert await _code_of(auth.GetMe(auth_pb2.GetMeRequest(), timeout=5)) == "ERR_AUTH_002"


async def test_deactivated_user_cannot_log_in_until_activated(
    auth: Any, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered = await _register(auth)
    username = registered.user.username
    tokens = await _login(auth, username)
    monkeypatch.setenv("DATABASE_URL", services.auth_settings.database_url)
    monkeypatch.setenv("NATS_URL", services.auth_settings.nats_url)
    assert await asyncio.to_thread(auth_cli, ["users", "deactivate", username]) == 0
    assert await _code_of(_login(auth, username)) == "ERR_AUTH_006"
    me = auth.GetMe(auth_pb2.GetMeRequest(), metadata=_bearer(tokens.access_token), timeout=5)
    assert await _code_of(me) == "ERR_AUTH_005"
    assert await asyncio.to_thread(auth_cli, ["users", "activate", username]) == 0
    assert (await _login(auth, username)).tenant_id == registered.personal_tenant_id
    assert await asyncio.to_thread(auth_cli, ["users", "deactivate", "nobody-" + _name()]) == 1


async def test_password_hash_is_upgraded_at_login(auth: Any, services: Services) -> None:
    from argon2 import PasswordHasher

    registered = await _register(auth)
    engine = create_async_engine(CommonSettings(database_url=services.auth_settings.database_url).sqlalchemy_url)
    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    query = sa.text("SELECT password_hash FROM auth.users WHERE id = :id")
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE auth.users SET password_hash = :h WHERE id = :id"),
                {"h": weak, "id": registered.user.id},
            )
        await _login(auth, registered.user.username)
        async with engine.connect() as conn:
            stored = (await conn.execute(query, {"id": registered.user.id})).scalar_one()
    finally:
        await engine.dispose()
    assert stored != weak
    assert "m=19456,t=2,p=1" in stored


async def test_key_rotation_keeps_old_tokens_valid(
    auth: Any, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered = await _register(auth)
    before = await _login(auth, registered.user.username)
    kids_before = {k.kid for k in (await auth.GetJwks(auth_pb2.GetJwksRequest(), timeout=5)).keys}
    monkeypatch.setenv("DATABASE_URL", services.auth_settings.database_url)
    assert await asyncio.to_thread(auth_cli, ["keys", "rotate"]) == 0

    async def rotated() -> bool:
        keys = (await auth.GetJwks(auth_pb2.GetJwksRequest(), timeout=5)).keys
        return len({k.kid for k in keys} - kids_before) == 1

    await eventually(rotated, what="the new key in the JWKS")
    after = await _login(auth, registered.user.username)
    assert after.access_token.split(".")[0] != before.access_token.split(".")[0]  # another kid in the header
    for token in (before.access_token, after.access_token):
        me = await auth.GetMe(auth_pb2.GetMeRequest(), metadata=_bearer(token), timeout=5)
        assert me.user.id == registered.user.id


async def test_personal_tenant_is_created_and_foreign_tenants_are_hidden(auth: Any, tenants: Any) -> None:
    alice, bob = await _register(auth), await _register(auth)
    alice_tokens = await _login(auth, alice.user.username)

    async def listed() -> bool:
        reply = await tenants.ListMyTenants(
            tenants_pb2.ListMyTenantsRequest(), metadata=_bearer(alice_tokens.access_token), timeout=5
        )
        return [m.tenant.id for m in reply.memberships] == [alice.personal_tenant_id]

    await eventually(listed, what="alice's personal tenant")
    own = await tenants.GetTenant(
        tenants_pb2.GetTenantRequest(tenant_id=alice.personal_tenant_id),
        metadata=_bearer(alice_tokens.access_token),
        timeout=5,
    )
    assert own.membership.role == "owner"
    assert own.membership.tenant.slug == "~" + alice.user.username.lower()
    for tenant_id in (bob.personal_tenant_id, str(uuid.uuid4()), "not-a-uuid"):
        foreign = tenants.GetTenant(
            tenants_pb2.GetTenantRequest(tenant_id=tenant_id), metadata=_bearer(alice_tokens.access_token), timeout=5
        )
        assert await _code_of(foreign) == "ERR_TENANT_001"
    assert await _code_of(tenants.ListMyTenants(tenants_pb2.ListMyTenantsRequest(), timeout=5)) == "ERR_AUTH_002"


async def test_logged_out_token_is_refused_by_tenants_within_a_second(auth: Any, tenants: Any) -> None:
    registered = await _register(auth)
    tokens = await _login(auth, registered.user.username)
    await tenants.ListMyTenants(tenants_pb2.ListMyTenantsRequest(), metadata=_bearer(tokens.access_token), timeout=5)
    await auth.Logout(auth_pb2.LogoutRequest(refresh_token=tokens.refresh_token), timeout=5)
    await asyncio.sleep(1.0)
    call = tenants.ListMyTenants(tenants_pb2.ListMyTenantsRequest(), metadata=_bearer(tokens.access_token), timeout=5)
    assert await _code_of(call) == "ERR_AUTH_005"


async def test_tenant_pages_are_bounded(auth: Any, tenants: Any) -> None:
    registered = await _register(auth)
    tokens = await _login(auth, registered.user.username)
    too_big = tenants.ListMyTenants(
        tenants_pb2.ListMyTenantsRequest(page_size=101), metadata=_bearer(tokens.access_token), timeout=5
    )
    assert await _code_of(too_big) == "ERR_VALIDATION_001"
    bad_cursor = tenants.ListMyTenants(
        tenants_pb2.ListMyTenantsRequest(page_token="%%%"), metadata=_bearer(tokens.access_token), timeout=5
    )
    assert await _code_of(bad_cursor) == "ERR_VALIDATION_001"
