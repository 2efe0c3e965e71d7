"""Alembic environment of the analysis service's service-scope migrations."""

from libs.common.migrations import run_env

run_env()
