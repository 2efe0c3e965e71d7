"""/api/v2/tokens: personal access tokens, for CI jobs and scripts (docs/tokens.md)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request, Response, status

from gateway.deps import BackendsDep, CurrentCaller
from gateway.params import Cursor, Id, Limit
from gateway.schemas import AccessTokenOut, AccessTokenPage, CreateAccessTokenBody, CreatedAccessTokenOut, ErrorOut
from repolens.auth.v1 import auth_pb2

router = APIRouter(tags=["tokens"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, invalid, expired or revoked token"},
    403: {"model": ErrorOut, "description": "Called with a personal access token (`ERR_AUTH_013`): log in instead"},
    422: {"model": ErrorOut, "description": "Validation failed"},
}


def _utc(stamp: Any) -> dt.datetime:
    value: dt.datetime = stamp.ToDatetime(tzinfo=dt.UTC)
    return value


def _out(token: auth_pb2.AccessToken) -> AccessTokenOut:
    return AccessTokenOut(
        id=token.id,
        name=token.name,
        scopes=list(token.scopes),
        prefix=token.prefix,
        tenant_id=token.tenant_id,
        created_at=_utc(token.created_at),
        expires_at=_utc(token.expires_at),
        last_used_at=_utc(token.last_used_at) if token.HasField("last_used_at") else None,
    )


@router.post(
    "/api/v2/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=CreatedAccessTokenOut,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "100 live tokens already (`ERR_AUTH_015`)"}},
    summary="Create a personal access token in the current tenant; the token is in this answer only",
)
async def create_access_token(
    body: CreateAccessTokenBody, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> CreatedAccessTokenOut:
    reply: auth_pb2.CreateAccessTokenResponse = await backends.call(
        backends.auth.CreateAccessToken,
        auth_pb2.CreateAccessTokenRequest(
            name=body.name, scopes=list(body.scopes), expires_in_days=body.expires_in_days
        ),
        request=request,
        token=caller.token,
    )
    return CreatedAccessTokenOut(**_out(reply.access_token).model_dump(), token=reply.token)


@router.get(
    "/api/v2/tokens",
    response_model=AccessTokenPage,
    responses=_ERRORS,
    summary="The caller's live personal access tokens in the current tenant (expired ones included), oldest first",
)
async def list_access_tokens(
    caller: CurrentCaller, request: Request, backends: BackendsDep, limit: Limit = 50, cursor: Cursor = None
) -> AccessTokenPage:
    reply: auth_pb2.ListAccessTokensResponse = await backends.call(
        backends.auth.ListAccessTokens,
        auth_pb2.ListAccessTokensRequest(page_size=limit, page_token=cursor or ""),
        request=request,
        token=caller.token,
    )
    return AccessTokenPage(items=[_out(t) for t in reply.access_tokens], next_cursor=reply.next_page_token or None)


@router.delete(
    "/api/v2/tokens/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ERRORS, 404: {"model": ErrorOut, "description": "Not a live token of the caller's (`ERR_AUTH_014`)"}},
    summary="Revoke a personal access token; every request with it fails within a second",
)
async def revoke_access_token(token_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep) -> Response:
    await backends.call(
        backends.auth.RevokeAccessToken,
        auth_pb2.RevokeAccessTokenRequest(access_token_id=token_id),
        request=request,
        token=caller.token,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
