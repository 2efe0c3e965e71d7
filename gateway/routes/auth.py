"""/api/v2/auth: registration, login, token refresh, logout, the caller."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request, Response, status
from google.protobuf.json_format import MessageToDict

from gateway.deps import BackendsDep, CurrentCaller
from gateway.ratelimit import client_address, rate_limits
from gateway.schemas import (
    ErrorOut,
    LoginBody,
    MeOut,
    RefreshBody,
    RegisterBody,
    RegisteredOut,
    SwitchTenantBody,
    TokensOut,
    UserOut,
)
from repolens.auth.v1 import auth_pb2

router = APIRouter(prefix="/api/v2/auth", tags=["auth"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "Validation failed (`ERR_VALIDATION_001`)"}
}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, invalid, expired or revoked token"}
}
_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorOut, "description": "Rate limited (`ERR_RATE_001`); see `Retry-After`"}
}


def _user(user: auth_pb2.User) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        email=user.email,
        full_name=user.full_name,
        is_active=user.is_active,
        created_at=user.created_at.ToDatetime(tzinfo=dt.UTC),
    )


def _tokens(tokens: auth_pb2.TokenPair) -> TokensOut:
    return TokensOut(
        **MessageToDict(tokens, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=RegisteredOut,
    responses={**_ERRORS, **_LIMITED, 409: {"model": ErrorOut, "description": "Username or email taken"}},
    summary="Create a user and its personal tenant",
)
async def register(body: RegisterBody, request: Request, backends: BackendsDep) -> RegisteredOut:
    limits = rate_limits(request)
    await limits.acquire(limits.register, client_address(request))
    reply: auth_pb2.RegisterResponse = await backends.call(
        backends.auth.Register,
        auth_pb2.RegisterRequest(
            username=body.username, email=body.email, password=body.password, full_name=body.full_name
        ),
        request=request,
        as_gateway=True,
    )
    return RegisteredOut(**_user(reply.user).model_dump(), personal_tenant_id=reply.personal_tenant_id)


@router.post(
    "/login",
    response_model=TokensOut,
    responses={
        **_ERRORS,
        401: {"model": ErrorOut, "description": "Invalid username or password"},
        429: {
            "model": ErrorOut,
            "description": "Too many attempts from this address (`ERR_RATE_001`) or failures for this username "
            "(`ERR_RATE_002`); see `Retry-After`",
        },
    },
    summary="Tokens for the user's last used (or personal) tenant",
)
async def login(body: LoginBody, request: Request, backends: BackendsDep) -> TokensOut:
    async with rate_limits(request).login_attempt(address=client_address(request), username=body.username):
        reply: auth_pb2.LoginResponse = await backends.call(
            backends.auth.Login,
            auth_pb2.LoginRequest(username=body.username, password=body.password),
            request=request,
            as_gateway=True,
        )
    return _tokens(reply.tokens)


@router.post(
    "/refresh",
    response_model=TokensOut,
    responses={
        **_ERRORS,
        **_LIMITED,
        401: {"model": ErrorOut, "description": "Unknown, expired or reused refresh token"},
    },
    summary="Rotate the refresh token; reusing a spent one revokes the session",
)
async def refresh(body: RefreshBody, request: Request, backends: BackendsDep) -> TokensOut:
    limits = rate_limits(request)
    await limits.acquire(limits.tokens, client_address(request))
    reply: auth_pb2.RefreshTokensResponse = await backends.call(
        backends.auth.RefreshTokens,
        auth_pb2.RefreshTokensRequest(refresh_token=body.refresh_token),
        request=request,
        as_gateway=True,
    )
    return _tokens(reply.tokens)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_ERRORS, **_LIMITED, 401: {"model": ErrorOut, "description": "Unknown refresh token"}},
    summary="End the login (its sessions in every tenant); their access tokens stop working within a second",
)
async def logout(body: RefreshBody, request: Request, backends: BackendsDep) -> Response:
    limits = rate_limits(request)
    await limits.acquire(limits.tokens, client_address(request))
    await backends.call(
        backends.auth.Logout,
        auth_pb2.LogoutRequest(refresh_token=body.refresh_token),
        request=request,
        as_gateway=True,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_UNAUTHORIZED, **_LIMITED},
    summary="End every session of the caller, on every device; their access tokens stop working within a second",
)
async def logout_all(caller: CurrentCaller, request: Request, backends: BackendsDep) -> Response:
    await backends.call(backends.auth.LogoutAll, auth_pb2.LogoutAllRequest(), request=request, token=caller.token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/switch-tenant",
    response_model=TokensOut,
    responses={
        **_ERRORS,
        **_UNAUTHORIZED,
        404: {"model": ErrorOut, "description": "Not a tenant of yours"},
        409: {"model": ErrorOut, "description": "The token's own tenant (`ERR_AUTH_012`)"},
    },
    summary="Tokens for another tenant the caller belongs to, in a new session of the same login (it ends with "
    "the login)",
)
async def switch_tenant(
    body: SwitchTenantBody, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> TokensOut:
    reply: auth_pb2.SwitchTenantResponse = await backends.call(
        backends.auth.SwitchTenant,
        auth_pb2.SwitchTenantRequest(tenant_id=body.tenant_id),
        request=request,
        token=caller.token,
    )
    return _tokens(reply.tokens)


@router.get("/me", response_model=MeOut, responses=_UNAUTHORIZED, summary="The caller, its tenant and role")
async def me(caller: CurrentCaller, request: Request, backends: BackendsDep) -> MeOut:
    reply: auth_pb2.GetMeResponse = await backends.call(
        backends.auth.GetMe, auth_pb2.GetMeRequest(), request=request, token=caller.token
    )
    return MeOut(user=_user(reply.user), tenant_id=reply.tenant_id, role=reply.role)
