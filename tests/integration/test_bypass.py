"""Calls that skip the gateway: every user-facing RPC needs a valid token, internal ones a service identity."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import symbol_database
from google.protobuf.descriptor import MethodDescriptor

from libs.common.grpc_client import error_from_rpc
from repolens.auth.v1 import auth_pb2
from repolens.tenants.v1 import tenants_pb2
from services.auth import signing
from services.auth.domain import SigningKey
from tests.integration.conftest import Services

TENANT_METHODS = list(tenants_pb2.DESCRIPTOR.services_by_name["TenantsService"].methods)
USER_AUTH_METHODS = [
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods_by_name[name] for name in ("GetMe", "SwitchTenant")
]


def _forged_tokens() -> dict[str, str]:
    claims = {
        "sub": str(uuid.uuid4()),
        "tid": str(uuid.uuid4()),
        "role": "owner",
        "sid": str(uuid.uuid4()),
        "jti": "x",
        "iss": "repolens-auth",
        "aud": "repolens",
        "iat": int(dt.datetime.now(dt.UTC).timestamp()),
        "exp": int(dt.datetime.now(dt.UTC).timestamp()) + 600,
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


async def _call(target: str, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...]) -> str:
    request_class = symbol_database.Default().GetSymbol(method.input_type.full_name)
    response_class = symbol_database.Default().GetSymbol(method.output_type.full_name)
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request_class(), metadata=metadata, timeout=5)
    assert caught.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    return error_from_rpc(caught.value).code


@pytest.mark.parametrize("method", TENANT_METHODS + USER_AUTH_METHODS, ids=lambda m: m.name)
async def test_user_rpcs_refuse_missing_and_forged_tokens(method: MethodDescriptor, services: Services) -> None:
    target = services.auth_target if method.containing_service.name == "AuthService" else services.tenants_target
    for what, token in _forged_tokens().items():
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        assert await _call(target, method, metadata) == "ERR_AUTH_002", what


async def test_internal_rpc_refuses_user_tokens(services: Services) -> None:
    method = tenants_pb2.DESCRIPTOR.services_by_name["TenantsInternalService"].methods_by_name["GetTenantSecrets"]
    for token in _forged_tokens().values():
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        assert await _call(services.tenants_target, method, metadata) == "ERR_SERVICE_001"
