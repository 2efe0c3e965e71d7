"""Users who register while NATS is down still get exactly one personal tenant once it is back."""

from __future__ import annotations

import asyncio
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.config import CommonSettings
from libs.devstack.servers import EmbeddedNats
from repolens.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.integration.conftest import eventually, gateway_channel, start_services


async def test_no_event_lost_and_none_applied_twice(fresh_database: str, own_nats: EmbeddedNats) -> None:
    services = await start_services(fresh_database, own_nats.url)
    engine = create_async_engine(CommonSettings(database_url=fresh_database).sqlalchemy_url)
    try:
        async with gateway_channel(services.auth_target) as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            own_nats.stop()
            user_ids = []
            for _ in range(8):
                name = "o" + uuid.uuid4().hex[:10]
                reply = await auth.Register(
                    auth_pb2.RegisterRequest(username=name, email=f"{name}@example.com", password="password123"),
                    timeout=10,
                )
                user_ids.append(reply.user.id)
            await asyncio.sleep(3)
            own_nats.start()

        async def all_have_tenants() -> bool:
            async with engine.connect() as conn:
                owners = (
                    await conn.execute(sa.text("SELECT count(DISTINCT user_id) FROM tenants.memberships"))
                ).scalar_one()
            return int(owners) == len(user_ids)

        await eventually(all_have_tenants, timeout_s=30, what="every user's personal tenant")
        await asyncio.sleep(1)  # room for any duplicate delivery to show up
        async with engine.connect() as conn:
            per_user = (
                await conn.execute(
                    sa.text(
                        "SELECT m.user_id, count(*) FROM tenants.memberships m"
                        " JOIN tenants.tenants t ON t.id = m.tenant_id AND t.personal GROUP BY m.user_id"
                    )
                )
            ).all()
            unsent = (
                await conn.execute(sa.text("SELECT count(*) FROM auth.outbox WHERE published_at IS NULL"))
            ).scalar_one()
        assert sorted(str(user) for user, _ in per_user) == sorted(user_ids)
        assert {count for _, count in per_user} == {1}
        assert unsent == 0
    finally:
        await services.close()
        await engine.dispose()
