"""Every process's /metrics after a scripted run of the main flows: the series exist and count what happened."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from libs.devstack.stack import SERVICES, WORKER, Stack
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import PASSWORD, error_code, expect, ready_for_analysis, register

COMPLETED = "repolens.events.analysis.analysis.completed"
DB_POOL_LIMIT = 10 + 5  # DB_POOL_SIZE + DB_MAX_OVERFLOW, the defaults the stack runs with
READ_POOL_LIMIT = 4  # DB_READ_POOL_SIZE


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


class Exposition:
    """One process's /metrics, parsed with prometheus-client's own parser."""

    def __init__(self, process: str, text: str):
        self.process = process
        self.samples = [
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def select(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        """The sum over the series that match; fails when there is none (the metric is absent)."""
        found = self.select(name, **labels)
        assert found, f"{self.process}: no series {name}{labels}"
        return sum(s.value for s in found)


def scrape(stack: Stack, name: str) -> Exposition:
    response = httpx.get(stack.metrics_url(name), timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Exposition(name, response.text)


@dataclass
class Flow:
    """What the scripted run did, for the assertions to refer to."""

    analysis_id: str
    repository_id: str
    metrics: dict[str, Exposition]


def _wait_for_status(person: Any, analysis_id: str, timeout_s: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        analysis = expect(person.get(f"/api/v2/analyses/{analysis_id}"), 200)
        if analysis["status"] in {"succeeded", "failed", "cancelled"} or time.monotonic() > deadline:
            return dict(analysis)
        time.sleep(0.2)


@pytest.fixture(scope="module")
def flow(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Flow:
    """Register, log in, fail a login, tenant and settings calls, a repository, an analysis run to success."""
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as client:
        person = register(client)
        refused = client.post("/api/v2/auth/login", json={"username": person.username, "password": PASSWORD + "x"})
        assert refused.status_code == 401
        assert error_code(refused) == "ERR_AUTH_001"
        expect(person.get("/api/v2/tenants"), 200)
        assert client.get("/api/v2/no-such-route").status_code == 404
        too_large = b'{"username": "' + b"x" * 1_100_000 + b'"}'
        oversized = client.post("/api/v2/auth/login", content=too_large, headers={"Content-Type": "application/json"})
        assert oversized.status_code == 413
        expect(person.get("/api/v2/settings"), 200)
        expect(person.patch("/api/v2/settings", json={"llm_model": "gpt-5"}), 200)
        ready_for_analysis(person)
        source = git_repository(tmp_path_factory.mktemp("metrics") / "project", {"app/main.py": "x = 1\n"})
        body = {"name": "project", "url": str(source), "default_branch": "main"}
        repository = expect(person.post("/api/v2/repositories", json=body), 201)
        started = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
        done = _wait_for_status(person, started["id"])
        assert done["status"] == "succeeded", done

    # The analysis.completed event leaves through an outbox relay and the samplers read every few seconds:
    # wait until every outbox is seen empty again, which also proves the samplers run.
    deadline = time.monotonic() + 30
    while True:
        metrics = {name: scrape(stack, name) for name in SERVICES}
        backlogs = [m.value("repolens_outbox_backlog") for n, m in metrics.items() if n != "gateway"]
        published = sum(
            s.value
            for name in ("analysis", "worker")
            for s in metrics[name].select("repolens_nats_published_total", subject=COMPLETED)
        )
        if (not any(backlogs) and published >= 1) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return Flow(analysis_id=started["id"], repository_id=repository["id"], metrics=metrics)


def _histogram_matches_counter(m: Exposition, histogram: str, counter: str, **labels: str) -> float:
    """The histogram's count equals the counter summed over its other labels; returns that count."""
    count = m.value(f"{histogram}_count", **labels)
    assert count == m.value(counter, **labels), (m.process, histogram, labels)
    assert sum(s.value for s in m.select(f"{histogram}_bucket", **labels) if s.labels["le"] == "+Inf") == count
    assert m.value(f"{histogram}_sum", **labels) > 0
    return count


