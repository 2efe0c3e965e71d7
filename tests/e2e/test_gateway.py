"""Through the gateway over HTTP, with every process running: the flows a user (or an attacker) sees."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jwt
import psycopg
import pytest

from libs.common.config import DEVELOPMENT_MASTER_KEY, decode_master_key
from libs.devstack.stack import Stack
from repolens.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from services.auth import signing
from services.auth.domain import SigningKey
from tests.e2e.people import deactivate

PASSWORD = "testpass123"


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def _name() -> str:
    return "e" + uuid.uuid4().hex[:10]


def register(client: httpx.Client, username: str | None = None) -> dict[str, Any]:
    username = username or _name()
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD, "full_name": "Test User"}
    response = client.post("/api/v2/auth/register", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def login(client: httpx.Client, username: str) -> dict[str, Any]:
    response = client.post("/api/v2/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return dict(response.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "request_id", "details"}, body
    return str(body["error"]["code"])


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_the_readme_walk_through(client: httpx.Client) -> None:
    username = _name()
    user = register(client, username)
    assert user["username"] == username
    assert "password" not in json.dumps(user)
    tokens = login(client, username)
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    assert tokens["tenant_id"] == user["personal_tenant_id"]
    me = client.get("/api/v2/auth/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    assert me.json()["user"]["id"] == user["id"]
    assert me.json()["tenant_id"] == user["personal_tenant_id"]
    assert me.json()["role"] == "owner"
    again = client.post(
        "/api/v2/auth/register",
        json={"username": username, "email": f"x{username}@example.com", "password": PASSWORD},
    )
    assert again.status_code == 409
    assert error_code(again) == "ERR_AUTH_007"


def test_login_right_after_registration_carries_the_personal_tenant_100_times(client: httpx.Client) -> None:
    for _ in range(100):
        user = register(client)
        tokens = login(client, user["username"])
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert claims["tid"] == user["personal_tenant_id"]
        assert claims["role"] == "owner"


def test_tenants_lists_only_the_callers_tenants(client: httpx.Client) -> None:
    alice, bob = register(client), register(client)
    token = login(client, alice["username"])["access_token"]
    deadline = time.monotonic() + 15
    while True:
        page = client.get("/api/v2/tenants", headers=bearer(token))
        assert page.status_code == 200
        if page.json()["items"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [t["id"] for t in page.json()["items"]] == [alice["personal_tenant_id"]]
    assert bob["personal_tenant_id"] not in page.text
    assert page.json()["items"][0]["role"] == "owner"
    assert page.json()["next_cursor"] is None
    assert client.get("/api/v2/tenants?limit=101", headers=bearer(token)).status_code == 422


def _signing_key(database_url: str) -> SigningKey:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT kid, public_key, private_key_encrypted, created_at, retired_at FROM auth.signing_keys"
            " WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return SigningKey(*row)


def _signer(key: SigningKey, ttl_s: int = 900) -> signing.Signer:
    return signing.Signer(
        kid=key.kid,
        private_key=signing.open_private_key(key, decode_master_key(DEVELOPMENT_MASTER_KEY)),
        issuer="repolens-auth",
        audience="repolens",
        ttl_s=ttl_s,
    )


def test_forged_expired_and_revoked_tokens_are_refused(client: httpx.Client, stack: Stack) -> None:
    user = register(client)
    tokens = login(client, user["username"])
    good = tokens["access_token"]
    header, payload, signature = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    key = _signing_key(stack.database_url)

    alg_none = _b64({"alg": "none", "typ": "JWT", "kid": key.kid}) + "." + payload + "."
    hs_header = _b64({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    mac = hmac.new(key.public_key, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
    hs256 = f"{hs_header}.{payload}." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    stranger_kid, stranger_public, stranger_sealed = signing.new_key_material(decode_master_key(DEVELOPMENT_MASTER_KEY))
    stranger = SigningKey(stranger_kid, stranger_public, stranger_sealed, dt.datetime.now(dt.UTC), None)
    session_id = uuid.UUID(claims["sid"])
    unknown_kid = _signer(stranger).access_token(
        user_id=uuid.UUID(claims["sub"]),
        tenant_id=uuid.UUID(claims["tid"]),
        role="owner",
        session_id=session_id,
        now=dt.datetime.now(dt.UTC),
    )
    expired = _signer(key, ttl_s=60).access_token(
        user_id=uuid.UUID(claims["sub"]),
        tenant_id=uuid.UUID(claims["tid"]),
        role="owner",
        session_id=session_id,
        now=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5),
    )
    altered = f"{header}.{_b64({**claims, 'tid': str(uuid.uuid4())})}.{signature}"

    cases = {
        "no token": ({}, "ERR_AUTH_002"),
        "alg none": (bearer(alg_none), "ERR_AUTH_002"),
        "HS256 with the public key": (bearer(hs256), "ERR_AUTH_002"),
        "unknown kid": (bearer(unknown_kid), "ERR_AUTH_002"),
        "expired": (bearer(expired), "ERR_AUTH_003"),
        "payload altered": (bearer(altered), "ERR_AUTH_002"),
    }
    for what, (headers, code) in cases.items():
        for path in ("/api/v2/auth/me", "/api/v2/tenants"):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (what, path, response.text)
            assert error_code(response) == code, what
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/api/v2/auth/me", headers=bearer(good)).status_code == 200

    logout = client.post("/api/v2/auth/logout", json={"refresh_token": tokens["refresh_token"]})
    assert logout.status_code == 204
    time.sleep(1.0)  # "within a second"
    for path in ("/api/v2/auth/me", "/api/v2/tenants"):
        response = client.get(path, headers=bearer(good))
        assert response.status_code == 401
        assert error_code(response) == "ERR_AUTH_005"


def test_deactivated_users_tokens_stop_working(client: httpx.Client, stack: Stack) -> None:
    user = register(client)
    token = login(client, user["username"])["access_token"]
    assert client.get("/api/v2/tenants", headers=bearer(token)).status_code == 200
    deactivate(stack, user["username"])
    time.sleep(1.0)
    for path in ("/api/v2/auth/me", "/api/v2/tenants"):
        response = client.get(path, headers=bearer(token))
        assert response.status_code == 401, path
        assert error_code(response) == "ERR_AUTH_005"
    refused = client.post("/api/v2/auth/login", json={"username": user["username"], "password": PASSWORD})
    assert refused.status_code == 403
    assert error_code(refused) == "ERR_AUTH_006"


def test_reused_refresh_token_kills_the_session(client: httpx.Client) -> None:
    user = register(client)
    first = login(client, user["username"])
    rotated = client.post("/api/v2/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]
    time.sleep(1.2)  # past REFRESH_REUSE_GRACE_S (1 s in the tests): a reuse, not a concurrent refresh
    reused = client.post("/api/v2/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401
    assert error_code(reused) == "ERR_AUTH_005"
    latest = client.post("/api/v2/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert error_code(latest) == "ERR_AUTH_005"
    time.sleep(1.0)
    assert error_code(client.get("/api/v2/auth/me", headers=bearer(second["access_token"]))) == "ERR_AUTH_005"


def test_wrong_password_and_unknown_user_answer_alike(client: httpx.Client) -> None:
    user = register(client)
    wrong = client.post("/api/v2/auth/login", json={"username": user["username"], "password": "wrong-pass"})
    unknown = client.post("/api/v2/auth/login", json={"username": _name(), "password": "wrong-pass"})
    assert wrong.status_code == unknown.status_code == 401
    assert {k: v for k, v in wrong.json()["error"].items() if k != "request_id"} == {
        k: v for k, v in unknown.json()["error"].items() if k != "request_id"
    }


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b'{"username": "a", "password": "b", "admin": true}', {"Content-Type": "application/json"}, 422, "VALIDATION"),
        (b'{"username": 12, "password": ["x"]}', {"Content-Type": "application/json"}, 422, "VALIDATION"),
        (b'{"username": "a"', {"Content-Type": "application/json"}, 422, "VALIDATION"),
        (b"username=a&password=b", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "REQUEST_004"),
        (b"plain text", {"Content-Type": "text/plain"}, 415, "REQUEST_004"),
        (b"[]", {"Content-Type": "application/json"}, 422, "VALIDATION"),
        (b"", {"Content-Type": "application/json"}, 422, "VALIDATION"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(
    client: httpx.Client, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = client.post("/api/v2/auth/login", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert code in error_code(response)


def test_validation_errors_name_fields_without_echoing_values(client: httpx.Client) -> None:
    response = client.post(
        "/api/v2/auth/register",
        json={"username": "ok_user", "email": "not-an-email", "password": "sup3r-secret-but-short"[:5]},
    )
    assert response.status_code == 422
    fields = {f["field"] for f in response.json()["error"]["details"]["fields"]}
    assert fields == {"email", "password"}
    assert "sup3r" not in response.text


def test_ten_megabyte_bodies_are_refused_without_reading_them(client: httpx.Client) -> None:
    big = b'{"username": "' + b"a" * (10 * 1024 * 1024) + b'", "password": "x"}'
    response = client.post("/api/v2/auth/login", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert error_code(response) == "ERR_REQUEST_003"

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"a" * (1024 * 1024)

    streamed = client.post("/api/v2/auth/login", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert error_code(streamed) == "ERR_REQUEST_003"


def test_unknown_routes_and_methods_use_the_contract(client: httpx.Client) -> None:
    missing = client.get("/api/v2/nothing-here")
    assert missing.status_code == 404
    assert error_code(missing) == "ERR_REQUEST_001"
    wrong_method = client.get("/api/v2/auth/login")
    assert wrong_method.status_code == 405
    assert error_code(wrong_method) == "ERR_REQUEST_002"
    assert wrong_method.headers["allow"] == "POST"
    # A path served by several routes takes the methods of all of them (RFC 9110's Allow).
    assert client.options("/api/v2/tenants/current").headers["allow"] == "DELETE, GET, HEAD, PATCH"
    assert client.put("/api/v2/settings").headers["allow"] == "GET, HEAD, PATCH"


def test_nul_characters_are_refused_with_a_field_error_at_the_edge_and_behind_it(
    client: httpx.Client, stack: Stack
) -> None:
    body = {"username": "nul" + uuid.uuid4().hex[:8], "email": "a\u0000b@example.com", "password": PASSWORD}
    for path, sent, field in (
        ("/api/v2/auth/register", body, "email"),
        ("/api/v2/auth/login", {"username": "x\u0000y", "password": "whatever1"}, "username"),
    ):
        refused = client.post(path, content=json.dumps(sent), headers={"Content-Type": "application/json"})
        assert refused.status_code == 422, refused.text
        assert [f["field"] for f in refused.json()["error"]["details"]["fields"]] == [field]
    tokens = login(client, register(client)["username"])
    query = client.get("/api/v2/repositories", params={"name": "a\x00"}, headers=bearer(tokens["access_token"]))
    assert query.status_code == 422
    assert error_code(query) == "ERR_VALIDATION_001"
    # A caller past the gateway gets the same answer from the service, not an internal error from the database.
    with grpc.insecure_channel(stack.grpc_target("tenants")) as channel:
        stub = tenants_pb2_grpc.TenantsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateTenant(
                tenants_pb2.CreateTenantRequest(name="bad\x00name", slug="nul-" + uuid.uuid4().hex[:8]),
                metadata=(("authorization", f"Bearer {tokens['access_token']}"),),
                timeout=10,
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_request_id_is_echoed_and_reaches_the_auth_service_log(client: httpx.Client, stack: Stack) -> None:
    request_id = "trace-" + uuid.uuid4().hex
    user = register(client)
    response = client.post(
        "/api/v2/auth/login",
        json={"username": user["username"], "password": PASSWORD},
        headers={"X-Request-ID": request_id},
    )
    assert response.headers["x-request-id"] == request_id
    generated = client.get("/health/live").headers["x-request-id"]
    assert len(generated) == 32
    assert client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"] != (
        "bad id with spaces"
    )
    deadline = time.monotonic() + 5
    while request_id not in stack.logs("auth") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert request_id in stack.logs("gateway")
    assert request_id in stack.logs("auth")


def test_jwks_and_docs_are_public(client: httpx.Client) -> None:
    keys = client.get("/.well-known/jwks.json").json()["keys"]
    assert keys
    assert {k["alg"] for k in keys} == {"EdDSA"}
    assert all("d" not in k for k in keys)  # never a private part
    spec = client.get("/openapi.json").json()
    login_schema = spec["paths"]["/api/v2/auth/login"]["post"]
    assert "examples" in json.dumps(login_schema) or "example" in json.dumps(spec["components"])
    assert client.get("/docs").status_code == 200
