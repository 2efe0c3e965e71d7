"""NATS stopped for 30 s while users register, add repositories and run analyses: the writes go on (their events
wait in the outboxes), and once NATS is back every event is applied once and every queued analysis runs.

tests/integration/test_nats_outage.py covers one service's registrations over gRPC; this is the whole platform over
HTTP, under load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from libs.devstack.servers import EmbeddedNats
from libs.devstack.stack import Stack
from tests.faults.conftest import FAULT_ENV, Load, checked, during, outage, settled, succeeded_after, worker_started

OUTAGE_S = 30.0


@pytest.mark.timeout(240)
async def test_nats_stopped_for_30_s_under_load(
    make_stack: Callable[..., Stack], own_nats: EmbeddedNats, checkout: Path
) -> None:
    stack = await asyncio.to_thread(make_stack, fresh_database=True, nats_url=own_nats.url, extra_env=FAULT_ENV)
    await worker_started(stack)
    async with Load(stack.gateway_url, checkout) as load:
        marks = ("stopped", "started")
        await outage(
            load, begin=own_nats.stop, end=own_nats.start, marks=marks, before_s=3, lasting_s=OUTAGE_S, after_s=4
        )
    checked(load)
    # Writes need no NATS: registrations were accepted all along.
    succeeded_after(load, "stopped")
    assert [a for a in during(load, "stopped", "started") if a.action == "register" and a.status == 201]
    await settled(stack, load)