def test_gateway_counts_requests_by_route_template_and_status(flow: Flow) -> None:
    gateway = flow.metrics["gateway"]
    login = "/api/v2/auth/login"
    assert gateway.value("repolens_http_requests_total", route=login, method="POST", status="200") >= 1
    assert gateway.value("repolens_http_requests_total", route=login, method="POST", status="401") >= 1
    assert gateway.value("repolens_http_requests_total", route="/api/v2/auth/register", status="201") >= 1
    assert gateway.value("repolens_http_requests_total", route="/api/v2/settings", method="PATCH", status="200") >= 1
    started = "/api/v2/repositories/{repository_id}/analyses"
    assert gateway.value("repolens_http_requests_total", route=started, method="POST", status="202") >= 1
    # Templates, never concrete paths: no id reaches a label.
    routes = {s.labels["route"] for s in gateway.select("repolens_http_requests_total")}
    assert not any(flow.analysis_id in r or flow.repository_id in r for r in routes), routes
    assert "/api/v2/analyses/{analysis_id}" in routes
    assert gateway.value("repolens_http_requests_total", route="unmatched", method="GET", status="404") >= 1
    # Refused by a middleware before routing: counted, under the same label.
    assert gateway.value("repolens_http_requests_total", route="unmatched", method="POST", status="413") >= 1
    assert "/api/v2/no-such-route" not in routes
    assert (
        _histogram_matches_counter(
            gateway,
            "repolens_http_request_duration_seconds",
            "repolens_http_requests_total",
            route=login,
            method="POST",
        )
        >= 2
    )
    # Its gRPC calls, by method and code, the refused login included.
    auth_login = "/repolens.auth.v1.AuthService/Login"
    assert gateway.value("repolens_grpc_client_handled_total", method=auth_login, code="OK") >= 1
    assert gateway.value("repolens_grpc_client_handled_total", method=auth_login, code="UNAUTHENTICATED") >= 1
    _histogram_matches_counter(
        gateway, "repolens_grpc_client_handling_seconds", "repolens_grpc_client_handled_total", method=auth_login
    )
    assert gateway.value("repolens_logins_total", result="locked_out") >= 0
    assert gateway.value("process_resident_memory_bytes") > 0


def test_the_public_port_does_not_serve_metrics(stack: Stack) -> None:
    response = httpx.get(f"{stack.gateway_url}/metrics", timeout=5)
    assert response.status_code == 404
    assert "repolens_" not in response.text


def _service_basics(m: Exposition, *, consumer: str, outbox: str, pool: str) -> None:
    """What every gRPC service process shows: consumer counters and lag, outbox backlog and age, its pool."""
    assert m.value("repolens_nats_consumed_total", consumer=consumer, result="acked") >= 1
    assert m.value("repolens_nats_redelivered_total", consumer=consumer) >= 0
    assert m.value("repolens_nats_dead_lettered_total", consumer=consumer) == 0
    assert m.value("repolens_nats_consumer_pending", consumer=consumer) >= 0
    assert m.value("repolens_nats_consumer_ack_pending", consumer=consumer) >= 0
    assert m.value("repolens_outbox_backlog", outbox=outbox) == 0
    assert m.value("repolens_outbox_oldest_age_seconds", outbox=outbox) == 0
    assert m.value("repolens_db_pool_limit", pool=pool) == DB_POOL_LIMIT
    assert 0 <= m.value("repolens_db_pool_in_use", pool=pool) <= DB_POOL_LIMIT
    assert m.value("repolens_db_pool_idle", pool=pool) >= 1  # the pool has served queries and kept connections
    assert m.value("repolens_db_pool_waiting", pool=pool) == 0
    assert not any(s.value for s in m.select("repolens_metrics_sample_failures_total", probe="outbox"))


