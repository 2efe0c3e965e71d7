"""`python -m gateway`: serve the public HTTP API with uvicorn, in GATEWAY_WORKERS processes (default 1).

With one worker the process serves the port itself. With more, this process binds the port, starts the workers
(`python -m gateway --worker I --fd N`), each accepting on the same socket, forwards SIGTERM and SIGINT to them
and ends when they have: if one dies on its own the others are stopped and this process exits non-zero, so
whatever supervises the gateway (the devstack, Kubernetes) restarts it whole. Each worker is a full gateway:
its own gRPC channels, revocation feed and API-limit counts (docs/architecture.md bounds what they share),
and its own /metrics on METRICS_PORT+I. In a container, run one worker and scale by replicas
(deploy/k8s sets GATEWAY_WORKERS=1).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess  # nosec B404 # the workers: our own interpreter and module, never a shell
import sys
from types import FrameType

import uvicorn

from gateway.app import create_app
from libs.common.config import GatewaySettings
from libs.common.error_reporting import configure_error_reporting
from libs.common.heap import settle_heap
from libs.common.logging import configure_logging, get_logger
from libs.common.metrics import start_exporter
from libs.common.tracing import configure_tracing

log = get_logger("gateway")
_PR_SET_PDEATHSIG = 1


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Serve the RepoLens HTTP API.")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # started by the parent
    parser.add_argument("--fd", type=int, default=None, help=argparse.SUPPRESS)  # the parent's listening socket
    return parser.parse_args(argv)


def _workers(settings: GatewaySettings) -> int:
    return settings.gateway_workers or os.cpu_count() or 1


def serve(settings: GatewaySettings, *, worker: int = 0, fd: int | None = None) -> int:
    """One gateway process, on its own port or on the parent's socket `fd`."""
    configure_tracing(settings, service="gateway")
    configure_error_reporting(settings, service="gateway")
    if settings.metrics_port:  # its own port: /metrics is never on the public one
        settings = settings.model_copy(update={"metrics_port": settings.metrics_port + worker})
    start_exporter(settings, process="gateway")
    app = create_app(settings)
    settle_heap(settings)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        # X-Forwarded-For is read by the app itself, and only from TRUSTED_PROXIES (gateway/edge.py).
        proxy_headers=False,
        timeout_keep_alive=settings.http_keepalive_timeout_s,
        timeout_graceful_shutdown=settings.http_graceful_shutdown_s,
        limit_concurrency=settings.http_limit_concurrency,
        backlog=settings.http_backlog,
        server_header=False,
    )
    # The parent's socket as it is (uvicorn's own `fd=` would label it a Unix socket and lose TCP_NODELAY).
    uvicorn.Server(config).run(sockets=None if fd is None else [socket.socket(fileno=fd)])
    return 0


def _die_with_parent() -> None:
    """A worker whose parent was killed outright (SIGKILL) is sent SIGTERM by the kernel (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(settings: GatewaySettings, workers: int) -> int:
    """Binds the port, runs `workers` gateway processes on it and ends when they do."""
    listener = socket.create_server((settings.http_host, settings.http_port), backlog=settings.http_backlog)
    listener.set_inheritable(True)
    fd = listener.fileno()
    children = [
        subprocess.Popen(  # noqa: S603 # nosec B603 # our own interpreter and module, no shell
            [sys.executable, "-m", "gateway", "--worker", str(index), "--fd", str(fd)], pass_fds=(fd,)
        )
        for index in range(workers)
    ]
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    log.info("gateway.workers", workers=workers, pids=[child.pid for child in children])
    status = 0
    running = {child.pid: child for child in children}
    while running:
        pid, code = os.wait()
        child = running.pop(pid, None)
        if child is None:
            continue
        child.returncode = os.waitstatus_to_exitcode(code)
        if not stopping:
            log.error("gateway.worker_died", pid=pid, returncode=child.returncode)
            status = 1
            forward(signal.SIGTERM, None)
    listener.close()
    return status


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    settings = GatewaySettings()
    configure_logging(settings, service="gateway")
    if args.fd is not None:
        _die_with_parent()
        return serve(settings, worker=args.worker or 0, fd=args.fd)
    workers = _workers(settings)
    if workers == 1:
        return serve(settings)
    return supervise(settings, workers)


if __name__ == "__main__":
    sys.exit(main())
