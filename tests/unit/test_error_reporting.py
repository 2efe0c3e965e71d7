"""What the Sentry scrubber removes, and what it leaves for debugging."""

from __future__ import annotations

import base64

from pydantic import SecretStr

from libs.common.config import AuthSettings, TenantsSettings
from libs.common.error_reporting import FILTERED, Scrubber, known_secrets

SQL_ERROR = (
    '(psycopg.errors.UndefinedColumn) column "full_name" of relation "users" does not exist\n'
    "LINE 1: INSERT INTO auth.users (id, username, email, full_name, password_hash)\n"
    "[SQL: INSERT INTO auth.users (id, username, email) VALUES (%(id)s, %(username)s, %(email)s)]\n"
    "[parameters: {'id': UUID('5c9e'), 'username': 'zelda', 'email': 'zelda@example.org', "
    "'password_hash': '$argon2id$v=19$m=19456,t=2,p=1$abc$def'}]"
)


def test_sql_errors_keep_the_statement_but_lose_the_row() -> None:
    text = Scrubber().text(SQL_ERROR + "\nDETAIL:  Key (username)=(zelda) already exists.")
    assert 'column "full_name" of relation "users" does not exist' in text
    assert "[SQL: INSERT INTO auth.users" in text
    assert "zelda" not in text
    assert "argon2" not in text
    assert f"[parameters: {FILTERED}]" in text
    assert f"DETAIL: {FILTERED}" in text


def test_token_shapes_emails_and_url_credentials_are_removed() -> None:
    secrets = {
        "Bearer abc.def-ghi": "Bearer",
        "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl": "",
        "rt_" + "A" * 43: "",
        "inv_" + "b" * 43: "",
        "sk-ant-api03-abcdefghijkl": "",
        "ghp_" + "x" * 36: "",
        "github_pat_" + "y" * 40: "",
        "postgresql://repolens:s3cretpw@db:5432/x": "postgresql://",
        "someone@example.com": "",
        "Zm9vYmFyYmF6cXV4cXV1eGZvb2JhcmJhenF1eHF1dXg=": "",  # 40+ opaque characters
    }
    scrubber = Scrubber()
    for secret, kept in secrets.items():
        text = scrubber.text(f"failed with {secret} here")
        assert secret not in text, text
        assert text.startswith("failed with ")
        assert text.endswith(" here")
        assert kept in text


def test_known_secret_values_are_removed_wherever_they_are() -> None:
    scrubber = Scrubber(["short", "a-configured-service-token-value"])
    event = scrubber.event(
        {"exception": {"values": [{"value": "got a-configured-service-token-value back", "type": "ValueError"}]}}
    )
    assert event["exception"]["values"][0]["value"] == f"got {FILTERED} back"
    assert scrubber.text("short") == "short"  # too short to be told from ordinary words


def test_secret_keys_are_filtered_and_code_locations_kept() -> None:
    long_path = "/srv/app/site_packages_with_a_very_long_name_that_looks_opaque/x.py"
    event = Scrubber().event(
        {
            "extra": {"api_key": "plain", "Authorization": "x", "password": "y", "count": 3, "empty_token": ""},
            "frames": [{"abs_path": long_path, "function": "f", "context_line": "call(user@example.com)"}],
        }
    )
    assert event["extra"] == {
        "api_key": FILTERED,
        "Authorization": FILTERED,
        "password": FILTERED,
        "count": 3,
        "empty_token": "",
    }
    assert event["frames"][0]["abs_path"] == long_path
    assert event["frames"][0]["context_line"] == "call([email])"


def test_known_secrets_come_from_the_settings() -> None:
    key = base64.b64encode(b"k" * 16 + b"0123456789abcdef").decode()
    auth = AuthSettings(auth_master_key=SecretStr(key), database_url="postgresql://svc:pw-in-url@db/x")
    assert key in known_secrets(auth)
    assert "pw-in-url" in known_secrets(auth)
    tenants = TenantsSettings(internal_service_tokens={"analysis": SecretStr("t" * 40)})
    assert "t" * 40 in known_secrets(tenants)
