"""Fetching the auth service's public keys over gRPC, for verifiers outside auth."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from libs.common.deadlines import outgoing_timeout
from libs.common.grpc_client import call
from libs.common.tokens import JwksFetcher
from repolens.auth.v1 import auth_pb2, auth_pb2_grpc


def grpc_jwks_fetcher(channel: grpc.aio.Channel, *, deadline_s: float) -> JwksFetcher:
    stub = auth_pb2_grpc.AuthServiceStub(channel)

    async def fetch() -> list[Mapping[str, Any]]:
        # Inside a service this runs while serving an RPC: it gets no more than that RPC's remaining time.
        response = await call(stub.GetJwks, auth_pb2.GetJwksRequest(), deadline_s=outgoing_timeout(deadline_s))
        return [MessageToDict(key, preserving_proto_field_name=True) for key in response.keys]

    return fetch
