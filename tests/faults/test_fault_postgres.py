"""PostgreSQL SIGKILLed and restarted while users register, add repositories and run analyses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import own_stack
from tests.faults.conftest import (
    FAULT_ENV,
    KillablePostgres,
    Load,
    check_answers,
    during,
    settled,
    succeeded_after,
    summary,
    worker_started,
)

OUTAGE_S = 16.0


@pytest.mark.timeout(240)
async def test_postgres_killed_and_restarted_under_load(
    killable_postgres: KillablePostgres, checkout: Path, tmp_path: Path
) -> None:
    with own_stack(killable_postgres.server_url, tmp_path, FAULT_ENV) as stack:
        await worker_started(stack)
        async with Load(stack.gateway_url, checkout) as load:
            await load.run_for(3)
            load.mark("killed")
            await asyncio.to_thread(killable_postgres.kill)
            # Down longer than the consumers' redeliveries of a failing event last (1 + 2 + 4 + 8 s): an outage is no
            # reason to dead-letter one.
            await load.run_for(OUTAGE_S)
            await asyncio.to_thread(killable_postgres.restart)
            load.mark("restarted")
            await load.run_for(6)
        print(f"answers:\n{summary(load.answers)}")
        check_answers(load.answers)
        unavailable = [a for a in during(load, "killed", "restarted") if a.status == 503]
        assert unavailable, "nothing was refused while PostgreSQL was down"
        assert {a.code for a in unavailable} <= {"ERR_UPSTREAM_003", "ERR_UPSTREAM_001"}
        succeeded_after(load, "restarted")
        await settled(stack, load)