def test_auth_counts_logins_rpcs_and_events(flow: Flow) -> None:
    auth = flow.metrics["auth"]
    assert auth.value("repolens_logins_total", result="success") >= 1
    assert auth.value("repolens_logins_total", result="failure") >= 1
    login = "/repolens.auth.v1.AuthService/Login"
    assert auth.value("repolens_grpc_server_handled_total", method=login, code="OK") >= 1
    assert auth.value("repolens_grpc_server_handled_total", method=login, code="UNAUTHENTICATED") >= 1
    _histogram_matches_counter(
        auth, "repolens_grpc_server_handling_seconds", "repolens_grpc_server_handled_total", method=login
    )
    assert auth.value("repolens_nats_published_total", subject="repolens.events.auth.user.registered") >= 1
    _service_basics(auth, consumer="auth", outbox="auth", pool="auth")
    # The hot reads' own pool (FastReads), where authenticated calls to auth read their session.
    assert auth.value("repolens_db_pool_limit", pool="auth-reads") == READ_POOL_LIMIT
    assert auth.value("repolens_db_pool_waiting", pool="auth-reads") == 0


def test_tenants_counts_rpcs_and_events(flow: Flow) -> None:
    tenants = flow.metrics["tenants"]
    for method, code in (("ListMyTenants", "OK"), ("GetSettings", "OK"), ("UpdateSettings", "OK")):
        full = f"/repolens.tenants.v1.TenantsService/{method}"
        assert tenants.value("repolens_grpc_server_handled_total", method=full, code=code) >= 1, method
        _histogram_matches_counter(
            tenants, "repolens_grpc_server_handling_seconds", "repolens_grpc_server_handled_total", method=full
        )
    # It fetched the public keys from auth to check tokens.
    assert tenants.value("repolens_grpc_client_handled_total", method="/repolens.auth.v1.AuthService/GetJwks") >= 1
    assert tenants.value("repolens_nats_published_total", subject="repolens.events.tenants.tenant.created") >= 1
    assert tenants.value("repolens_nats_published_total", subject="repolens.events.tenants.settings.changed") >= 1
    _service_basics(tenants, consumer="tenants", outbox="tenants", pool="tenants")


def test_analysis_counts_queued_analyses_and_jobs(flow: Flow) -> None:
    analysis = flow.metrics["analysis"]
    assert analysis.value("repolens_analyses_total", state="queued") >= 1
    start = "/repolens.analysis.v1.AnalysisService/StartAnalysis"
    assert analysis.value("repolens_grpc_server_handled_total", method=start, code="OK") >= 1
    _histogram_matches_counter(
        analysis, "repolens_grpc_server_handling_seconds", "repolens_grpc_server_handled_total", method=start
    )
    assert analysis.value("repolens_nats_published_total", subject="repolens.jobs.analysis") >= 1
    _service_basics(analysis, consumer="analysis", outbox="analysis", pool="analysis")
    assert analysis.value("repolens_db_pool_limit", pool="analysis-reads") == READ_POOL_LIMIT  # polled analyses


def test_worker_counts_runs_steps_and_its_queue(flow: Flow) -> None:
    worker = flow.metrics["worker"]
    assert worker.value("repolens_analyses_total", state="running") >= 1
    assert worker.value("repolens_analyses_total", state="succeeded") >= 1
    assert worker.value("repolens_analyses_in_progress") == 0
    for step in ("fetch", "scan", "findings"):
        assert worker.value("repolens_analysis_step_duration_seconds_count", step=step) >= 1, step
    assert worker.value("repolens_analysis_queue_depth") >= 0
    consumer = "analysis-workers"
    assert worker.value("repolens_nats_consumed_total", consumer=consumer, result="acked") >= 1
    assert worker.value("repolens_nats_consumer_pending", consumer=consumer) == worker.value(
        "repolens_analysis_queue_depth"
    )
    assert worker.value("repolens_nats_dead_lettered_total", consumer=consumer) == 0
    # The tenant's configuration comes from the tenants service over gRPC.
    internal = "/repolens.tenants.v1.TenantsInternalService/GetTenantSecrets"
    assert worker.value("repolens_grpc_client_handled_total", method=internal, code="OK") >= 1
    assert worker.value("repolens_db_pool_limit", pool="analysis-worker") == DB_POOL_LIMIT
    assert worker.value("repolens_db_pool_waiting", pool="analysis-worker") == 0
    assert worker.value("repolens_outbox_backlog", outbox="analysis") == 0
    # The completion event left through one of the two relays sharing the analysis outbox.
    relays = (worker, flow.metrics["analysis"])
    assert sum(s.value for m in relays for s in m.select("repolens_nats_published_total", subject=COMPLETED)) >= 1


