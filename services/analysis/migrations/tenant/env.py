"""Alembic environment of the analysis service's tenant-scope migrations."""

from libs.common.migrations import run_env

run_env()
