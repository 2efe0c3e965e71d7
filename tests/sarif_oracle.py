"""The official OASIS SARIF 2.1.0 JSON schema as a test oracle: our logs are checked against the standard's own
schema (tests/fixtures/sarif/), not against our idea of it."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema.validators import validator_for  # type: ignore[import-untyped]

SCHEMA_PATH = Path(__file__).parent / "fixtures" / "sarif" / "sarif-schema-2.1.0.json"


@functools.cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


@functools.cache
def _validator() -> Any:
    # The class the schema's own `$schema` names (draft-07), with the formats jsonschema can check without extras.
    cls = validator_for(schema())
    cls.check_schema(schema())
    return cls(schema(), format_checker=cls.FORMAT_CHECKER)


def schema_errors(log: Any) -> list[str]:
    """Every violation of the SARIF 2.1.0 schema, as `path: message` lines; empty when the log is valid."""
    return sorted(
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}" for error in _validator().iter_errors(log)
    )
