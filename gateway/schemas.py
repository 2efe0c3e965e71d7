"""The public JSON shapes of /api/v2, with the examples shown at /docs."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class Request(BaseModel):
    """Request bodies refuse unknown fields: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterBody(Request):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "username": "testuser",
                    "email": "test@example.com",
                    "password": "testpass123",
                    "full_name": "Test User",
                }
            ]
        }
    )
    username: Annotated[str, Field(min_length=3, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    email: Annotated[str, Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
    password: Annotated[str, Field(min_length=8, max_length=128)]
    full_name: Annotated[str, Field(max_length=200)] = ""


class LoginBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"username": "testuser", "password": "testpass123"}]})
    username: Annotated[str, Field(min_length=1, max_length=254)]
    password: Annotated[str, Field(min_length=1, max_length=128)]


class RefreshBody(Request):
    model_config = ConfigDict(json_schema_extra={"examples": [{"refresh_token": "rt_Jx2...Q"}]})
    refresh_token: Annotated[str, Field(min_length=1, max_length=512)]


class UserOut(BaseModel):
    id: str
    username: str
    email: str
    full_name: str
    is_active: bool
    created_at: dt.datetime


class RegisteredOut(UserOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6e",
                    "username": "testuser",
                    "email": "test@example.com",
                    "full_name": "Test User",
                    "is_active": True,
                    "created_at": "2026-11-26T08:00:00Z",
                    "personal_tenant_id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f",
                }
            ]
        }
    )
    personal_tenant_id: str


class TokensOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJFZERTQSIsImtpZCI6Ims...",
                    "refresh_token": "rt_Jx2...Q",
                    "token_type": "bearer",
                    "expires_in": 900,
                    "tenant_id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f",
                }
            ]
        }
    )
    access_token: str
    refresh_token: str
    token_type: str
    expires_in: int
    tenant_id: str


class MeOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user": RegisteredOut.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
                    "tenant_id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f",
                    "role": "owner",
                }
            ]
        }
    )
    user: UserOut
    tenant_id: str
    role: str


class TenantOut(BaseModel):
    id: str
    name: str
    slug: str
    personal: bool
    role: str
    created_at: dt.datetime


class TenantPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {
                            "id": "01937a2e-7c41-7b51-9d8e-3f1c2b4a5d6f",
                            "name": "Test User",
                            "slug": "~testuser",
                            "personal": True,
                            "role": "owner",
                            "created_at": "2026-11-26T08:00:00Z",
                        }
                    ],
                    "next_cursor": None,
                }
            ]
        }
    )
    items: list[TenantOut]
    next_cursor: str | None


class ErrorBody(BaseModel):
    code: str = Field(examples=["ERR_AUTH_001"])
    message: str = Field(examples=["Invalid username or password"])
    request_id: str | None = Field(examples=["5f0b3c7e9a2d4e6f8a1b2c3d4e5f6a7b"])
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    """Every error answer has this shape; API_ERRORS.md lists the codes."""

    error: ErrorBody


class HealthOut(BaseModel):
    status: str
    checks: dict[str, bool] = Field(default_factory=dict)
