"""Alembic environment of the auth schema."""

from libs.common.migrations import run_env

run_env()
