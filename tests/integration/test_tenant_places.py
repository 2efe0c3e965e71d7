"""Leases on real PostgreSQL: a tenant's places on the workers and one analysis per repository hold across workers,
a busy repository gives its place back, and a holder that stops renewing loses its leases to the next."""

from __future__ import annotations

import asyncio
import uuid

from services.analysis import use_cases
from services.analysis.use_cases import Analyses


async def _turn(
    analyses: Analyses, tenant: uuid.UUID, repository: uuid.UUID, holder: str, *, places: int = 2, lease_s: float = 30
) -> bool:
    return await use_cases.take_turn(
        analyses=analyses, tenant_id=tenant, repository_id=repository, holder=holder, places=places, lease_s=lease_s
    )


async def test_a_tenant_runs_at_most_its_places_across_workers(analyses: Analyses) -> None:
    tenant, neighbour = uuid.uuid4(), uuid.uuid4()
    assert await _turn(analyses, tenant, uuid.uuid4(), "w1/a")
    assert await _turn(analyses, tenant, uuid.uuid4(), "w2/b")
    assert not await _turn(analyses, tenant, uuid.uuid4(), "w3/c")
    assert await _turn(analyses, neighbour, uuid.uuid4(), "w3/d")  # another tenant's places are its own
    await use_cases.end_turn(analyses=analyses, holder="w1/a")
    assert await _turn(analyses, tenant, uuid.uuid4(), "w3/c")
    for holder in ("w2/b", "w3/c", "w3/d"):
        await use_cases.end_turn(analyses=analyses, holder=holder)


async def test_a_busy_repository_gives_the_place_back(analyses: Analyses) -> None:
    tenant, repository = uuid.uuid4(), uuid.uuid4()
    assert await _turn(analyses, tenant, repository, "w1/a")
    # Place 1 is free, the repository is not: refused, and place 1 is not kept.
    assert not await _turn(analyses, tenant, repository, "w2/b")
    assert await _turn(analyses, tenant, uuid.uuid4(), "w2/c")
    await use_cases.end_turn(analyses=analyses, holder="w1/a")
    assert await _turn(analyses, tenant, repository, "w2/b", places=3)
    for holder in ("w2/b", "w2/c"):
        await use_cases.end_turn(analyses=analyses, holder=holder)


async def test_a_holder_that_stops_renewing_loses_its_leases_to_the_next(analyses: Analyses) -> None:
    tenant, repository = uuid.uuid4(), uuid.uuid4()
    assert await _turn(analyses, tenant, repository, "dead/a", places=1, lease_s=0.5)
    assert await use_cases.keep_turn(analyses=analyses, holder="dead/a", lease_s=0.5)
    assert not await _turn(analyses, tenant, repository, "w2/b", places=1)
    await asyncio.sleep(0.7)  # the holder died: no renewal
    assert await _turn(analyses, tenant, repository, "w2/b", places=1)
    # Were it alive after all, it learns it lost them, and stops.
    assert not await use_cases.keep_turn(analyses=analyses, holder="dead/a", lease_s=30)
    await use_cases.end_turn(analyses=analyses, holder="dead/a")  # takes nothing from the new holder
    assert not await _turn(analyses, tenant, repository, "w3/c", places=1)
    await use_cases.end_turn(analyses=analyses, holder="w2/b")
