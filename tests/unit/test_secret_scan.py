"""The secret-scanning step on real files: every rule, placeholders, test code, skipped files, redaction,
fingerprints and cancellation.

The fake credentials are assembled from pieces at run time, so this file holds no complete token literal that
another scanner would report."""

from __future__ import annotations

import base64
import json
import os
import random
import string
from pathlib import Path

import pytest

from libs.common import access_tokens
from services.analysis.engine.inventory import Cancelled
from services.analysis.engine.secrets import (
    RULES,
    SEVERITIES,
    SecretFinding,
    SecretScan,
    is_placeholder,
    is_test_path,
    scan_secrets,
    shannon_entropy,
)

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits


def rand(n: int, alphabet: str = ALNUM, seed: int = 1) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


AWS_ID = "AK" + "IA" + rand(16, UPPER_DIGITS, 2)
AWS_SECRET = rand(40, ALNUM + "/+", 3)
GITHUB = "gh" + "p_" + rand(36, seed=4)
GITHUB_PAT = "github" + "_pat_" + rand(22, seed=5) + "_" + rand(59, seed=6)
GITLAB = "gl" + "pat-" + rand(20, seed=7)
REPOLENS = access_tokens.new_token()
SLACK = "xo" + "xb-" + rand(12, string.digits, 8) + "-" + rand(13, string.digits, 9) + "-" + rand(24, seed=10)
SLACK_HOOK_PATH = "services/T" + rand(8, UPPER_DIGITS, 11) + "/B" + rand(8, UPPER_DIGITS, 12) + "/" + rand(24, seed=13)
STRIPE = "sk" + "_live_" + rand(24, seed=14)
GOOGLE = "AI" + "za" + rand(35, ALNUM + "_-", 15)
JWT = b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url({"sub": "1234567890", "iat": 1516239022}) + "."
JWT += rand(43, ALNUM + "_-", 16)
GENERIC = rand(24, seed=17)
KEY_BODY = [rand(64, ALNUM + "+/", 20 + i) for i in range(4)]
PEM = "-----BEGIN RSA " + "PRIVATE KEY-----\n" + "\n".join(KEY_BODY) + "\n-----END RSA " + "PRIVATE KEY-----\n"

