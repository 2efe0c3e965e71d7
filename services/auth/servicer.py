"""gRPC controller of the auth service: protobuf in, use case, protobuf out."""

from __future__ import annotations

from typing import Any

import grpc

from libs.common.events import timestamp
from libs.common.identity import caller
from libs.common.pagination import encode_cursor
from repolens.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth import use_cases
from services.auth.domain import AccessToken, Tokens, User
from services.auth.use_cases import Auth

Context = grpc.aio.ServicerContext[Any, Any]


def _user(user: User) -> auth_pb2.User:
    return auth_pb2.User(
        id=str(user.id),
        username=user.username,
        email=user.email,
        full_name=user.full_name,
        is_active=user.is_active,
        created_at=timestamp(user.created_at),
    )


def _tokens(tokens: Tokens) -> auth_pb2.TokenPair:
    return auth_pb2.TokenPair(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        token_type="bearer",  # noqa: S106 # nosec B106 # the OAuth token type, not a secret
        expires_in=tokens.expires_in,
        tenant_id=str(tokens.tenant_id),
    )


def _access_token(token: AccessToken) -> auth_pb2.AccessToken:
    message = auth_pb2.AccessToken(
        id=str(token.id),
        name=token.name,
        scopes=list(token.scopes),
        prefix=token.prefix,
        created_at=timestamp(token.created_at),
        expires_at=timestamp(token.expires_at),
        tenant_id=str(token.tenant_id),
    )
    if token.last_used_at is not None:
        message.last_used_at.CopyFrom(timestamp(token.last_used_at))
    return message


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, *, auth: Auth):
        self._auth = auth

    async def Register(self, request: auth_pb2.RegisterRequest, context: Context) -> auth_pb2.RegisterResponse:
        user = await use_cases.register(
            auth=self._auth,
            username=request.username,
            email=request.email,
            password=request.password,
            full_name=request.full_name,
        )
        return auth_pb2.RegisterResponse(user=_user(user), personal_tenant_id=str(user.personal_tenant_id))

    async def Login(self, request: auth_pb2.LoginRequest, context: Context) -> auth_pb2.LoginResponse:
        tokens = await use_cases.login(auth=self._auth, username=request.username, password=request.password)
        return auth_pb2.LoginResponse(tokens=_tokens(tokens))

    async def RefreshTokens(
        self, request: auth_pb2.RefreshTokensRequest, context: Context
    ) -> auth_pb2.RefreshTokensResponse:
        tokens = await use_cases.refresh(auth=self._auth, refresh_token=request.refresh_token)
        return auth_pb2.RefreshTokensResponse(tokens=_tokens(tokens))

    async def Logout(self, request: auth_pb2.LogoutRequest, context: Context) -> auth_pb2.LogoutResponse:
        await use_cases.logout(auth=self._auth, refresh_token=request.refresh_token)
        return auth_pb2.LogoutResponse()

    async def LogoutAll(self, request: auth_pb2.LogoutAllRequest, context: Context) -> auth_pb2.LogoutAllResponse:
        ended = await use_cases.logout_all(auth=self._auth, claims=caller())
        return auth_pb2.LogoutAllResponse(sessions_ended=ended)

    async def GetMe(self, request: auth_pb2.GetMeRequest, context: Context) -> auth_pb2.GetMeResponse:
        claims = caller()
        me = await use_cases.me(auth=self._auth, claims=claims)
        return auth_pb2.GetMeResponse(
            user=_user(me.user), tenant_id=str(me.tenant_id), role=me.role, session_id=str(me.session_id)
        )

    async def SwitchTenant(
        self, request: auth_pb2.SwitchTenantRequest, context: Context
    ) -> auth_pb2.SwitchTenantResponse:
        claims = caller()
        tokens = await use_cases.switch_tenant(auth=self._auth, claims=claims, tenant_id=request.tenant_id)
        return auth_pb2.SwitchTenantResponse(tokens=_tokens(tokens))

    async def GetJwks(self, request: auth_pb2.GetJwksRequest, context: Context) -> auth_pb2.GetJwksResponse:
        return auth_pb2.GetJwksResponse(keys=[auth_pb2.Jwk(**key) for key in self._auth.keyring.jwks])

    async def CreateAccessToken(
        self, request: auth_pb2.CreateAccessTokenRequest, context: Context
    ) -> auth_pb2.CreateAccessTokenResponse:
        created, token = await use_cases.create_access_token(
            auth=self._auth,
            claims=caller(),
            name=request.name,
            scopes=list(request.scopes),
            expires_in_days=request.expires_in_days,
        )
        return auth_pb2.CreateAccessTokenResponse(access_token=_access_token(created), token=token)

    async def ListAccessTokens(
        self, request: auth_pb2.ListAccessTokensRequest, context: Context
    ) -> auth_pb2.ListAccessTokensResponse:
        page = await use_cases.list_access_tokens(
            auth=self._auth, claims=caller(), page_size=request.page_size, cursor=request.page_token
        )
        return auth_pb2.ListAccessTokensResponse(
            access_tokens=[_access_token(t) for t in page.items],
            next_page_token=encode_cursor(page.next_cursor) if page.next_cursor else "",
        )

    async def RevokeAccessToken(
        self, request: auth_pb2.RevokeAccessTokenRequest, context: Context
    ) -> auth_pb2.RevokeAccessTokenResponse:
        await use_cases.revoke_access_token(auth=self._auth, claims=caller(), access_token_id=request.access_token_id)
        return auth_pb2.RevokeAccessTokenResponse()

    async def ExchangeAccessToken(
        self, request: auth_pb2.ExchangeAccessTokenRequest, context: Context
    ) -> auth_pb2.ExchangeAccessTokenResponse:
        access_token, expires_in = await use_cases.exchange_access_token(auth=self._auth, token=request.token)
        return auth_pb2.ExchangeAccessTokenResponse(access_token=access_token, expires_in=expires_in)
