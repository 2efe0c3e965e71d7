"""Ed25519 signing keys (private halves encrypted by the master key), access tokens and refresh tokens."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from libs.common.tokens import ALGORITHM
from services.auth.domain import SigningKey

_NONCE_BYTES = 12
REFRESH_TOKEN_PREFIX = "rt_"  # noqa: S105 # nosec B105 # a prefix, not a secret


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_key_material(master_key: bytes) -> tuple[str, bytes, bytes]:
    """A fresh key: (kid, raw public key, encrypted raw private key). The kid is bound into the ciphertext."""
    private = Ed25519PrivateKey.generate()
    kid = "k" + secrets.token_hex(8)
    public_raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    private_raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = nonce + AESGCM(master_key).encrypt(nonce, private_raw, kid.encode())
    return kid, public_raw, sealed


def reseal(key: SigningKey, *, old_master_key: bytes, new_master_key: bytes) -> bytes:
    """The private key encrypted again under a new master key (master-key rotation)."""
    private = open_private_key(key, old_master_key)
    private_raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + AESGCM(new_master_key).encrypt(nonce, private_raw, key.kid.encode())


def open_private_key(key: SigningKey, master_key: bytes) -> Ed25519PrivateKey:
    nonce, sealed = key.private_key_encrypted[:_NONCE_BYTES], key.private_key_encrypted[_NONCE_BYTES:]
    return Ed25519PrivateKey.from_private_bytes(AESGCM(master_key).decrypt(nonce, sealed, key.kid.encode()))


def public_jwk(key: SigningKey) -> dict[str, str]:
    Ed25519PublicKey.from_public_bytes(key.public_key)  # refuses a malformed key early
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(key.public_key),
        "kid": key.kid,
        "alg": ALGORITHM,
        "use": "sig",
    }


class Signer:
    """Signs access tokens with the newest key; holds the decrypted key in memory only."""

    def __init__(self, *, kid: str, private_key: Ed25519PrivateKey, issuer: str, audience: str, ttl_s: int):
        self.kid = kid
        self._private_key = private_key
        self._issuer = issuer
        self._audience = audience
        self.ttl_s = ttl_s

    def access_token(
        self,
        *,
        user_id: uuid.UUID,
        tenant_id: uuid.UUID,
        role: str,
        session_id: uuid.UUID,
        now: dt.datetime,
        scopes: tuple[str, ...] | None = None,
        not_after: dt.datetime | None = None,
    ) -> str:
        """A login's token (no `scp`: whatever the role allows), or a personal access token's exchange (`scp`, and
        never valid past `not_after`, the personal token's own expiry)."""
        issued = int(now.timestamp())
        expires = issued + self.ttl_s
        if not_after is not None:
            expires = min(expires, int(not_after.timestamp()))
        claims: dict[str, Any] = {
            "sub": str(user_id),
            "tid": str(tenant_id),
            "role": role,
            "sid": str(session_id),
            "jti": secrets.token_urlsafe(12),
            "iss": self._issuer,
            "aud": self._audience,
            "iat": issued,
            "exp": expires,
        }
        if scopes is not None:
            claims["scp"] = list(scopes)
        return jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers={"kid": self.kid})


def new_refresh_token() -> tuple[str, bytes]:
    """(token for the client, hash to store). 256 random bits, so a plain SHA-256 is enough."""
    token = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
