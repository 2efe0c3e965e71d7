"""Envelope encryption of tenant secrets: AES-256-GCM under a per-tenant data key, wrapped by the master key."""

from __future__ import annotations

import secrets
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12


def _seal(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = secrets.token_bytes(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def _open(key: bytes, sealed: bytes, context: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], context)


def new_data_key(master_key: bytes, tenant_id: uuid.UUID) -> tuple[bytes, bytes]:
    """(data key, data key wrapped by the master key). The tenant id is bound in, so keys cannot be swapped."""
    data_key = AESGCM.generate_key(bit_length=256)
    return data_key, _seal(master_key, data_key, b"data-key:" + tenant_id.bytes)


def unwrap(wrapped: bytes, master_key: bytes, tenant_id: uuid.UUID) -> bytes:
    return _open(master_key, wrapped, b"data-key:" + tenant_id.bytes)


def rewrap(wrapped: bytes, *, old_master_key: bytes, new_master_key: bytes, tenant_id: uuid.UUID) -> bytes:
    return _seal(new_master_key, unwrap(wrapped, old_master_key, tenant_id), b"data-key:" + tenant_id.bytes)


def encrypt(data_key: bytes, *, tenant_id: uuid.UUID, field: str, value: str) -> bytes:
    """A secret sealed to its tenant and field: a ciphertext moved to another row or field fails to open."""
    return _seal(data_key, value.encode(), f"{tenant_id}:{field}".encode())


def decrypt(data_key: bytes, *, tenant_id: uuid.UUID, field: str, sealed: bytes) -> str:
    return _open(data_key, sealed, f"{tenant_id}:{field}".encode()).decode()
