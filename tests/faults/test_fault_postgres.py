"""PostgreSQL SIGKILLed and restarted while users register, add repositories and run analyses."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import own_stack
from tests.faults.conftest import (
    FAULT_ENV,
    KillablePostgres,
    Load,
    checked,
    during,
    outage,
    settled,
    succeeded_after,
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
            # Down longer than the consumers' redeliveries of a failing event last (1 + 2 + 4 + 8 s): an outage is no
            # reason to dead-letter one.
            await outage(
                load,
                begin=killable_postgres.kill,
                end=killable_postgres.restart,
                marks=("killed", "restarted"),
                before_s=3,
                lasting_s=OUTAGE_S,
                after_s=6,
            )
        checked(load)
        unavailable = [a for a in during(load, "killed", "restarted") if a.status == 503]
        assert unavailable, "nothing was refused while PostgreSQL was down"
        assert {a.code for a in unavailable} <= {"ERR_UPSTREAM_003", "ERR_UPSTREAM_001"}
        succeeded_after(load, "restarted")
        await settled(stack, load)
