"""/api/v2/badges: SVG badges for a repository's README, read with the repository's badge token (docs/badges.md).

A badge is public by nature (a README is), so the route answers SVG only, never a JSON error: an unknown
repository, a wrong or rotated token, another tenant's repository, a metric RepoLens does not measure and an unknown
branch all get the same grey "unknown" badge with status 404, and say nothing about what exists. Badges are
`Cache-Control: no-cache` (GitHub's image proxy and browsers ask again each time) with a strong `ETag`, so asking
again costs a 304 while nothing changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

import anybadge
from fastapi import APIRouter, Query, Request, Response, status

from gateway.deps import BackendsDep
from libs.common.errors import AppError
from repolens.analysis.v1 import analysis_pb2

router = APIRouter(prefix="/api/v2", tags=["badges"])

SVG = "image/svg+xml"
# The colours of shields.io's badges, which README readers know.
_GREY, _GREEN, _RED, _BLUE, _YELLOW, _ORANGE = "#9F9F9F", "#4C1", "#E05D44", "#007EC6", "#DFB317", "#FE7D37"
_LONGEST = 300  # characters of a path segment, token or branch name worth asking the service about


@dataclass(frozen=True)
class Shown:
    label: str
    value: str
    colour: str


def _gate(reply: analysis_pb2.GetBadgeResponse) -> tuple[str, str]:
    colours = {"passed": _GREEN, "failed": _RED}
    return reply.quality_gate or "none", colours.get(reply.quality_gate, _GREY)


def _lines(reply: analysis_pb2.GetBadgeResponse) -> tuple[str, str]:
    return _short(reply.code_lines), _BLUE


def _findings(reply: analysis_pb2.GetBadgeResponse) -> tuple[str, str]:
    count = reply.findings
    colour = _GREEN if count == 0 else _YELLOW if count < 10 else _ORANGE
    return str(count), colour


def _complexity(reply: analysis_pb2.GetBadgeResponse) -> tuple[str, str]:
    mean = reply.complexity
    colour = _GREEN if mean <= 5 else _YELLOW if mean <= 10 else _RED
    return f"{mean:.1f}", colour


def _last(reply: analysis_pb2.GetBadgeResponse) -> tuple[str, str]:
    finished = reply.finished_at.ToDatetime(tzinfo=dt.UTC)
    return finished.strftime("%Y-%m-%d"), _BLUE


# The metrics a badge can show and its label; duplication is not measured yet, so its badge is "unknown".
METRICS = {
    "quality_gate": ("quality gate", _gate),
    "code_lines": ("lines of code", _lines),
    "findings": ("findings", _findings),
    "complexity": ("complexity", _complexity),
    "last_analysis": ("last analysis", _last),
}


def _short(count: int) -> str:
    """12345 as 12.3k, 4500000 as 4.5M."""
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if count >= size:
            return f"{count / size:.1f}{suffix}"
    return str(count)


def svg(shown: Shown) -> bytes:
    """The badge drawn by anybadge. Its mask ids count up per process; starting them at one each time makes the same
    badge the same bytes, and so the same ETag, in every worker."""
    anybadge.Badge.mask_id = 0
    badge = anybadge.Badge(label=shown.label, value=shown.value, default_color=shown.colour)
    text: str = badge.badge_svg_text
    return text.encode()


def _answer(request: Request, shown: Shown, code: int) -> Response:
    body = svg(shown)
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    asked = request.headers.get("if-none-match", "")
    if code == status.HTTP_200_OK and etag in {tag.strip().removeprefix("W/") for tag in asked.split(",")}:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(content=body, status_code=code, media_type=SVG, headers=headers)


def _unknown(request: Request, metric: str, code: int = status.HTTP_404_NOT_FOUND) -> Response:
    label = METRICS[metric][0] if metric in METRICS else "repolens"
    return _answer(request, Shown(label, "unknown", _GREY), code)


_SVG_ONLY: dict[int | str, dict[str, Any]] = {
    200: {"content": {SVG: {}}, "description": "The badge"},
    304: {"description": "The badge has not changed since the ETag given in If-None-Match"},
    404: {
        "content": {SVG: {}},
        "description": "A grey 'unknown' badge: unknown repository or branch, wrong token, or a metric not measured",
    },
    503: {"content": {SVG: {}}, "description": "A grey 'unknown' badge: the analysis service is unavailable"},
}


@router.get(
    "/badges/{repository_id}/{metric}.svg",
    response_class=Response,
    responses=_SVG_ONLY,
    summary="A README badge of the repository's newest succeeded analysis, read with its badge token (no user token)",
)
async def badge(
    repository_id: str,
    metric: str,
    request: Request,
    backends: BackendsDep,
    token: Annotated[str, Query(description="The repository's badge token (rlb_...)")] = "",
    branch: Annotated[str, Query(description="A branch; the repository's default branch when absent")] = "",
) -> Response:
    if metric not in METRICS or max(len(repository_id), len(token), len(branch)) > _LONGEST or not token:
        return _unknown(request, metric)
    try:
        reply: analysis_pb2.GetBadgeResponse = await backends.call(
            backends.analysis.GetBadge,
            analysis_pb2.GetBadgeRequest(repository_id=repository_id, token=token, branch=branch),
            request=request,
            as_gateway=True,
        )
    except AppError as exc:  # the service unavailable or too slow: still a badge, and no JSON
        unavailable = exc.spec.http_status >= 500
        return _unknown(request, metric, status.HTTP_503_SERVICE_UNAVAILABLE if unavailable else 404)
    if not reply.found:
        return _unknown(request, metric)
    label, show = METRICS[metric]
    value, colour = show(reply) if reply.analysed else ("not analysed", _GREY)
    return _answer(request, Shown(label, value, colour), status.HTTP_200_OK)
