"""`python -m services.tenants serve | migrate [up|down] | keys rewrap --old-master-key-file FILE`."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common import access_tokens
from libs.common.config import MigrationSettings, TenantsSettings, decode_master_key
from libs.common.db import create_engine
from libs.common.error_reporting import configure_error_reporting
from libs.common.grpc_client import open_channel
from libs.common.identity import Access, follow_users, rpc_name
from libs.common.logging import configure_logging
from libs.common.revocation import RevocationFeed
from libs.common.service import Runtime, ServiceSpec, add_common_commands, migrate, run_async, serve
from libs.common.tracing import configure_tracing
from repolens.tenants.v1 import tenants_pb2, tenants_pb2_grpc
from services.tenants import consumers, repository, use_cases
from services.tenants.servicer import TenantsInternalServicer, TenantsServicer
from services.tenants.use_cases import Tenants

_INTERNAL = tenants_pb2.DESCRIPTOR.services_by_name["TenantsInternalService"]
_TENANTS = tenants_pb2.DESCRIPTOR.services_by_name["TenantsService"]
SPEC = ServiceSpec(
    name="tenants",
    schema=repository.SCHEMA,
    migrations=Path(__file__).parent / "migrations",
    outbox=repository.outbox,
    inbox=repository.inbox,
    grpc_service_names=[_TENANTS.full_name, _INTERNAL.full_name],
    # Every internal RPC is for the analysis service alone; TenantsService takes users' tokens.
    access=Access(
        services={rpc_name(_INTERNAL, m.name): frozenset({"analysis"}) for m in _INTERNAL.methods},
        # A personal access token reads the settings and nothing else of the tenant's administration.
        scopes={rpc_name(_TENANTS, "GetSettings"): access_tokens.SETTINGS_READ},
    ),
    consumers=consumers.HANDLERS,
)


def build_tenants(settings: TenantsSettings, engine: AsyncEngine) -> Tenants:
    return Tenants(
        engine=engine,
        master_key=settings.master_key,
        invitation_ttl=dt.timedelta(seconds=settings.invitation_ttl_s),
        max_owned_tenants=settings.user_max_tenants,
    )


async def serve_tenants(settings: TenantsSettings, stop: asyncio.Event | None = None) -> None:
    auth_channel = open_channel(settings.auth_grpc_target)
    feed: RevocationFeed | None = None

    async def wire(runtime: Runtime) -> None:
        nonlocal feed
        users, feed = await follow_users(settings, js=runtime.js, auth_channel=auth_channel)
        runtime.authenticate(users)
        tenants = build_tenants(settings, runtime.engine)
        tenants_pb2_grpc.add_TenantsServiceServicer_to_server(TenantsServicer(tenants=tenants), runtime.server.server)
        tenants_pb2_grpc.add_TenantsInternalServiceServicer_to_server(
            TenantsInternalServicer(tenants=tenants), runtime.server.server
        )

    try:
        await serve(SPEC, settings, wire, stop=stop)
    finally:
        if feed is not None:
            await feed.stop()
        await auth_channel.close()


async def _rewrap(settings: TenantsSettings, old_key_file: str) -> int:
    old_text = await asyncio.to_thread(Path(old_key_file).read_text, encoding="utf-8")
    engine = create_engine(settings, application_name="tenants-cli")
    try:
        tenants = build_tenants(settings, engine)
        return await use_cases.rewrap_data_keys(tenants=tenants, old_master_key=decode_master_key(old_text.strip()))
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.tenants", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_common_commands(subparsers)
    keys = subparsers.add_parser("keys", help="tenant data keys")
    keys.add_argument("action", choices=["rewrap"])
    keys.add_argument("--old-master-key-file", required=True, help="file holding the previous TENANTS_MASTER_KEY")
    args = parser.parse_args(argv)
    # `migrate` reads only the database settings: the migration Job holds none of the service's keys.
    settings = MigrationSettings() if args.command == "migrate" else TenantsSettings()
    configure_logging(settings, service="tenants")
    configure_tracing(settings, service="tenants")
    configure_error_reporting(settings, service="tenants")
    if args.command == "migrate":
        migrate(SPEC, settings, args)
        return 0
    assert isinstance(settings, TenantsSettings)
    if args.command == "serve":
        run_async(serve_tenants(settings))
    else:
        count = asyncio.run(_rewrap(settings, args.old_master_key_file))
        print(f"rewrapped {count} tenant data keys under the current TENANTS_MASTER_KEY")
    return 0


if __name__ == "__main__":
    sys.exit(main())
