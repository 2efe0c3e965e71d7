"""`python -m services.auth serve | migrate [up|down] | keys rotate|reseal | users deactivate|activate NAME`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from libs.common.config import AuthSettings, MigrationSettings, decode_master_key
from libs.common.db import FastReads, create_engine
from libs.common.error_reporting import configure_error_reporting
from libs.common.errors import AppError
from libs.common.events import connect_nats
from libs.common.heap import map_large_blocks
from libs.common.identity import Access, CallerIdentity, rpc_name
from libs.common.logging import configure_logging, get_logger
from libs.common.outbox import OutboxRelay
from libs.common.service import Runtime, ServiceSpec, add_common_commands, migrate, run_async, serve
from libs.common.tokens import TokenVerifier
from libs.common.tracing import configure_tracing
from repolens.auth.v1 import auth_pb2, auth_pb2_grpc
from services.auth import consumers, repository, use_cases
from services.auth.passwords import Passwords
from services.auth.servicer import AuthServicer
from services.auth.use_cases import Auth

_AUTH = auth_pb2.DESCRIPTOR.services_by_name["AuthService"]
SPEC = ServiceSpec(
    name="auth",
    schema=repository.SCHEMA,
    migrations=Path(__file__).parent / "migrations",
    outbox=repository.outbox,
    inbox=repository.inbox,
    grpc_service_names=[_AUTH.full_name],
    access=Access(
        # Public keys are public.
        public=frozenset({rpc_name(_AUTH, "GetJwks")}),
        # The calls made before a user has a token come from the gateway only, where the rate limits and the
        # failed-login lock are: anything else that reaches this port cannot guess passwords (docs/architecture.md).
        services={
            rpc_name(_AUTH, name): frozenset({"gateway"})
            for name in ("Register", "Login", "RefreshTokens", "Logout", "ExchangeAccessToken")
        },
    ),
    consumers=consumers.HANDLERS,
)

log = get_logger(__name__)


def build_auth(settings: AuthSettings, engine: AsyncEngine, fast_reads: FastReads) -> Auth:
    return Auth(
        engine=engine,
        fast_reads=fast_reads,
        passwords=Passwords(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        ),
        master_key=settings.master_key,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        access_ttl_s=settings.access_token_ttl_s,
        refresh_ttl_s=settings.refresh_token_ttl_s,
        access_token_max_days=settings.pat_max_days,
        refresh_reuse_grace_s=settings.refresh_reuse_grace_s,
    )


async def _reload_keys(auth: Auth, interval_s: float) -> None:
    """Picks up keys rotated by another process (the CLI or another replica)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await use_cases.load_keys(auth=auth, create_if_missing=False)
        except Exception as exc:
            log.warning("signing_keys.reload_failed", error=str(exc))


async def serve_auth(settings: AuthSettings, stop: asyncio.Event | None = None) -> None:
    tasks: list[asyncio.Task[None]] = []

    async def wire(runtime: Runtime) -> None:
        auth = build_auth(settings, runtime.engine, runtime.reads)
        await use_cases.load_keys(auth=auth)

        async def local_jwks() -> list[dict[str, str]]:
            return list(auth.keyring.jwks)

        verifier = TokenVerifier(
            fetch_jwks=local_jwks,  # type: ignore[arg-type]
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            refresh_min_interval_s=0,
            cache_ttl_s=settings.key_reload_interval_s,
        )
        # The database is the truth for auth's own calls: no deny-list needed here.
        runtime.authenticate(CallerIdentity(verifier=verifier))
        auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth=auth), runtime.server.server)

        async def keys_loaded() -> bool:
            return auth.keyring.signer is not None

        runtime.server.add_probe(keys_loaded)
        tasks.append(asyncio.create_task(_reload_keys(auth, settings.key_reload_interval_s)))

    try:
        await serve(SPEC, settings, wire, stop=stop)
    finally:
        for task in tasks:
            task.cancel()


async def _publish_now(settings: AuthSettings, auth: Auth) -> None:
    """Sends the CLI's events at once when NATS is reachable; otherwise a serving relay sends them later."""
    try:
        nc = await asyncio.wait_for(connect_nats(settings, name="auth-cli"), timeout=5)
    except Exception:
        log.warning("cli.events_left_in_outbox")
        return
    try:
        relay = OutboxRelay(engine=auth.engine, table=repository.outbox, js=nc.jetstream())
        await relay.relay_once()
    finally:
        await nc.close()


async def _admin(settings: AuthSettings, args: argparse.Namespace) -> str:
    engine = create_engine(settings, application_name="auth-cli")
    auth = build_auth(settings, engine, FastReads(settings, application_name="auth-cli"))  # opened if ever read
    try:
        if args.command == "keys" and args.action == "rotate":
            return f"new signing key {await use_cases.rotate_keys(auth=auth)}"
        if args.command == "keys" and args.action == "reseal":
            old_text = await asyncio.to_thread(Path(args.old_master_key_file).read_text, encoding="utf-8")
            old = decode_master_key(old_text.strip())
            return f"resealed {await use_cases.reseal_keys(auth=auth, old_master_key=old)} signing keys"
        user = await use_cases.set_user_active(auth=auth, username=args.username, active=args.action == "activate")
        await _publish_now(settings, auth)
        return f"user {user.username} {args.action}d"
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.auth", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_common_commands(subparsers)
    keys = subparsers.add_parser("keys", help="signing keys")
    keys.add_argument("action", choices=["rotate", "reseal"])
    keys.add_argument("--old-master-key-file", help="reseal: file holding the previous AUTH_MASTER_KEY (base64)")
    users = subparsers.add_parser("users", help="user administration")
    users.add_argument("action", choices=["deactivate", "activate"])
    users.add_argument("username")
    args = parser.parse_args(argv)

    settings = MigrationSettings() if args.command == "migrate" else AuthSettings()
    configure_logging(settings, service="auth")
    configure_tracing(settings, service="auth")
    configure_error_reporting(settings, service="auth")
    if args.command == "migrate":
        migrate(SPEC, settings, args)
        return 0
    assert isinstance(settings, AuthSettings)
    if args.command == "serve":
        map_large_blocks()  # each password hash's 19 MiB goes back to the system once done
        run_async(serve_auth(settings))
        return 0
    if args.command == "keys" and args.action == "reseal" and not args.old_master_key_file:
        parser.error("keys reseal needs --old-master-key-file")
    try:
        print(asyncio.run(_admin(settings, args)))
    except AppError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
