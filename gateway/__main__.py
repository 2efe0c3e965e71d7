"""`python -m gateway`: serve the public HTTP API with uvicorn."""

from __future__ import annotations

import sys

import uvicorn

from gateway.app import create_app
from libs.common.config import GatewaySettings
from libs.common.error_reporting import configure_error_reporting
from libs.common.logging import configure_logging
from libs.common.metrics import start_exporter
from libs.common.tracing import configure_tracing


def main() -> int:
    settings = GatewaySettings()
    configure_logging(settings, service="gateway")
    configure_tracing(settings, service="gateway")
    configure_error_reporting(settings, service="gateway")
    start_exporter(settings, process="gateway")  # its own port: /metrics is never on the public one
    uvicorn.run(
        create_app(settings),
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
