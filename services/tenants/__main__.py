"""`python -m services.tenants serve | migrate [up|down]`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from libs.common.config import TenantsSettings
from libs.common.grpc_client import open_channel
from libs.common.identity import CallerIdentity
from libs.common.jwks import grpc_jwks_fetcher
from libs.common.logging import configure_logging
from libs.common.revocation import RevocationFeed, RevocationList
from libs.common.service import Runtime, ServiceSpec, add_common_commands, migrate, run_async, serve
from libs.common.tokens import TokenVerifier
from repolens.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from services.tenants import consumers, repository
from services.tenants.servicer import TenantsServicer
from services.tenants.use_cases import Tenants

SPEC = ServiceSpec(
    name="tenants",
    schema=repository.SCHEMA,
    migrations=Path(__file__).parent / "migrations",
    outbox=repository.outbox,
    inbox=repository.inbox,
    grpc_service_names=[tenants_pb2.DESCRIPTOR.services_by_name["TenantsService"].full_name],
    consumer_subjects=consumers.SUBJECTS,
    consumer_handlers=consumers.HANDLERS,
)


async def serve_tenants(settings: TenantsSettings, stop: asyncio.Event | None = None) -> None:
    auth_channel = open_channel(settings.auth_grpc_target)
    feed: RevocationFeed | None = None

    async def wire(runtime: Runtime) -> None:
        nonlocal feed
        verifier = TokenVerifier(
            fetch_jwks=grpc_jwks_fetcher(auth_channel, deadline_s=settings.grpc_deadline_s),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            cache_ttl_s=settings.jwks_cache_ttl_s,
            refresh_min_interval_s=settings.jwks_refresh_min_interval_s,
        )
        revocations = RevocationList(access_token_ttl_s=settings.access_token_ttl_s)
        feed = RevocationFeed(js=runtime.js, revocations=revocations, access_token_ttl_s=settings.access_token_ttl_s)
        await feed.start()
        servicer = TenantsServicer(
            tenants=Tenants(engine=runtime.engine),
            identity=CallerIdentity(verifier=verifier, revocations=revocations),
        )
        tenants_pb2_grpc.add_TenantsServiceServicer_to_server(servicer, runtime.server.server)

    try:
        await serve(SPEC, settings, wire, stop=stop)
    finally:
        if feed is not None:
            await feed.stop()
        await auth_channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.tenants", description=__doc__)
    add_common_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    settings = TenantsSettings()
    configure_logging(settings, service="tenants")
    if args.command == "serve":
        run_async(serve_tenants(settings))
    else:
        migrate(SPEC, settings, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
