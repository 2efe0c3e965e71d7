"""gRPC controller of the analysis service: protobuf in, use case, protobuf out."""

from __future__ import annotations

import json
from typing import Any

import grpc

from libs.common.events import timestamp
from libs.common.identity import caller
from libs.common.pagination import encode_cursor
from repolens.analysis.v1 import analysis_pb2, analysis_pb2_grpc
from services.analysis import use_cases
from services.analysis.domain import Analysis, PullRequest, Repository
from services.analysis.use_cases import Analyses

Context = grpc.aio.ServicerContext[Any, Any]


def _repository(repository: Repository) -> analysis_pb2.Repository:
    return analysis_pb2.Repository(
        id=str(repository.id),
        name=repository.name,
        url=repository.url,
        default_branch=repository.default_branch,
        created_at=timestamp(repository.created_at),
        updated_at=timestamp(repository.updated_at),
    )


def _analysis(analysis: Analysis) -> analysis_pb2.Analysis:
    message = analysis_pb2.Analysis(
        id=str(analysis.id),
        repository_id=str(analysis.repository_id),
        ref=analysis.ref,
        status=analysis.status,
        progress=analysis.progress,
        step=analysis.step,
        timings=[analysis_pb2.StepTiming(step=k, seconds=v) for k, v in analysis.timings.items()],
        attempts=analysis.attempts,
        error_code=analysis.error_code,
        error_message=analysis.error_message,
        commit_sha=analysis.commit_sha,
        created_at=timestamp(analysis.created_at),
    )
    if analysis.started_at is not None:
        message.started_at.CopyFrom(timestamp(analysis.started_at))
    if analysis.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(analysis.finished_at))
    if analysis.base_ref is not None:
        message.base_ref = analysis.base_ref
    if analysis.pull_request is not None:
        message.pull_request.CopyFrom(analysis_pb2.PullRequest(**analysis.pull_request.to_dict()))
    return message


