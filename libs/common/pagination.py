"""Keyset pagination: pages of items and opaque cursors (the id of the last item)."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from libs.common import errors
from libs.common.errors import AppError

T = TypeVar("T")
PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX = 50, 100


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: uuid.UUID | None


def encode_cursor(value: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(value.bytes).decode().rstrip("=")


def decode_cursor(cursor: str) -> uuid.UUID | None:
    """None for an empty cursor (the first page); the validation error for anything not ours."""
    if not cursor:
        return None
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise AppError(errors.VALIDATION, details={"field": "cursor", "reason": "not a cursor from this API"}) from exc


def page_limit(page_size: int) -> int:
    """0 means the default; more than the maximum is refused, not silently cut."""
    if page_size < 0 or page_size > PAGE_SIZE_MAX:
        raise AppError(errors.VALIDATION, details={"field": "limit", "reason": f"1-{PAGE_SIZE_MAX}"})
    return page_size or PAGE_SIZE_DEFAULT


def page_of(rows: list[T], limit: int, key: Callable[[T], uuid.UUID]) -> Page[T]:
    """`rows` fetched with limit + 1: the extra row only says that there is a next page."""
    items = rows[:limit]
    return Page(items=items, next_cursor=key(items[-1]) if len(rows) > limit else None)
