"""README badges: the per-repository token a badge URL carries.

Like a webhook secret (services/analysis/github.py), a badge token is never stored: it is derived from WEBHOOK_KEY,
the tenant, the repository and a generation that rotating the token moves on, under a label of its own so that it
never equals the repository's webhook secret. It grants one thing, the badges of one repository: it is not a bearer
token, and every other route refuses it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

TOKEN_PREFIX = "rlb_"  # noqa: S105 # nosec B105 # a prefix, not a secret
_BODY = 32  # base64url characters: 192 bits


def badge_token(key: bytes, *, tenant_id: uuid.UUID, repository_id: uuid.UUID, generation: int) -> str:
    digest = hmac.new(key, f"badge:{tenant_id}:{repository_id}:{generation}".encode(), hashlib.sha256).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(digest).decode()[:_BODY]


def token_matches(expected: str, given: str) -> bool:
    """Constant time, whatever `given` holds."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", errors="replace"))
