"""Fetching the auth service's public keys over gRPC, for verifiers outside auth."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from libs.common import tracing
from libs.common.deadlines import outgoing_timeout
from libs.common.tokens import JwksFetcher
from repolens.auth.v1 import auth_pb2, auth_pb2_grpc


def grpc_jwks_fetcher(channel: grpc.aio.Channel, *, deadline_s: float) -> JwksFetcher:
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    async def fetch() -> list[Mapping[str, Any]]:
        # Inside a service this runs while serving an RPC: it gets no more than that RPC's remaining time.
        metadata: list[tuple[str, str]] = []
        with tracing.outgoing_rpc(stub.GetJwks, metadata):
            response = await stub.GetJwks(
                auth_pb2.GetJwksRequest(), timeout=outgoing_timeout(deadline_s), metadata=metadata
            )
        return [MessageToDict(key, preserving_proto_field_name=True) for key in response.keys]

    return fetch
