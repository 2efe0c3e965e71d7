"""Master-key rotation of the tenants service: `keys rewrap` re-wraps every data key, secrets survive."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import uuid
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.config import CommonSettings
from libs.common.tokens import AccessClaims
from services.tenants import use_cases
from services.tenants.__main__ import main as tenants_cli
from services.tenants.use_cases import Tenants

OLD, NEW = bytes(range(32)), bytes(range(32, 64))


def _claims() -> AccessClaims:
    return AccessClaims(
        user_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        role="owner",
        session_id=uuid.uuid4(),
        token_id="t",
        issued_at=0,
        expires_at=2**40,
    )


async def test_rewrap_moves_data_keys_to_the_new_master_key(
    fresh_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_async_engine(CommonSettings(database_url=fresh_database).sqlalchemy_url)
    try:
        old = Tenants(engine=engine, master_key=OLD)
        claims = _claims()
        membership = await use_cases.create_tenant(tenants=old, claims=claims, name="Acme", slug="acme-keys")
        acting = dataclasses.replace(claims, tenant_id=membership.tenant.id)
        await use_cases.update_settings(
            tenants=old, claims=acting, fields=["github_token"], values={"github_token": "ghp_rotate_me_1234"}
        )
        old_file = tmp_path / "old-master-key"
        old_file.write_text(base64.b64encode(OLD).decode(), encoding="utf-8")
        monkeypatch.setenv("DATABASE_URL", fresh_database)
        monkeypatch.setenv("TENANTS_MASTER_KEY", base64.b64encode(NEW).decode())
        code = await asyncio.to_thread(tenants_cli, ["keys", "rewrap", "--old-master-key-file", str(old_file)])
        assert code == 0
        tenant_id = str(membership.tenant.id)
        clear, _ = await use_cases.tenant_secrets(tenants=Tenants(engine=engine, master_key=NEW), tenant_id=tenant_id)
        assert clear == {"github_token": "ghp_rotate_me_1234"}
        with pytest.raises(InvalidTag):
            await use_cases.tenant_secrets(tenants=old, tenant_id=tenant_id)
    finally:
        await engine.dispose()
