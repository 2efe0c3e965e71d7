"""GitHub deliveries on real PostgreSQL: each id is taken once, and forgotten once it is old enough never to come
back."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from services.analysis import repository as repo
from services.analysis import use_cases
from services.analysis.use_cases import HOOK_DELIVERIES_KEPT, Analyses


async def test_a_delivery_is_taken_once(analyses: Analyses) -> None:
    repository = uuid.uuid4()
    async with analyses.engine.begin() as conn:
        assert await repo.first_delivery(conn, delivery_id="d-once", repository_id=repository)
        assert not await repo.first_delivery(conn, delivery_id="d-once", repository_id=repository)


async def test_old_deliveries_are_purged_and_recent_ones_kept(analyses: Analyses) -> None:
    repository = uuid.uuid4()
    async with analyses.engine.begin() as conn:
        for name in ("old", "recent"):
            assert await repo.first_delivery(conn, delivery_id=f"d-{name}", repository_id=repository)
        await conn.execute(
            repo.hook_deliveries.update()
            .where(repo.hook_deliveries.c.delivery_id == "d-old")
            .values(received_at=sa.func.now() - HOOK_DELIVERIES_KEPT - sa.text("interval '1 minute'"))
        )
    assert await use_cases.purge_hook_deliveries(analyses=analyses) >= 1
    async with analyses.engine.connect() as conn:
        left = set((await conn.execute(sa.select(repo.hook_deliveries.c.delivery_id))).scalars())
    assert "d-old" not in left
    assert "d-recent" in left
    # Purged, the old id is a new delivery again: GitHub would not send it after so long.
    async with analyses.engine.begin() as conn:
        assert await repo.first_delivery(conn, delivery_id="d-old", repository_id=repository)
