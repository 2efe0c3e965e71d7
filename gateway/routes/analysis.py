"""/api/v2/repositories and /api/v2/analyses: the tenant's repositories, their analyses and reports."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response, status

from gateway.deps import BackendsDep, CurrentCaller
from gateway.params import Cursor, Id, Limit, OffsetCursor, text
from gateway.routes.badges import METRICS
from gateway.schemas import (
    TEXT,
    AnalysisOut,
    AnalysisPage,
    BadgeTokenOut,
    BranchOut,
    BranchPage,
    CreateRepositoryBody,
    DiffOut,
    ErrorOut,
    FindingOut,
    FindingPage,
    HookOut,
    PullRequestOut,
    RepositoryOut,
    RepositoryPage,
    StartAnalysisBody,
    UpdateRepositoryBody,
    WebhookSecretOut,
)
from repolens.analysis.v1 import analysis_pb2

router = APIRouter(prefix="/api/v2", tags=["repositories and analyses"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing, invalid, expired or revoked token"},
    403: {"model": ErrorOut, "description": "Viewers may only read"},
    404: {"model": ErrorOut, "description": "Not found in the token's tenant"},
    422: {"model": ErrorOut, "description": "Validation failed, or a URL/ref refused (`ERR_REPO_003`/`004`)"},
}


def _time(message: Any, name: str) -> dt.datetime | None:
    if not message.HasField(name):
        return None
    value: dt.datetime = getattr(message, name).ToDatetime(tzinfo=dt.UTC)
    return value


def _repository(repository: analysis_pb2.Repository) -> RepositoryOut:
    return RepositoryOut(
        id=repository.id,
        name=repository.name,
        url=repository.url,
        default_branch=repository.default_branch,
        created_at=repository.created_at.ToDatetime(tzinfo=dt.UTC),
        updated_at=repository.updated_at.ToDatetime(tzinfo=dt.UTC),
    )


def _analysis(analysis: analysis_pb2.Analysis) -> AnalysisOut:
    return AnalysisOut(
        id=analysis.id,
        repository_id=analysis.repository_id,
        ref=analysis.ref,
        status=analysis.status,
        progress=analysis.progress,
        step=analysis.step,
        timings={t.step: t.seconds for t in analysis.timings},
        attempts=analysis.attempts,
        error={"code": analysis.error_code, "message": analysis.error_message} if analysis.error_code else None,
        commit_sha=analysis.commit_sha,
        created_at=analysis.created_at.ToDatetime(tzinfo=dt.UTC),
        started_at=_time(analysis, "started_at"),
        finished_at=_time(analysis, "finished_at"),
        base_ref=analysis.base_ref or None,
        pull_request=PullRequestOut(
            number=analysis.pull_request.number,
            head_sha=analysis.pull_request.head_sha,
            base_sha=analysis.pull_request.base_sha,
        )
        if analysis.HasField("pull_request")
        else None,
    )


@router.post(
    "/repositories",
    status_code=status.HTTP_201_CREATED,
    response_model=RepositoryOut,
    responses={
        **_ERRORS,
        403: {
            "model": ErrorOut,
            "description": "Viewers may only read, or the tenant's repository limit (`ERR_QUOTA_001`)",
        },
        409: {"model": ErrorOut, "description": "Name already used"},
    },
    summary="Register a repository (https:// on the allowed hosts; local paths in development)",
)
async def create_repository(
    body: CreateRepositoryBody, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> RepositoryOut:
    reply: analysis_pb2.CreateRepositoryResponse = await backends.call(
        backends.analysis.CreateRepository,
        analysis_pb2.CreateRepositoryRequest(name=body.name, url=body.url, default_branch=body.default_branch),
        request=request,
        token=caller.token,
    )
    return _repository(reply.repository)


@router.get("/repositories", response_model=RepositoryPage, responses=_ERRORS, summary="Repositories of the tenant")
async def list_repositories(
    caller: CurrentCaller,
    request: Request,
    backends: BackendsDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    name: Annotated[str | None, text(100, "Part of the name")] = None,
) -> RepositoryPage:
    reply: analysis_pb2.ListRepositoriesResponse = await backends.call(
        backends.analysis.ListRepositories,
        analysis_pb2.ListRepositoriesRequest(page_size=limit, page_token=cursor or "", name=name or ""),
        request=request,
        token=caller.token,
    )
    return RepositoryPage(items=[_repository(r) for r in reply.repositories], next_cursor=reply.next_page_token or None)


@router.get("/repositories/{repository_id}", response_model=RepositoryOut, responses=_ERRORS, summary="A repository")
async def get_repository(
    repository_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> RepositoryOut:
    reply: analysis_pb2.GetRepositoryResponse = await backends.call(
        backends.analysis.GetRepository,
        analysis_pb2.GetRepositoryRequest(repository_id=repository_id),
        request=request,
        token=caller.token,
    )
    return _repository(reply.repository)


@router.patch(
    "/repositories/{repository_id}", response_model=RepositoryOut, responses=_ERRORS, summary="Change a repository"
)
async def update_repository(
    repository_id: Id, body: UpdateRepositoryBody, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> RepositoryOut:
    reply: analysis_pb2.UpdateRepositoryResponse = await backends.call(
        backends.analysis.UpdateRepository,
        analysis_pb2.UpdateRepositoryRequest(
            repository_id=repository_id,
            fields=sorted(body.model_fields_set),
            name=body.name or "",
            url=body.url or "",
            default_branch=body.default_branch or "",
        ),
        request=request,
        token=caller.token,
    )
    return _repository(reply.repository)


@router.delete(
    "/repositories/{repository_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_ERRORS,
    summary="Delete a repository and its analyses",
)
async def delete_repository(
    repository_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> Response:
    await backends.call(
        backends.analysis.DeleteRepository,
        analysis_pb2.DeleteRepositoryRequest(repository_id=repository_id),
        request=request,
        token=caller.token,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/repositories/{repository_id}/analyses",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AnalysisOut,
    responses={
        **_ERRORS,
        429: {
            "model": ErrorOut,
            "description": "The tenant's analyses queued or running (`ERR_QUOTA_002`) or queued in the last hour "
            "(`ERR_QUOTA_003`, with `Retry-After`) are at their limit",
        },
    },
    summary="Queue an analysis of a ref (the default branch when none is given)",
)
async def start_analysis(
    repository_id: Id,
    caller: CurrentCaller,
    request: Request,
    backends: BackendsDep,
    body: StartAnalysisBody | None = None,
) -> AnalysisOut:
    message = analysis_pb2.StartAnalysisRequest(
        repository_id=repository_id,
        ref=(body.ref if body else None) or "",
        base_ref=(body.base_ref if body else None) or "",
    )
    if body is not None and body.pull_request is not None:
        pull = body.pull_request
        message.pull_request.CopyFrom(
            analysis_pb2.PullRequest(number=pull.number, head_sha=pull.head_sha or "", base_sha=pull.base_sha or "")
        )
    reply: analysis_pb2.StartAnalysisResponse = await backends.call(
        backends.analysis.StartAnalysis, message, request=request, token=caller.token
    )
    return _analysis(reply.analysis)


@router.get(
    "/repositories/{repository_id}/branches",
    response_model=BranchPage,
    responses=_ERRORS,
    summary="Analysed branches of a repository (pull requests apart), by name, with their newest analysis and gate",
)
async def list_branches(
    repository_id: Id,
    caller: CurrentCaller,
    request: Request,
    backends: BackendsDep,
    limit: Limit = 50,
    cursor: OffsetCursor = None,
) -> BranchPage:
    reply: analysis_pb2.ListBranchesResponse = await backends.call(
        backends.analysis.ListBranches,
        analysis_pb2.ListBranchesRequest(repository_id=repository_id, page_size=limit, page_token=cursor or ""),
        request=request,
        token=caller.token,
    )
    return BranchPage(
        items=[
            BranchOut(
                ref=branch.ref,
                latest_analysis=_analysis(branch.latest_analysis),
                quality_gate=json.loads(branch.quality_gate_json) if branch.quality_gate_json else None,
            )
            for branch in reply.branches
        ],
        next_cursor=reply.next_page_token or None,
    )


@router.get("/analyses", response_model=AnalysisPage, responses=_ERRORS, summary="Analyses of the tenant, newest first")
async def list_analyses(
    caller: CurrentCaller,
    request: Request,
    backends: BackendsDep,
    limit: Limit = 50,
    cursor: Cursor = None,
    repository_id: Annotated[str | None, text(64)] = None,
    status_filter: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query(alias="status")
    ] = None,
) -> AnalysisPage:
    reply: analysis_pb2.ListAnalysesResponse = await backends.call(
        backends.analysis.ListAnalyses,
        analysis_pb2.ListAnalysesRequest(
            page_size=limit, page_token=cursor or "", repository_id=repository_id or "", status=status_filter or ""
        ),
        request=request,
        token=caller.token,
    )
    return AnalysisPage(items=[_analysis(a) for a in reply.analyses], next_cursor=reply.next_page_token or None)


@router.get("/analyses/{analysis_id}", response_model=AnalysisOut, responses=_ERRORS, summary="Status and progress")
async def get_analysis(analysis_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep) -> AnalysisOut:
    reply: analysis_pb2.GetAnalysisResponse = await backends.call(
        backends.analysis.GetAnalysis,
        analysis_pb2.GetAnalysisRequest(analysis_id=analysis_id),
        request=request,
        token=caller.token,
    )
    return _analysis(reply.analysis)


@router.post(
    "/analyses/{analysis_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=AnalysisOut,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "Already finished"}},
    summary="Stop a queued or running analysis",
)
async def cancel_analysis(
    analysis_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> AnalysisOut:
    reply: analysis_pb2.CancelAnalysisResponse = await backends.call(
        backends.analysis.CancelAnalysis,
        analysis_pb2.CancelAnalysisRequest(analysis_id=analysis_id),
        request=request,
        token=caller.token,
    )
    return _analysis(reply.analysis)


@router.get(
    "/analyses/{analysis_id}/report",
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "Not succeeded (yet)"}},
    summary="The report of a succeeded analysis",
)
async def get_report(analysis_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep) -> Response:
    reply: analysis_pb2.GetReportResponse = await backends.call(
        backends.analysis.GetReport,
        analysis_pb2.GetReportRequest(analysis_id=analysis_id),
        request=request,
        token=caller.token,
    )
    return Response(content=reply.report_json, media_type="application/json")


@router.get(
    "/analyses/{analysis_id}/sarif",
    response_class=Response,
    responses={
        200: {"content": {"application/sarif+json": {}}, "description": "A SARIF 2.1.0 log, as an attachment"},
        **_ERRORS,
        409: {"model": ErrorOut, "description": "Not succeeded (yet)"},
    },
    summary="Every finding of a succeeded analysis as a SARIF 2.1.0 log (for code-scanning tools)",
)
async def get_sarif(analysis_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep) -> Response:
    reply: analysis_pb2.GetSarifResponse = await backends.call(
        backends.analysis.GetSarif,
        analysis_pb2.GetSarifRequest(analysis_id=analysis_id),
        request=request,
        token=caller.token,
    )
    # The service accepted the id, so it parses; its canonical form keeps the header free of anything the path held.
    filename = f"repolens-{uuid.UUID(analysis_id)}.sarif"
    return Response(
        content=reply.sarif,
        media_type="application/sarif+json",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _finding(finding: analysis_pb2.Finding) -> FindingOut:
    return FindingOut(
        rule_id=finding.rule_id,
        severity=finding.severity,
        path=finding.path,
        line=finding.line,
        message=finding.message,
        fingerprint=finding.fingerprint,
        new=finding.new,
    )


@router.get(
    "/analyses/{analysis_id}/findings",
    response_model=FindingPage,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "Not succeeded (yet)"}},
    summary="Findings of a succeeded analysis, filtered (`new=true`: new since the previous analysis)",
)
async def list_findings(
    analysis_id: Id,
    caller: CurrentCaller,
    request: Request,
    backends: BackendsDep,
    limit: Limit = 50,
    cursor: OffsetCursor = None,
    severity: Annotated[Literal["critical", "high", "medium", "low"] | None, Query()] = None,
    rule: Annotated[str | None, text(100)] = None,
    new: bool = False,
) -> FindingPage:
    reply: analysis_pb2.ListFindingsResponse = await backends.call(
        backends.analysis.ListFindings,
        analysis_pb2.ListFindingsRequest(
            analysis_id=analysis_id,
            severity=severity or "",
            rule_id=rule or "",
            only_new=new,
            page_size=limit,
            page_token=cursor or "",
        ),
        request=request,
        token=caller.token,
    )
    return FindingPage(items=[_finding(f) for f in reply.findings], next_cursor=reply.next_page_token or None)


@router.get(
    "/analyses/{analysis_id}/diff",
    response_model=DiffOut,
    responses={**_ERRORS, 409: {"model": ErrorOut, "description": "Not succeeded (yet)"}},
    summary="Findings new and fixed since another analysis of the same repository",
)
async def diff_analyses(
    analysis_id: Id,
    caller: CurrentCaller,
    request: Request,
    backends: BackendsDep,
    base: Annotated[str, text(64, "The analysis to compare with")],
) -> DiffOut:
    reply: analysis_pb2.DiffAnalysesResponse = await backends.call(
        backends.analysis.DiffAnalyses,
        analysis_pb2.DiffAnalysesRequest(analysis_id=analysis_id, base_analysis_id=base),
        request=request,
        token=caller.token,
    )
    return DiffOut(
        new=[_finding(f) for f in reply.new], fixed=[_finding(f) for f in reply.fixed], unchanged=reply.unchanged
    )


@router.post(
    "/repositories/{repository_id}/webhook-secret",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookSecretOut,
    responses=_ERRORS,
    summary="A new GitHub webhook secret for the repository, shown once; the one before stops verifying",
)
async def create_webhook_secret(
    repository_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> WebhookSecretOut:
    reply: analysis_pb2.CreateWebhookSecretResponse = await backends.call(
        backends.analysis.CreateWebhookSecret,
        analysis_pb2.CreateWebhookSecretRequest(repository_id=repository_id),
        request=request,
        token=caller.token,
    )
    return WebhookSecretOut(
        secret=reply.secret,
        url=f"/api/v2/hooks/github/{repository_id}",
        content_type="application/json",
        events=["push", "pull_request"],
    )


@router.post(
    "/repositories/{repository_id}/badge-token",
    status_code=status.HTTP_201_CREATED,
    response_model=BadgeTokenOut,
    responses=_ERRORS,
    summary="A new badge token for the repository (owners and admins), shown once; the one before stops working",
)
async def create_badge_token(
    repository_id: Id, caller: CurrentCaller, request: Request, backends: BackendsDep
) -> BadgeTokenOut:
    reply: analysis_pb2.CreateBadgeTokenResponse = await backends.call(
        backends.analysis.CreateBadgeToken,
        analysis_pb2.CreateBadgeTokenRequest(repository_id=repository_id),
        request=request,
        token=caller.token,
    )
    return BadgeTokenOut(
        token=reply.token,
        badges={metric: f"/api/v2/badges/{repository_id}/{metric}.svg?token={reply.token}" for metric in METRICS},
    )


_HEADER = 200  # longest value taken from GitHub's headers


@router.post(
    "/hooks/github/{repository_id}",
    response_model=HookOut,
    responses={
        202: {"model": HookOut, "description": "An analysis was queued"},
        401: {"model": ErrorOut, "description": "Not signed with the repository's secret (`ERR_HOOK_001`)"},
        413: {"model": ErrorOut, "description": "Body too large"},
        422: {"model": ErrorOut, "description": "A header is missing or too long"},
        429: {"model": ErrorOut, "description": "The tenant's analysis quotas are reached"},
    },
    summary="GitHub's push and pull_request webhooks (no token: verified by X-Hub-Signature-256)",
    tags=["webhooks"],
)
async def github_hook(
    repository_id: Id,
    request: Request,
    response: Response,
    backends: BackendsDep,
    x_github_event: Annotated[str, Header(max_length=_HEADER, pattern=TEXT)],
    x_github_delivery: Annotated[str, Header(max_length=_HEADER, pattern=TEXT)],
    x_hub_signature_256: Annotated[str, Header(max_length=_HEADER, pattern=TEXT)],
) -> HookOut:
    reply: analysis_pb2.ReceiveGithubEventResponse = await backends.call(
        backends.analysis.ReceiveGithubEvent,
        analysis_pb2.ReceiveGithubEventRequest(
            repository_id=repository_id,
            event=x_github_event,
            delivery_id=x_github_delivery,
            signature=x_hub_signature_256,
            body=await request.body(),
        ),
        request=request,
        as_gateway=True,
    )
    if reply.HasField("analysis"):
        response.status_code = status.HTTP_202_ACCEPTED
        return HookOut(queued=True, analysis_id=reply.analysis.id)
    return HookOut(queued=False, duplicate=reply.duplicate, ignored=reply.ignored or None)
