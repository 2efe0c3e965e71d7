"""Alembic environment of the tenants schema."""

from libs.common.migrations import run_env

run_env()