def _json(document: dict[str, Any]) -> bytes:
    """A JSON document as it crosses gRPC: compact (it grows with the findings), UTF-8, numbers as they are."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def _finding(finding: dict[str, Any]) -> analysis_pb2.Finding:
    return analysis_pb2.Finding(
        rule_id=finding["rule_id"],
        severity=finding["severity"],
        path=finding["path"],
        line=int(finding["line"]),
        message=finding["message"],
        fingerprint=finding["fingerprint"],
        new=bool(finding.get("new", False)),
    )


class AnalysisServicer(analysis_pb2_grpc.AnalysisServiceServicer):
    def __init__(self, *, analyses: Analyses):
        self._analyses = analyses

    async def CreateRepository(
        self, request: analysis_pb2.CreateRepositoryRequest, context: Context
    ) -> analysis_pb2.CreateRepositoryResponse:
        claims = caller()
        repository = await use_cases.create_repository(
            analyses=self._analyses,
            claims=claims,
            name=request.name,
            url=request.url,
            default_branch=request.default_branch,
        )
        return analysis_pb2.CreateRepositoryResponse(repository=_repository(repository))

    async def ListRepositories(
        self, request: analysis_pb2.ListRepositoriesRequest, context: Context
    ) -> analysis_pb2.ListRepositoriesResponse:
        claims = caller()
        page = await use_cases.list_repositories(
            analyses=self._analyses,
            claims=claims,
            name=request.name,
            page_size=request.page_size,
            cursor=request.page_token,
        )
        return analysis_pb2.ListRepositoriesResponse(
            repositories=[_repository(r) for r in page.items],
            next_page_token=encode_cursor(page.next_cursor) if page.next_cursor else "",
        )

    async def GetRepository(
        self, request: analysis_pb2.GetRepositoryRequest, context: Context
    ) -> analysis_pb2.GetRepositoryResponse:
        claims = caller()
        repository = await use_cases.get_repository(
            analyses=self._analyses, claims=claims, repository_id=request.repository_id
        )
        return analysis_pb2.GetRepositoryResponse(repository=_repository(repository))

    async def UpdateRepository(
        self, request: analysis_pb2.UpdateRepositoryRequest, context: Context
    ) -> analysis_pb2.UpdateRepositoryResponse:
        claims = caller()
        repository = await use_cases.update_repository(
            analyses=self._analyses,
            claims=claims,
            repository_id=request.repository_id,
            fields=list(request.fields),
            values={"name": request.name, "url": request.url, "default_branch": request.default_branch},
        )
        return analysis_pb2.UpdateRepositoryResponse(repository=_repository(repository))

    async def DeleteRepository(
        self, request: analysis_pb2.DeleteRepositoryRequest, context: Context
    ) -> analysis_pb2.DeleteRepositoryResponse:
        claims = caller()
        await use_cases.delete_repository(analyses=self._analyses, claims=claims, repository_id=request.repository_id)
        return analysis_pb2.DeleteRepositoryResponse()

    async def StartAnalysis(
        self, request: analysis_pb2.StartAnalysisRequest, context: Context
    ) -> analysis_pb2.StartAnalysisResponse:
        claims = caller()
        pull = request.pull_request
        analysis = await use_cases.start_analysis(
            analyses=self._analyses,
            claims=claims,
            repository_id=request.repository_id,
            ref=request.ref,
            base_ref=request.base_ref,
            pull_request=PullRequest(pull.number, pull.head_sha, pull.base_sha)
            if request.HasField("pull_request")
            else None,
        )
        return analysis_pb2.StartAnalysisResponse(analysis=_analysis(analysis))

    async def ListAnalyses(
        self, request: analysis_pb2.ListAnalysesRequest, context: Context
    ) -> analysis_pb2.ListAnalysesResponse:
        claims = caller()
        page = await use_cases.list_analyses(
            analyses=self._analyses,
            claims=claims,
            repository_id=request.repository_id,
            status=request.status,
            page_size=request.page_size,
            cursor=request.page_token,
        )
        return analysis_pb2.ListAnalysesResponse(
            analyses=[_analysis(a) for a in page.items],
            next_page_token=encode_cursor(page.next_cursor) if page.next_cursor else "",
        )

    async def GetAnalysis(
        self, request: analysis_pb2.GetAnalysisRequest, context: Context
    ) -> analysis_pb2.GetAnalysisResponse:
        claims = caller()
        analysis = await use_cases.get_analysis(analyses=self._analyses, claims=claims, analysis_id=request.analysis_id)
        return analysis_pb2.GetAnalysisResponse(analysis=_analysis(analysis))

    async def CancelAnalysis(
        self, request: analysis_pb2.CancelAnalysisRequest, context: Context
    ) -> analysis_pb2.CancelAnalysisResponse:
        claims = caller()
        analysis = await use_cases.cancel_analysis(
            analyses=self._analyses, claims=claims, analysis_id=request.analysis_id
        )
        return analysis_pb2.CancelAnalysisResponse(analysis=_analysis(analysis))

    async def ListFindings(
        self, request: analysis_pb2.ListFindingsRequest, context: Context
    ) -> analysis_pb2.ListFindingsResponse:
        claims = caller()
        page, token = await use_cases.list_findings(
            analyses=self._analyses,
            claims=claims,
            analysis_id=request.analysis_id,
            severity=request.severity,
            rule_id=request.rule_id,
            only_new=request.only_new,
            page_size=request.page_size,
            cursor=request.page_token,
        )
        return analysis_pb2.ListFindingsResponse(findings=[_finding(f) for f in page], next_page_token=token)

    async def DiffAnalyses(
        self, request: analysis_pb2.DiffAnalysesRequest, context: Context
    ) -> analysis_pb2.DiffAnalysesResponse:
        claims = caller()
        new, fixed, unchanged = await use_cases.diff_analyses(
            analyses=self._analyses,
            claims=claims,
            analysis_id=request.analysis_id,
            base_analysis_id=request.base_analysis_id,
        )
        return analysis_pb2.DiffAnalysesResponse(
            new=[_finding(f) for f in new], fixed=[_finding(f) for f in fixed], unchanged=unchanged
        )

    async def GetReport(
        self, request: analysis_pb2.GetReportRequest, context: Context
    ) -> analysis_pb2.GetReportResponse:
        report = await use_cases.get_report(analyses=self._analyses, claims=caller(), analysis_id=request.analysis_id)
        return analysis_pb2.GetReportResponse(report_json=_json(report))

    async def GetSarif(self, request: analysis_pb2.GetSarifRequest, context: Context) -> analysis_pb2.GetSarifResponse:
        claims = caller()
        log = await use_cases.get_sarif(analyses=self._analyses, claims=claims, analysis_id=request.analysis_id)
        return analysis_pb2.GetSarifResponse(sarif=_json(log))

    async def ListBranches(
        self, request: analysis_pb2.ListBranchesRequest, context: Context
    ) -> analysis_pb2.ListBranchesResponse:
        rows, next_cursor = await use_cases.list_branches(
            analyses=self._analyses,
            claims=caller(),
            repository_id=request.repository_id,
            page_size=request.page_size,
            cursor=request.page_token,
        )
        return analysis_pb2.ListBranchesResponse(
            branches=[
                analysis_pb2.Branch(
                    ref=latest.ref, latest_analysis=_analysis(latest), quality_gate_json=_json(gate) if gate else b""
                )
                for latest, gate in rows
            ],
            next_page_token=next_cursor,
        )

    async def CreateWebhookSecret(
        self, request: analysis_pb2.CreateWebhookSecretRequest, context: Context
    ) -> analysis_pb2.CreateWebhookSecretResponse:
        _, secret = await use_cases.create_webhook_secret(
            analyses=self._analyses, claims=caller(), repository_id=request.repository_id
        )
        return analysis_pb2.CreateWebhookSecretResponse(secret=secret)

    async def ReceiveGithubEvent(
        self, request: analysis_pb2.ReceiveGithubEventRequest, context: Context
    ) -> analysis_pb2.ReceiveGithubEventResponse:
        outcome = await use_cases.receive_github_event(
            analyses=self._analyses,
            repository_id=request.repository_id,
            event=request.event,
            delivery_id=request.delivery_id,
            signature=request.signature,
            body=request.body,
        )
        reply = analysis_pb2.ReceiveGithubEventResponse(duplicate=outcome.duplicate, ignored=outcome.ignored)
        if outcome.analysis is not None:
            reply.analysis.CopyFrom(_analysis(outcome.analysis))
        return reply

    async def CreateBadgeToken(
        self, request: analysis_pb2.CreateBadgeTokenRequest, context: Context
    ) -> analysis_pb2.CreateBadgeTokenResponse:
        token = await use_cases.create_badge_token(
            analyses=self._analyses, claims=caller(), repository_id=request.repository_id
        )
        return analysis_pb2.CreateBadgeTokenResponse(token=token)

    async def GetBadge(self, request: analysis_pb2.GetBadgeRequest, context: Context) -> analysis_pb2.GetBadgeResponse:
        facts = await use_cases.badge(
            analyses=self._analyses, repository_id=request.repository_id, token=request.token, branch=request.branch
        )
        if facts is None:
            return analysis_pb2.GetBadgeResponse(found=False)
        reply = analysis_pb2.GetBadgeResponse(
            found=True,
            ref=facts.ref,
            analysed=facts.analysed,
            quality_gate=facts.gate,
            code_lines=facts.code_lines,
            findings=facts.findings,
            complexity=facts.complexity,
        )
        if facts.finished_at is not None:
            reply.finished_at.FromDatetime(facts.finished_at)
        return reply
