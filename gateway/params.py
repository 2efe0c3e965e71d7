"""Query and path parameters shared by the routes, with the rules the services apply stated in the schema."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from gateway.schemas import TEXT

Limit = Annotated[int, Query(ge=1, le=100, description="Items per page (default 50)")]
# What `next_cursor` holds: the last item's id, 16 bytes in unpadded URL-safe base64.
Cursor = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_-]{22}$",
        description="The `next_cursor` of the previous page (omit it for the first)",
    ),
]
# A report never changes once stored: its findings are paged by position.
OffsetCursor = Annotated[
    str | None,
    Query(pattern=r"^[0-9]{1,9}$", description="The `next_cursor` of the previous page (omit it for the first)"),
]
# Ids are UUIDs; anything else names nothing, and answers 404 like an id of another tenant.
Id = Annotated[str, Path(max_length=64, pattern=TEXT)]


def text(max_length: int, description: str | None = None) -> object:
    """A free-text query parameter: at most `max_length` characters, no NUL."""
    return Query(max_length=max_length, pattern=TEXT, description=description)