# ---------------------------------------------------------------------------------------------- alerts and dashboard

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
# Series Prometheus makes itself for every target; they never appear on a /metrics page.
PROMETHEUS_OWN = {"up"}
_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
_PROMQL_WORDS |= {"inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords or labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):  # not the unit of 5m or 1e3
        if text[match.end() :].lstrip().startswith("(") or match.group() in _PROMQL_WORDS:
            continue  # a function call or a keyword
        names.add(match.group())
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((MONITORING / "alerts.yml").read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_metric_names_are_read_from_promql() -> None:
    expr = 'sum by (le, step) (rate(a_total{le="0.25", b="c{d}"}[5m])) / on(x) b_count > bool 3 and up offset 1h'
    assert metric_names(expr) == {"a_total", "b_count", "up"}


def test_alert_rules_are_well_formed() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str), rule["alert"]
        assert rule["expr"].strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert metric_names(rule["expr"]), rule["alert"]
    # What the issue asks to be alerted on.
    for wanted in (
        "ServiceDown",
        "HighErrorRate",
        "LatencyBudgetBurnFast",
        "OutboxBacklog",
        "ConsumerLag",
        "AnalysesFailing",
        "LockoutSpike",
    ):
        assert f"RepoLens{wanted}" in names


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (the structural checks still run)")
def test_promtool_accepts_rules_config_and_dashboard_queries(tmp_path: Path) -> None:
    def promtool(*args: str, cwd: Path = MONITORING) -> None:
        done = subprocess.run([str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    promtool("check", "rules", "alerts.yml")
    promtool("check", "config", "prometheus.yml")
    promtool("test", "rules", "alerts.test.yml")  # each alert fires on the series it is meant for
    # The dashboard's queries, parsed by Prometheus itself as recording rules.
    records = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_expressions())]
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    promtool("check", "rules", "dashboard.yml", cwd=tmp_path)


def test_dashboard_is_importable() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert dashboard["uid"]
    assert dashboard["title"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    assert len(dashboard_expressions()) >= 20


def test_rules_and_dashboard_use_only_metrics_the_processes_expose(flow: Flow) -> None:
    """Read from the live /metrics of every process after the flows: a renamed metric breaks this test, not an alert."""
    exposed = set().union(*(m.names for m in flow.metrics.values())) | PROMETHEUS_OWN
    used = {name: "alerts.yml" for rule in alert_rules() for name in metric_names(rule["expr"])}
    used |= {name: "grafana-dashboard.json" for expr in dashboard_expressions() for name in metric_names(expr)}
    missing = {name: where for name, where in used.items() if name not in exposed}
    assert not missing, missing
    assert any(name.startswith("repolens_") for name in used)


def test_the_worker_answers_its_probes_on_the_metrics_port(stack: Stack) -> None:
    """The worker serves no API: its orchestrator asks the metrics port whether it is live and taking jobs."""
    base = stack.metrics_url(WORKER).removesuffix("/metrics")
    for path in ("/health/live", "/health/ready"):
        answer = httpx.get(base + path, timeout=5)
        assert answer.status_code == 200, (path, answer.text)
