"""The image's entry point, run as the image runs it but without Docker: `deploy/entrypoint.sh migrate`, then the
three services, a worker and the gateway. Each must answer its probe as the manifests ask (gRPC health SERVING,
/health/ready 200, the worker's /metrics 200), and stop on SIGTERM within its termination grace period."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO

import httpx
import pytest

from libs.common.config import AnalysisSettings, GatewaySettings
from libs.devstack.servers import LOCALHOST, free_port
from tests.deploy.manifests import OVERLAYS, ROOT, build, named, pod_spec, secret_settings

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
SERVICES = ("auth", "tenants", "analysis")
READY_WITHIN_S = 120.0


def load_healthcheck() -> ModuleType:
    """deploy/healthcheck.py, the probe the compose file runs in the containers."""
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", ROOT / "deploy" / "healthcheck.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = load_healthcheck()


def image_environment(database_url: str, nats_url: str) -> dict[str, str]:
    """The image's ENV (Dockerfile) with this session's servers, and no RepoLens setting of the test runner's."""
    settings = {name.upper() for cls in (AnalysisSettings, GatewaySettings) for name in cls.model_fields}
    settings |= secret_settings() | {"AUTH_MASTER_KEY", "TENANTS_MASTER_KEY"}
    env = {key: value for key, value in os.environ.items() if key not in settings and key.removesuffix("_FILE")
           not in settings}  # fmt: skip
    env.update(
        {
            # The image puts its virtualenv first on PATH; the script runs `python` from there.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "ENVIRONMENT": "test",
            "DATABASE_URL": database_url,
            "NATS_URL": nats_url,
            "GRPC_HOST": LOCALHOST,
            "HTTP_HOST": LOCALHOST,
            "METRICS_HOST": LOCALHOST,
            "METRICS_PORT": "0",
            "ENGINE_PROCESSES": "0",  # the worker here only has to come up: no engine pool on a shared machine
        }
    )
    return env


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(text.splitlines()[-lines:])


def grace_seconds(deployment: str) -> float:
    """What Kubernetes gives the process after SIGTERM: the grace period less the preStop sleep."""
    spec = pod_spec(named(build(OVERLAYS["prod"]), "Deployment", deployment))
    container = spec["containers"][0]
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    return float(spec["terminationGracePeriodSeconds"] - pre_stop)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def run(name: str, command: list[str], env: dict[str, str]) -> Process:
        log = tmp_path / f"{name}.log"
        handle: IO[bytes] = log.open("wb")
        popen = subprocess.Popen(["sh", str(ENTRYPOINT), *command], env=env, stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        process = Process(name=name, popen=popen, log=log)
        started.append(process)
        return process

    yield run
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait(timeout=10)


def wait_until(check: Callable[[], bool], processes: list[Process], what: str) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while not check():
        dead = [p for p in processes if p.popen.poll() is not None]
        if dead or time.monotonic() > deadline:
            reason = "exited" if dead else f"not within {READY_WITHIN_S:.0f} s"
            raise AssertionError(f"{what}: {reason}\n" + "\n".join(p.tail() for p in processes))
        time.sleep(0.3)


@pytest.mark.timeout(600)
def test_entrypoint_runs_every_process(database_url: str, nats_url: str, start: Callable[..., Process]) -> None:
    base = image_environment(database_url, nats_url)
    grpc_ports = {name: free_port() for name in SERVICES}
    http_port, worker_metrics = free_port(), free_port()
    targets = {f"{name.upper()}_GRPC_TARGET": f"{LOCALHOST}:{port}" for name, port in grpc_ports.items()}
    env = {**base, **targets}

    # Migrations first, the way the Job and the compose file run them.
    migrate = start("migrate", ["migrate"], env)
    assert migrate.popen.wait(timeout=300) == 0, migrate.tail()
    assert all(f"migrating {name}" in migrate.log.read_text(encoding="utf-8") for name in SERVICES), migrate.tail()

    services = {name: start(name, [name], {**env, "GRPC_PORT": str(port)}) for name, port in grpc_ports.items()}
    worker = start("worker", ["worker"], {**env, "METRICS_PORT": str(worker_metrics)})
    gateway = start("gateway", ["gateway"], {**env, "HTTP_PORT": str(http_port)})
    everything = [*services.values(), worker, gateway]

    for name, port in grpc_ports.items():
        wait_until(
            lambda port=port: healthcheck.grpc_serving(f"{LOCALHOST}:{port}", service="", timeout_s=1.0),  # type: ignore[misc]
            everything,
            f"{name} SERVING",
        )
    with httpx.Client(timeout=3.0) as client:

        def ready() -> bool:
            try:
                return client.get(f"http://{LOCALHOST}:{http_port}/health/ready").status_code == 200
            except httpx.HTTPError:
                return False

        def worker_metrics_up() -> bool:
            try:
                return client.get(f"http://{LOCALHOST}:{worker_metrics}/metrics").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, everything, "gateway /health/ready 200")
        wait_until(worker_metrics_up, everything, "worker /metrics 200")
        assert client.get(f"http://{LOCALHOST}:{http_port}/health/live").status_code == 200

    # The compose health checks: the same probe through the entry point, answering 0, and 1 where nothing serves.
    probe = ["sh", str(ENTRYPOINT), "healthcheck"]
    assert subprocess.run([*probe, "grpc", f"{LOCALHOST}:{grpc_ports['auth']}"], env=env, check=False).returncode == 0
    assert subprocess.run([*probe, "http", f"http://{LOCALHOST}:{http_port}/health/ready"], env=env).returncode == 0
    assert subprocess.run([*probe, "grpc", f"{LOCALHOST}:{free_port()}", "--timeout", "1"], env=env).returncode == 1

    # SIGTERM, as Kubernetes and Docker stop a container: every process drains and exits 0 within its grace.
    for process in [gateway, worker, *services.values()]:
        grace = grace_seconds("worker" if process is worker else process.name)
        began = time.monotonic()
        process.popen.send_signal(signal.SIGTERM)
        try:
            code = process.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            still = f"{process.name} still running {grace:.0f} s after SIGTERM"
            raise AssertionError(f"{still}\n{process.tail()}") from None
        if process is gateway:
            # uvicorn re-raises the signal once its graceful shutdown is complete (tini reports 143).
            assert code in (0, -signal.SIGTERM), process.tail()
            assert "Application shutdown complete" in process.log.read_text(encoding="utf-8"), process.tail()
        else:
            assert code == 0, process.tail()
        assert time.monotonic() - began < grace


def test_entrypoint_refuses_unknown_commands() -> None:
    for command in (["bogus"], ["migrate", "billing"], ["manage", "gateway"]):
        result = subprocess.run(["sh", str(ENTRYPOINT), *command], capture_output=True, text=True, check=False)
        assert result.returncode == 64, command
        assert "entrypoint:" in result.stderr
