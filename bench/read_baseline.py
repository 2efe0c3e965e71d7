"""The baseline of bench/read_path.py: the two reads of the stack done by one FastAPI app at its best, no gRPC hop.

    uvicorn --app-dir bench read_baseline:app --workers 2 --loop uvloop --http httptools --no-access-log

Each request verifies the EdDSA access token (with the stack's public keys, verified tokens remembered until they
expire, as the stack does), then reads what the stack reads, by primary key, through a psycopg pool:
`GET /api/v2/auth/me` the user joined with its session and membership, `GET /api/v2/analyses/{id}` the tenant's
schema and the caller's role, then the analysis row. Configured by BASELINE_DATABASE_URL and BASELINE_JWKS (the
key set as JSON).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import ORJSONResponse, Response
from jwt.algorithms import OKPAlgorithm
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

_KEYS: dict[str, Any] = {
    key["kid"]: OKPAlgorithm.from_jwk(key) for key in json.loads(os.environ.get("BASELINE_JWKS", "[]"))
}
_VERIFIED: dict[str, dict[str, Any]] = {}
_POOL = AsyncConnectionPool(os.environ.get("BASELINE_DATABASE_URL", ""), min_size=4, max_size=10, open=False)

_ME = """
SELECT u.id, u.username, u.email, u.full_name, u.is_active, u.created_at, s.revoked_at, s.expires_at, m.role
FROM auth.users u JOIN auth.sessions s ON s.user_id = u.id
LEFT JOIN auth.memberships m ON m.user_id = u.id AND m.tenant_id = s.tenant_id AND NOT m.removed
WHERE u.id = %s AND s.id = %s
"""
_SCOPE = """
SELECT t.schema_name, m.role FROM analysis.tenant_schemas t
LEFT JOIN analysis.memberships m ON m.tenant_id = t.tenant_id AND m.user_id = %s AND NOT m.removed
WHERE t.tenant_id = %s
"""
_ANALYSIS = (
    "SELECT id, repository_id, ref, status, progress, step, timings, attempts, error_code, error_message, "
    "commit_sha, created_at, started_at, finished_at FROM {}.analyses WHERE id = %s"
)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    await _POOL.open(wait=True)
    yield
    await _POOL.close()


app = FastAPI(lifespan=_lifespan, docs_url=None, redoc_url=None, openapi_url=None)


def _claims(authorization: str | None) -> dict[str, Any]:
    token = (authorization or "").removeprefix("Bearer ").strip()
    claims = _VERIFIED.get(token)
    if claims is not None and claims["exp"] > time.time():
        return claims
    try:
        kid = jwt.get_unverified_header(token).get("kid", "")
        claims = jwt.decode(token, key=_KEYS[kid], algorithms=["EdDSA"], audience="repolens", issuer="repolens-auth")
    except (jwt.PyJWTError, KeyError) as exc:
        raise HTTPException(401) from exc
    _VERIFIED[token] = claims
    return claims


def _json(row: dict[str, Any]) -> Response:
    return ORJSONResponse({k: str(v) if isinstance(v, uuid.UUID) else v for k, v in row.items()})


@app.get("/api/v2/auth/me")
async def me(authorization: str | None = Header(None)) -> Response:
    claims = _claims(authorization)
    async with _POOL.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_ME, (claims["sub"], claims["sid"]), prepare=True)
        row = await cursor.fetchone()
    if row is None or row["revoked_at"] is not None or row["role"] is None:
        raise HTTPException(401)
    return _json(
        {
            "user": {k: row[k] for k in ("id", "username", "email", "full_name", "is_active", "created_at")},
            "tenant_id": claims["tid"],
            "role": row["role"],
        }
    )


@app.get("/api/v2/analyses/{analysis_id}")
async def analysis(analysis_id: uuid.UUID, authorization: str | None = Header(None)) -> Response:
    claims = _claims(authorization)
    async with _POOL.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_SCOPE, (claims["sub"], claims["tid"]), prepare=True)
        scope = await cursor.fetchone()
        if scope is None or not scope["role"]:
            raise HTTPException(404)
        await cursor.execute(sql.SQL(_ANALYSIS).format(sql.Identifier(scope["schema_name"])), (analysis_id,))
        row = await cursor.fetchone()
    if row is None:
        raise HTTPException(404)
    return _json(row)
