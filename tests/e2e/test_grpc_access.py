"""Every RPC of every service, called past the gateway, gives nothing without the right credential.

The RPCs come from the service descriptors, so a new one is covered without anyone adding it here. Each is
called without a token, with forged tokens, and (unless it is public) with another tenant's valid token while
its request names tenant A's resources: the answer is an error, or a reply that holds nothing of A's.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import symbol_database
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from libs.common.grpc_client import error_from_rpc
from libs.devstack.stack import Stack
from repolens.analysis.v1 import analysis_pb2
from repolens.auth.v1 import auth_pb2
from repolens.tenants.v1 import tenants_pb2
from services.auth import signing
from services.auth.domain import SigningKey
from tests.e2e.isolation import TwoTenants, two_tenants
from tests.e2e.people import Person, register

# Which process serves each service of ours.
SERVES = {
    "repolens.auth.v1.AuthService": "auth",
    "repolens.tenants.v1.TenantsService": "tenants",
    "repolens.tenants.v1.TenantsInternalService": "tenants",
    "repolens.analysis.v1.AnalysisService": "analysis",
}
METHODS = [
    method
    for module in (auth_pb2, tenants_pb2, analysis_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
# What may be called without a user's token: the only public RPC, and those that take a service's credential.
PUBLIC = {"/repolens.auth.v1.AuthService/GetJwks"}
GATEWAY_ONLY = {
    f"/repolens.auth.v1.AuthService/{name}"
    for name in ("Register", "Login", "RefreshTokens", "Logout", "ExchangeAccessToken")
} | {f"/repolens.analysis.v1.AnalysisService/{name}" for name in ("ReceiveGithubEvent", "GetBadge")}
ANALYSIS_ONLY = {
    f"/repolens.tenants.v1.TenantsInternalService/{m.name}"
    for m in tenants_pb2.DESCRIPTOR.services_by_name["TenantsInternalService"].methods
}


def _name(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _forged_tokens() -> dict[str, str]:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {
        "sub": str(uuid.uuid4()),
        "tid": str(uuid.uuid4()),
        "role": "owner",
        "sid": str(uuid.uuid4()),
        "jti": "x",
        "iss": "repolens-auth",
        "aud": "repolens",
        "iat": now,
        "exp": now + 600,
    }

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    kid, public, sealed = signing.new_key_material(bytes(32))
    key = SigningKey(kid, public, sealed, dt.datetime.now(dt.UTC), None)
    stranger = signing.Signer(
        kid=kid,
        private_key=signing.open_private_key(key, bytes(32)),
        issuer="repolens-auth",
        audience="repolens",
        ttl_s=600,
    )
    return {
        "none": "",
        "garbage": "not.a.token",
        "alg none": b64({"alg": "none", "kid": "k"}) + "." + b64(claims) + ".",
        "unknown key": stranger.access_token(
            user_id=uuid.uuid4(),
            tenant_id=uuid.uuid4(),
            role="owner",
            session_id=uuid.uuid4(),
            now=dt.datetime.now(dt.UTC),
        ),
    }


def _request(method: MethodDescriptor, values: dict[str, str]) -> Message:
    """The method's request with every id (and token) field naming tenant A's resources."""
    request: Message = symbol_database.Default().GetSymbol(method.input_type.full_name)()
    for field in request.DESCRIPTOR.fields:
        if field.type != FieldDescriptor.TYPE_STRING or field.is_repeated:
            continue
        value = {
            "tenant_id": values["a_tenant_id"],
            "user_id": values["a_member_id"],
            "repository_id": values["a_repository_id"],
            "analysis_id": values["a_analysis_id"],
            "base_analysis_id": values["a_analysis_id"],
            "token": values["a_invitation_token"],
            "refresh_token": values["a_refresh_token"],
            "username": values["a_username"],
        }.get(field.name)
        if value is not None:
            setattr(request, field.name, value)
    return request


async def _call(stack: Stack, method: MethodDescriptor, request: Message, token: str) -> Message | grpc.aio.AioRpcError:
    response_class = symbol_database.Default().GetSymbol(method.output_type.full_name)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(stack.grpc_target(SERVES[method.containing_service.full_name])) as channel:
        call = channel.unary_unary(
            _name(method),
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            reply: Message = await call(request, metadata=metadata, timeout=15)
        except grpc.aio.AioRpcError as exc:
            return exc
        return reply


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def world(client: httpx.Client) -> TwoTenants:
    world = two_tenants(client)
    world.values["a_refresh_token"] = world.a["owner"].refresh_token
    world.values["a_username"] = world.a["member"].username
    return world


@pytest.fixture(scope="module")
def stranger(client: httpx.Client) -> Person:
    """A user of another tenant (their personal one, which no RPC can delete)."""
    return register(client)


def test_the_test_knows_every_rpc() -> None:
    """Public and service-only RPCs are chosen here, in review: a new RPC is in no list, so it takes a user token."""
    names = {_name(m) for m in METHODS}
    assert {m.containing_service.full_name for m in METHODS} == set(SERVES)
    assert names >= PUBLIC | GATEWAY_ONLY | ANALYSIS_ONLY
    assert len(names) == len(METHODS) > 30


@pytest.mark.parametrize("method", METHODS, ids=_name)
async def test_no_token_and_forged_tokens_get_nothing(
    method: MethodDescriptor, stack: Stack, world: TwoTenants
) -> None:
    if _name(method) in PUBLIC:
        reply = await _call(stack, method, _request(method, world.values), "")
        assert isinstance(reply, Message), reply
        return
    expected = "ERR_SERVICE_001" if _name(method) in GATEWAY_ONLY | ANALYSIS_ONLY else "ERR_AUTH_002"
    for what, token in _forged_tokens().items():
        reply = await _call(stack, method, _request(method, world.values), token)
        assert isinstance(reply, grpc.aio.AioRpcError), f"{what}: {reply}"
        assert reply.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), what
        assert error_from_rpc(reply).code == expected, what


@pytest.mark.parametrize("method", [m for m in METHODS if _name(m) not in PUBLIC], ids=_name)
async def test_another_tenants_token_gets_nothing_of_a(
    method: MethodDescriptor, stack: Stack, world: TwoTenants, stranger: Person
) -> None:
    before = world.snapshot()
    reply = await _call(stack, method, _request(method, world.values), stranger.access_token)
    if _name(method) in GATEWAY_ONLY | ANALYSIS_ONLY:  # a user's token is never a service's credential
        assert isinstance(reply, grpc.aio.AioRpcError)
        assert error_from_rpc(reply).code == "ERR_SERVICE_001"
    elif isinstance(reply, Message):
        text = MessageToJson(reply)
        leaked = [marker for marker in world.a_markers() if marker and marker in text]
        assert not leaked, f"{_name(method)} gave tenant A's {leaked}"
    else:
        assert reply.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), reply
    assert world.snapshot() == before
