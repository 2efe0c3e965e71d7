"""Trace context rules: the W3C header, the sampling decision (the SDK's, without the SDK), propagation hooks."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind

from libs.common import tracing
from libs.common.config import CommonSettings
from libs.common.events import make_envelope
from repolens.events.v1 import events_pb2

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture
def propagate() -> Iterator[None]:
    assert (
        tracing.configure_tracing(CommonSettings(otel_traces_sampler_arg=0.25), service="t") is tracing.Mode.PROPAGATE
    )
    try:
        yield
    finally:
        tracing.shutdown_tracing()


def test_traceparent_round_trip() -> None:
    parsed = tracing.parse_traceparent(f"00-{TRACE}-{PARENT}-01", "vendor=abc")
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id, parsed.trace_flags.sampled, parsed.is_remote) == (
        int(TRACE, 16),
        int(PARENT, 16),
        True,
        True,
    )
    assert parsed.trace_state.to_header() == "vendor=abc"
    assert tracing.format_traceparent(parsed) == f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper case is not W3C
        f"ff-{TRACE}-{PARENT}-01",  # the forbidden version
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE}-{PARENT[:-1]}-01",
    ],
)
def test_malformed_traceparent_starts_a_new_trace(value: str) -> None:
    assert tracing.parse_traceparent(value) is None


def test_a_later_version_with_more_fields_is_read() -> None:
    parsed = tracing.parse_traceparent(f"01-{TRACE}-{PARENT}-00-whatever")
    assert parsed is not None
    assert parsed.trace_id == int(TRACE, 16)
    assert not parsed.trace_flags.sampled


def test_new_traces_are_sampled_exactly_as_the_sdk_would(propagate: None) -> None:
    sdk = ParentBased(TraceIdRatioBased(0.25))
    rng = random.Random(7)
    sampled = 0
    for _ in range(4000):
        trace_id = rng.getrandbits(128)
        ours = tracing.new_trace_sampled(trace_id)
        assert ours == (sdk.should_sample(None, trace_id, "x").decision is Decision.RECORD_AND_SAMPLE)
        sampled += ours
    assert 800 < sampled < 1200  # about a quarter


def test_the_context_flows_from_a_request_to_calls_events_and_logs(propagate: None) -> None:
    with tracing.serving("GET /x", kind=SpanKind.SERVER, traceparent=f"00-{TRACE}-{PARENT}-01") as span:
        ids = tracing.current_ids()
        assert ids is not None
        assert ids[0] == TRACE
        assert ids[1] != PARENT
        assert span.get_span_context().trace_flags.sampled  # an internal parent's decision is followed
        metadata: list[tuple[str, str]] = [("x-request-id", "r")]
        with tracing.outgoing_rpc(object(), metadata):
            pass
        assert metadata[1] == ("traceparent", f"00-{TRACE}-{ids[1]}-01")
        envelope = make_envelope(event_type="user.activated", payload=events_pb2.UserActivated(user_id="u"))
        assert envelope.trace.traceparent == f"00-{TRACE}-{ids[1]}-01"
        event = tracing.add_trace_ids(None, "info", {"event": "x"})
        assert event["trace_id"] == TRACE
        assert event["span_id"] == ids[1]
    assert tracing.current_ids() is None
    assert "trace_id" not in tracing.add_trace_ids(None, "info", {"event": "x"})

    consumed = tracing.consume(envelope, consumer="c")
    try:
        consumer_ids = tracing.current_ids()
        assert consumer_ids is not None
        assert consumer_ids[0] == TRACE
        assert consumer_ids[1] != ids[1]
    finally:
        consumed.end()
    assert tracing.current_ids() is None


def test_an_event_without_trace_starts_one() -> None:
    tracing.configure_tracing(CommonSettings(), service="t")
    try:
        consumed = tracing.consume(events_pb2.EventEnvelope(id="e", type="t"), consumer="c")
        assert tracing.current_ids() is not None
        consumed.end()
    finally:
        tracing.shutdown_tracing()


@pytest.mark.parametrize(("ratio", "client_flag", "sampled"), [(1.0, "00", True), (0.0, "01", False)])
def test_the_edge_keeps_the_trace_id_but_decides_sampling(ratio: float, client_flag: str, sampled: bool) -> None:
    tracing.configure_tracing(CommonSettings(otel_traces_sampler_arg=ratio), service="t")
    try:
        traceparent = f"00-{TRACE}-{PARENT}-{client_flag}"
        with tracing.serving("GET /", kind=SpanKind.SERVER, traceparent=traceparent, edge=True) as span:
            assert f"{span.get_span_context().trace_id:032x}" == TRACE
            assert span.get_span_context().trace_flags.sampled is sampled
    finally:
        tracing.shutdown_tracing()


def test_off_means_nothing_is_propagated() -> None:
    assert tracing.configure_tracing(CommonSettings(otel_sdk_disabled=True), service="t") is tracing.Mode.OFF
    metadata: list[tuple[str, str]] = []
    with tracing.outgoing_rpc(object(), metadata):
        pass
    envelope = make_envelope(event_type="user.activated", payload=events_pb2.UserActivated(user_id="u"))
    consumed = tracing.consume(envelope, consumer="c")
    assert metadata == []
    assert not envelope.HasField("trace")
    assert tracing.current_ids() is None
    consumed.end()
