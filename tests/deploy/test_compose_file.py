"""docker-compose.yml: health checks on every long-running service, ordered start-up, nothing secret written in it.

Checked structurally (no Docker needed); `docker compose config -q` runs too where a Docker CLI with compose works.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from libs.common.config import AnalysisSettings, AuthSettings, GatewaySettings, TenantsSettings
from tests.deploy.manifests import ROOT, URL_WITH_PASSWORD, image_tag, secret_settings

COMPOSE = ROOT / "docker-compose.yml"
SERVERS = {"postgres", "nats", "redis"}
APP = {"migrate", "auth", "tenants", "analysis", "worker", "gateway"}
# One-shot: runs to completion, so it has no health to check; the others wait for its successful exit instead.
ONE_SHOT = {"migrate"}
GRPC_PORTS = {
    "auth": AuthSettings.model_fields["grpc_port"].default,
    "tenants": TenantsSettings.model_fields["grpc_port"].default,
    "analysis": AnalysisSettings.model_fields["grpc_port"].default,
}
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def entrypoint_commands() -> set[str]:
    """The commands deploy/entrypoint.sh accepts (its case labels)."""
    script = (ROOT / "deploy" / "entrypoint.sh").read_text(encoding="utf-8")
    labels = re.findall(r"^\s{4}([a-z| -]+)\)\s*$", script, flags=re.MULTILINE)
    return {word.strip() for label in labels for word in label.split("|")}


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVERS | APP


def test_every_long_running_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", f"{name} runs once"
            assert "healthcheck" not in service
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check.get("test"), f"{name}: a healthcheck without a test"
        assert check["test"][0] in ("CMD", "CMD-SHELL")


def test_healthchecks_probe_what_the_processes_serve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, port in GRPC_PORTS.items():
        assert services[name]["healthcheck"]["test"][1:] == [
            "python",
            "/app/deploy/healthcheck.py",
            "grpc",
            f"127.0.0.1:{port}",
        ]
    gateway_port = int(services["gateway"]["environment"]["HTTP_PORT"])
    assert gateway_port == GatewaySettings.model_fields["http_port"].default
    assert services["gateway"]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{gateway_port}/health/ready"
    metrics_port = int(services["worker"]["environment"]["METRICS_PORT"])
    assert services["worker"]["healthcheck"]["test"][-1] == f"http://127.0.0.1:{metrics_port}/health/ready"
    for name in APP:
        environment = services[name]["environment"]
        assert environment["GRPC_HOST"] == environment["HTTP_HOST"] == "0.0.0.0", name


def test_start_order_waits_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            condition = rule["condition"]
            if dependency in ONE_SHOT:
                assert condition == "service_completed_successfully", f"{name} -> {dependency}"
            else:
                assert condition == "service_healthy", f"{name} -> {dependency}"
                assert "healthcheck" in services[dependency]
    for name in APP - ONE_SHOT - {"gateway"}:
        assert "migrate" in services[name]["depends_on"], f"{name} starts after the migrations"
    assert set(services["gateway"]["depends_on"]) >= {"auth", "tenants", "analysis", "redis"}
    assert set(services["migrate"]["depends_on"]) == {"postgres"}


def test_app_containers_are_locked_down(compose: dict[str, Any]) -> None:
    commands = entrypoint_commands()
    assert {"gateway", "auth", "tenants", "analysis", "worker", "migrate"} <= commands
    for name in APP:
        service = compose["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert any(mount.startswith("/tmp:") for mount in service["tmpfs"]), f"{name}: writable /tmp"
        assert service["command"][0] in commands, name
        assert service["command"][0] == name, name
        assert "user" not in service or service["user"] not in ("root", "0"), name
    internal = {name for name, network in compose["networks"].items() if network and network.get("internal")}
    for name in SERVERS:
        assert set(compose["services"][name]["networks"]) <= internal, f"{name} is reachable from outside"
        assert "ports" not in compose["services"][name], f"{name} must not be published"


def test_images_pinned(compose: dict[str, Any]) -> None:
    for name in SERVERS:
        _, tag = image_tag(compose["services"][name]["image"])
        assert tag != "latest", name
        assert re.search(r"\d+\.\d+", tag), f"{name}: pin a version"


def test_no_inline_secrets(compose: dict[str, Any]) -> None:
    secret_names = secret_settings() | {"POSTGRES_PASSWORD"}
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for key, value in environment.items():
            text = str(value)
            if key in secret_names or any(word in key for word in ("PASSWORD", "SECRET", "TOKEN", "MASTER_KEY")):
                assert INTERPOLATION.fullmatch(text), f"{name}.{key} must come from .env"
            if URL_WITH_PASSWORD.match(text):
                password = text.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
                assert INTERPOLATION.fullmatch(password), f"{name}.{key}: the password must come from .env"
        for item in service.get("command", []) if isinstance(service.get("command"), list) else []:
            assert "password" not in str(item).lower(), f"{name}: a password on a command line"


def test_every_variable_is_documented_in_env_example() -> None:
    used = set(INTERPOLATION.findall(COMPOSE.read_text(encoding="utf-8")))
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    assert "POSTGRES_PASSWORD" in used
    assert used <= documented, f"add to .env.example: {sorted(used - documented)}"


def _compose_works() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _compose_works(), reason="no Docker CLI with the compose plugin here; checked structurally")
def test_docker_compose_config() -> None:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "POSTGRES_PASSWORD": "compose-config-check"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
