"""The pieces the fault scenarios rely on, each on its own and in milliseconds: which errors say "the database is
unavailable", the 503 answers' `Retry-After`, a consumer holding an event while its database is away, and a worker's
progress watcher that ends when cancelled in the middle of a database call."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import psycopg
import psycopg.errors
import psycopg_pool
import pytest
import sqlalchemy as sa

from gateway.errors import RETRY_AFTER_UNAVAILABLE_S, error_response
from libs.common import errors
from libs.common.consumer import EventConsumer
from libs.common.db import database_unavailable
from libs.common.event_types import USER_REGISTERED
from libs.common.events import make_envelope
from libs.common.grpc_client import _FALLBACK
from repolens.events.v1 import events_pb2
from services.analysis import use_cases, worker
from services.analysis.use_cases import Claim


def _wrapped(orig: BaseException) -> sa.exc.OperationalError:
    """As SQLAlchemy raises a driver's error."""
    return sa.exc.OperationalError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        # What a SIGKILLed PostgreSQL gave (tests/faults/test_fault_postgres.py), through either pool.
        (_wrapped(psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")), True),
        (_wrapped(psycopg.OperationalError('connection is bad: connection to server on socket "/x" failed')), True),
        (psycopg.OperationalError("connection failed: FATAL:  the database system is starting up"), True),
        (psycopg_pool.PoolTimeout("couldn't get a connection after 5.00 sec"), True),
        (sa.exc.TimeoutError("QueuePool limit of size 10 overflow 5 reached"), True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.errors.CannotConnectNow("the database system is not yet accepting connections"), True),
        (psycopg.errors.TooManyConnections("sorry, too many clients already"), True),
        # Answers PostgreSQL gave to the statement itself: bugs or limits of ours, still 500.
        (_wrapped(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")), False),
        (sa.exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate key")), False),
        (sa.exc.ProgrammingError("SELECT", {}, psycopg.errors.UndefinedTable("relation does not exist")), False),
        (ValueError("not a database error"), False),
    ],
)
def test_which_errors_say_the_database_is_unavailable(error: BaseException, unavailable: bool) -> None:
    assert database_unavailable(error) is unavailable


def test_an_error_raised_from_a_lost_connection_is_unavailability_too() -> None:
    outer = RuntimeError("while recording the event")
    outer.__cause__ = _wrapped(psycopg.OperationalError("server closed the connection unexpectedly"))
    assert database_unavailable(outer)
    outer.__cause__ = ValueError("a bug")
    assert not database_unavailable(outer)


def test_every_503_answer_carries_retry_after_and_other_answers_keep_their_headers() -> None:
    for spec in (errors.DATABASE_UNAVAILABLE, errors.UPSTREAM_UNAVAILABLE, errors.KEYS_UNAVAILABLE):
        assert error_response(spec, request_id="r").headers["Retry-After"] == str(RETRY_AFTER_UNAVAILABLE_S)
    assert "Retry-After" not in error_response(errors.INTERNAL, request_id="r").headers
    assert "Retry-After" not in error_response(errors.UPSTREAM_TIMEOUT, request_id="r").headers
    limited = error_response(errors.RATE_LIMITED, request_id="r", headers={"Retry-After": "42"})
    assert limited.headers["Retry-After"] == "42"


def test_statuses_from_grpc_itself_are_never_internal_errors() -> None:
    """A status without our ErrorInfo (the peer down, gone mid-call, overloaded, the deadline passed)."""
    for status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        assert _FALLBACK[status].http_status == 503
    assert _FALLBACK[grpc.StatusCode.DEADLINE_EXCEEDED].http_status == 504


@dataclass
class _Metadata:
    num_delivered: int = 1


@dataclass
class _Message:
    """A JetStream message as the consumer sees it, recording how it was settled."""

    data: bytes
    subject: str = "repolens.events.auth.user.registered"
    headers: dict[str, str] | None = None
    metadata: _Metadata = field(default_factory=_Metadata)
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def in_progress(self) -> None:
        self.settled.append("in progress")


def _event() -> bytes:
    payload = events_pb2.UserRegistered(user_id=str(uuid.uuid4()), username="u")
    return make_envelope(event_type=USER_REGISTERED.name, payload=payload).SerializeToString()


async def test_a_consumer_holds_its_messages_while_the_database_is_away_and_applies_them_once_back() -> None:
    """No redelivery is asked for and no delivery counted: an outage longer than all the redeliveries would
    otherwise dead-letter the event (seen with PostgreSQL down 16 s before the fix)."""

    async def handler(conn: Any, envelope: events_pb2.EventEnvelope) -> None:
        raise AssertionError("replaced by _apply below")

    consumer = EventConsumer(
        js=cast(Any, None),
        engine=cast(Any, None),
        inbox=cast(Any, None),
        durable="faults-test",
        subjects=[],
        handlers={USER_REGISTERED.name: handler},
        max_deliver=2,
    )
    outcomes: list[BaseException | None] = [
        _wrapped(psycopg.OperationalError("connection is bad: Connection refused")),
        psycopg.OperationalError("connection failed: FATAL:  the database system is starting up"),
        None,
    ]

    async def apply(envelope: events_pb2.EventEnvelope, handler: Any) -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    consumer._apply = apply  # type: ignore[method-assign]
    first, waiting = _Message(_event()), _Message(_event())
    await consumer.handle(cast(Any, first), held=[cast(Any, waiting)])
    assert first.settled == ["in progress", "in progress", "ack"]
    assert waiting.settled == ["in progress", "in progress"]  # its ack_wait restarted while it waited its turn

    # Any other failure is the message's: redelivered, then dead-lettered, as before.
    outcomes.append(ValueError("a bug"))
    failing = _Message(_event())
    await consumer.handle(cast(Any, failing))
    assert failing.settled == ["nak"]


async def test_a_progress_watcher_cancelled_in_a_database_call_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled in the middle of its progress write (the analysis ended), the write's clean-up raised SQLAlchemy's
    "Can't reconnect until invalid transaction is rolled back" instead of the cancellation; the watcher logged it and
    went on, and the worker waited for it for ever: the analysis stayed `running`, its job in progress, until the
    worker was restarted (seen in tests/faults/test_fault_postgres.py before the fix)."""
    writing = asyncio.Event()

    async def record_progress(**_: Any) -> bool:
        writing.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise sa.exc.InvalidRequestError("Can't reconnect until invalid transaction is rolled back") from None
        return True

    monkeypatch.setattr(use_cases, "record_progress", record_progress)
    workers = worker.Worker(
        analyses=cast(Any, None),
        js=cast(Any, None),
        engine=cast(Any, None),
        concurrency=1,
        max_attempts=1,
        ack_wait_s=30,
    )
    claimed = cast(Claim, None)
    run = worker.Run()
    watcher = asyncio.create_task(workers._watch(claimed, "holder", run))
    try:
        await asyncio.wait_for(writing.wait(), timeout=5)
        watcher.cancel()
        await asyncio.wait({watcher}, timeout=5)  # not wait_for: it would wait for a watcher that never ends
        assert watcher.cancelled(), "the watcher went on after its cancellation"
    finally:
        run.stop.set()  # ends a watcher that ignored its cancellation, at its next turn


# A worker's situation: gRPC calls in flight on other tasks while git runs in child processes, started by uvloop.
_SPAWNING_UNDER_GRPC = """
import services.analysis  # first, as `python -m services.analysis` does

import asyncio, collections, json, sys
import grpc, uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)
    done = asyncio.Event()

    async def calls() -> None:
        while not done.is_set():
            await stub.Check(health_pb2.HealthCheckRequest())

    callers = [asyncio.ensure_future(calls()) for _ in range(4)]
    exits = collections.Counter()
    for _ in range(int(sys.argv[1])):
        git = await asyncio.create_subprocess_exec(
            "git", "--version", stdout=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        exits[await git.wait()] += 1
    done.set()
    await asyncio.gather(*callers, return_exceptions=True)
    await channel.close()
    await server.stop(0)
    print(json.dumps(exits))

uvloop.run(main())
"""


def test_git_started_beside_busy_grpc_calls_is_never_killed_by_grpc_fork_handlers() -> None:
    """uvloop starts children with fork(), so gRPC's fork handlers ran in each: with calls in flight, about one git in
    fifteen died before it started (SIGSEGV, or SIGABRT on "Check failed: next_worker->state == KICKED"), and the
    analyses whose clone it was failed with ERR_FETCH_005 (seen in test_fault_nats.py). services/analysis turns the
    fork support off."""
    ran = subprocess.run(
        [sys.executable, "-c", _SPAWNING_UNDER_GRPC, "150"], capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert json.loads(ran.stdout.strip().splitlines()[-1]) == {"0": 150}, ran.stderr[-2000:]