# (rule id, severity, the line holding the secret, the secret as reported)
CASES: list[tuple[str, str, str, str]] = [
    ("aws-access-key-id", "high", f'aws_access_key_id = "{AWS_ID}"', AWS_ID),
    ("aws-secret-access-key", "critical", f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", AWS_SECRET),
    ("github-token", "critical", f"    token: {GITHUB}", GITHUB),
    ("github-token", "critical", f"export GH_TOKEN={GITHUB_PAT}", GITHUB_PAT),
    ("gitlab-token", "critical", f"CI_TOKEN='{GITLAB}'", GITLAB),
    ("repolens-pat", "critical", f"REPOLENS_TOKEN={REPOLENS}", REPOLENS),
    ("slack-token", "high", f'const slack = new WebClient("{SLACK}");', SLACK),
    ("slack-webhook", "high", f"url = https://hooks.slack.com/{SLACK_HOOK_PATH}", SLACK_HOOK_PATH),
    ("stripe-live-key", "critical", f"Stripe.api_key = '{STRIPE}'", STRIPE),
    ("google-api-key", "medium", f'<script src="https://maps.example.org/js?key={GOOGLE}"></script>', GOOGLE),
    ("jwt", "medium", f"Authorization: Bearer {JWT}", JWT),
    ("generic-secret", "medium", f'DB_PASSWORD = "{GENERIC}"', GENERIC),
]


def write(root: Path, rel: str, content: str | bytes) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return rel


def assert_not_leaked(scan: SecretScan, *secrets: str) -> None:
    dumped = json.dumps(scan.to_dict(), ensure_ascii=False)
    for secret in secrets:
        assert secret not in dumped
        assert secret[4:] not in dumped


@pytest.mark.parametrize(
    ("rule_id", "severity", "line", "secret"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_each_rule_fires_once_with_position_redaction_and_no_leak(
    tmp_path: Path, rule_id: str, severity: str, line: str, secret: str
) -> None:
    rel = write(tmp_path, "app/settings.conf", "# configuration\n\n" + line + "\n")
    scan = scan_secrets(tmp_path, [rel])
    assert scan.files_scanned == 1
    assert scan.skipped == {}
    assert len(scan.findings) == 1
    finding = scan.findings[0]
    assert finding == SecretFinding(
        rule_id=rule_id,
        severity=severity,
        path=rel,
        line=3,
        column=line.index(secret) + 1,
        redacted=f"{secret[:4]}…({len(secret)} chars)",
        fingerprint=finding.fingerprint,
    )
    assert len(finding.fingerprint) == 64
    assert int(finding.fingerprint, 16) >= 0
    assert_not_leaked(scan, secret)


def test_private_key_reports_the_begin_line_and_reveals_nothing(tmp_path: Path) -> None:
    rel = write(tmp_path, "deploy/id_rsa", "\n" + PEM)
    scan = scan_secrets(tmp_path, [rel])
    body = "".join(KEY_BODY)
    assert [(f.rule_id, f.severity, f.line, f.column, f.redacted) for f in scan.findings] == [
        ("private-key", "critical", 2, 1, f"…({len(body)} chars)")
    ]
    assert_not_leaked(scan, *KEY_BODY)


def test_private_key_in_a_json_string_with_escaped_newlines(tmp_path: Path) -> None:
    escaped = PEM.replace("\n", "\\n")
    rel = write(tmp_path, "sa.json", '{\n  "private_key": "' + escaped + '"\n}\n')
    scan = scan_secrets(tmp_path, [rel])
    assert [(f.rule_id, f.line, f.column) for f in scan.findings] == [("private-key", 2, 19)]


def test_header_without_key_body_and_non_json_jwt_are_not_findings(tmp_path: Path) -> None:
    rel = write(
        tmp_path,
        "parse.py",
        'if line.startswith("-----BEGIN RSA ' + 'PRIVATE KEY-----"):\n'
        "    pass\n"
        "blob = 'eyJ" + rand(20, seed=30) + "." + rand(20, seed=31) + "." + rand(20, seed=32) + "'\n",
    )
    assert scan_secrets(tmp_path, [rel]).findings == []


def test_a_repolens_token_with_a_wrong_checksum_is_a_look_alike(tmp_path: Path) -> None:
    wrong = REPOLENS[:-6] + ("000000" if not REPOLENS.endswith("000000") else "000001")
    assert access_tokens.looks_like_token(REPOLENS)
    assert not access_tokens.looks_like_token(wrong)
    rel = write(tmp_path, "deploy.sh", f"export REPOLENS_TOKEN={wrong}\nexport OTHER={REPOLENS}\n")
    assert [(f.rule_id, f.line) for f in scan_secrets(tmp_path, [rel]).findings] == [("repolens-pat", 2)]


def test_a_value_another_rule_reports_is_not_reported_again_as_generic(tmp_path: Path) -> None:
    rel = write(tmp_path, "app.py", f'GITHUB_TOKEN = "{GITHUB}"\naws_secret_access_key = "{AWS_SECRET}"\n')
    scan = scan_secrets(tmp_path, [rel])
    assert [(f.rule_id, f.line) for f in scan.findings] == [("github-token", 1), ("aws-secret-access-key", 2)]


def test_placeholders_are_skipped_and_counted(tmp_path: Path) -> None:
    lines = [
        "AK" + "IA" + "X" * 16,
        "AK" + "IA" + "IOSFODNN7" + "EXAMPLE",
        "gh" + "p_" + "0" * 36,
        'password = "${DB_PASSWORD_FROM_ENV}"',
        'api_token = "<your-api-token-goes-here>"',
        'secret = "changeme-Changeme-1234"',
        'SECRET_KEY = "{{secret_key_value_1}}"',
        "sk" + "_live_" + "xxxxxxxxxxxxxxxxxxxxxxxx",
    ]
    rel = write(tmp_path, "config.py", "\n".join(lines) + "\n")
    scan = scan_secrets(tmp_path, [rel])
    assert scan.findings == []
    assert scan.skipped == {"placeholder": len(lines)}


def test_generic_values_that_look_like_words_or_are_short_or_low_entropy_are_ignored(tmp_path: Path) -> None:
    rel = write(
        tmp_path,
        "app.py",
        'CSRF = requires_csrf_token.__name__ = "requires_csrf_token"\n'
        'password = "Short1aB"\n'  # below 16 characters
        'password = "aaaaaaaabbbbbbbb11"\n'  # entropy about 1.5
        'SECRET_KEY_PREFIX = "django-insecure-"\n'  # a word, no digits, one case
        'token = get_token("AbCdEfGh12345678")\n',  # not assigned to the name
    )
    scan = scan_secrets(tmp_path, [rel])
    assert scan.findings == []
    assert scan.skipped == {}


def test_test_code_lowers_provider_severity_and_skips_generic(tmp_path: Path) -> None:
    content = f'GITHUB = "{GITHUB}"\nPASSWORD = "{GENERIC}"\n'
    files = [
        write(tmp_path, "tests/test_client.py", content),
        write(tmp_path, "src/__snapshots__/view.snap", content),
        write(tmp_path, "src/client.py", content),
    ]
    scan = scan_secrets(tmp_path, files)
    assert [(f.path, f.rule_id, f.severity) for f in scan.findings] == [
        ("src/__snapshots__/view.snap", "github-token", "high"),
        ("src/client.py", "github-token", "critical"),
        ("src/client.py", "generic-secret", "medium"),
        ("tests/test_client.py", "github-token", "high"),
    ]
    assert scan.skipped == {"test_generic": 2}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("tests/a.py", True),
        ("pkg/test/a.go", True),
        ("spec/fixtures/x.json", True),
        ("src/app_test.go", True),
        ("src/button.test.tsx", True),
        ("src/button.spec.ts", True),
        ("test_app.py", True),
        ("conftest.py", True),
        ("src/contest.py", False),
        ("src/latest/a.py", False),
        ("src/testimony.py", False),
    ],
)
def test_is_test_path(path: str, expected: bool) -> None:
    assert is_test_path(path) is expected


def test_skipped_files_by_reason(tmp_path: Path) -> None:
    secret_line = f"token = {GITHUB}\n"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.txt").write_text(secret_line)
    root = tmp_path / "repo"
    files = [
        write(root, "package-lock.json", secret_line),
        write(root, "logo.png", b"\x89PNG\0\0" + secret_line.encode()),
        write(root, "big.txt", secret_line * 100),
        "missing.txt",
        "../outside/leak.txt",
        "/etc/passwd",
        write(root, "src/ok.txt", secret_line),
    ]
    (root / "src" / "dir").mkdir()
    files.append("src/dir")
    os.symlink(outside / "leak.txt", root / "file-link.txt")
    os.symlink(outside, root / "dir-link")
    files += ["file-link.txt", "dir-link/leak.txt"]
    scan = scan_secrets(root, files, max_file_bytes=1000)
    assert [f.path for f in scan.findings] == ["src/ok.txt"]
    assert scan.files_scanned == 1
    assert scan.skipped == {
        "lock_file": 1,
        "binary": 1,
        "too_large": 1,
        "not_regular": 3,
        "outside_root": 3,
    }


def test_fingerprint_is_stable_across_lines_and_depends_on_path_and_rule(tmp_path: Path) -> None:
    a = write(tmp_path, "a/config.py", f'GITHUB = "{GITHUB}"\n')
    first = scan_secrets(tmp_path, [a]).findings[0]
    write(tmp_path, "a/config.py", "import os\n\n\n# moved\n" + f'GITHUB = "{GITHUB}"\n')
    moved = scan_secrets(tmp_path, [a]).findings[0]
    assert (first.line, moved.line) == (1, 5)
    assert first.fingerprint == moved.fingerprint
    b = write(tmp_path, "b/config.py", f'GITHUB = "{GITHUB}"\n')
    assert scan_secrets(tmp_path, [b]).findings[0].fingerprint != first.fingerprint
    other = write(tmp_path, "a/other.py", f'GITHUB = "{GITHUB[:-1]}Z"\n')
    assert scan_secrets(tmp_path, [other]).findings[0].fingerprint != first.fingerprint


def test_cancellation_between_files(tmp_path: Path) -> None:
    files = [write(tmp_path, f"f{i}.txt", "x\n") for i in range(5)]
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 2

    with pytest.raises(Cancelled):
        scan_secrets(tmp_path, files, should_stop=stop)
    assert calls == 3


def test_report_shape_and_order(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "z.env", f"STRIPE_KEY={STRIPE}\nGOOGLE={GOOGLE}\n"),
        write(tmp_path, "a.yaml", f"slack: {SLACK}\n"),
    ]
    data = scan_secrets(tmp_path, files).to_dict()
    assert list(data) == ["findings", "files_scanned", "skipped"]
    assert data["files_scanned"] == 2
    assert [(f["path"], f["line"], f["rule_id"]) for f in data["findings"]] == [
        ("a.yaml", 1, "slack-token"),
        ("z.env", 1, "stripe-live-key"),
        ("z.env", 2, "google-api-key"),
    ]
    assert set(data["findings"][0]) == {"rule_id", "severity", "path", "line", "column", "redacted", "fingerprint"}
    assert_not_leaked(scan_secrets(tmp_path, files), STRIPE, GOOGLE, SLACK)


def test_rules_and_helpers() -> None:
    assert len({(r.id, r.paths) for r in RULES}) == len(RULES)
    assert all(r.severity in SEVERITIES for r in RULES)
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0
    assert is_placeholder("x" * 20)
    assert is_placeholder("my-Example-Key-123")
    assert not is_placeholder(GENERIC)
    # Random tokens are not mistaken for placeholders (a case-insensitive `xxx` would drop one in ~500).
    assert not any(is_placeholder("gh" + "p_" + rand(36, seed=seed)) for seed in range(3000))


def test_unquoted_generic_values_only_in_configuration_files(tmp_path: Path) -> None:
    content = (
        f"DB_PASSWORD={GENERIC}\nauth_token: {GENERIC[::-1]}  # rotated monthly\nsecret_dir = /etc/app/secrets.d\n"
    )
    files = [write(tmp_path, ".env.production", content), write(tmp_path, "app.py", content)]
    scan = scan_secrets(tmp_path, files)
    assert [(f.path, f.rule_id, f.line, f.column) for f in scan.findings] == [
        (".env.production", "generic-secret", 1, 13),
        (".env.production", "generic-secret", 2, 13),
    ]
    assert_not_leaked(scan, GENERIC, GENERIC[::-1])
