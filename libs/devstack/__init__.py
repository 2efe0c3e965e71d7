"""Local stack launcher: embedded PostgreSQL, NATS and Valkey, a process supervisor and the RepoLens service stack."""

from libs.devstack.servers import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedValkey,
    ServerStartError,
    create_database,
    database_url_for,
    drop_database,
    free_port,
    port_is_free,
)
from libs.devstack.stack import SERVICES, Stack, StackError
from libs.devstack.supervisor import ChildExit, Supervisor

__all__ = [
    "SERVICES",
    "ChildExit",
    "EmbeddedNats",
    "EmbeddedPostgres",
    "EmbeddedValkey",
    "ServerStartError",
    "Stack",
    "StackError",
    "Supervisor",
    "create_database",
    "database_url_for",
    "drop_database",
    "free_port",
    "port_is_free",
]
