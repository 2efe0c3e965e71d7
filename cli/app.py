"""`repolens`: queue an analysis from a CI job and fail the build on the quality gate; manage repositories,
analyses and personal access tokens. Exit codes are in cli/client.py and docs/ci.md."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.ci_env import CiContext, detect
from cli.client import (
    EXIT_ANALYSIS_FAILED,
    EXIT_GATE_FAILED,
    EXIT_PASSED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Api,
    CliError,
    resolve,
    save_config,
)

FINISHED = frozenset({"succeeded", "failed", "cancelled"})
# Polls come quickly at first (small analyses end within a second), then every 2 s: a long analysis is not read
# hundreds of times.
POLL_FIRST_S, POLL_GROWTH, POLL_MAX_S = 0.25, 1.5, 2.0

app = typer.Typer(
    name="repolens",
    help="RepoLens from a terminal or a CI job. Configured by --url/--token, REPOLENS_URL/REPOLENS_TOKEN, or "
    "`repolens login`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
repositories_app = typer.Typer(help="Repositories of the tenant.", no_args_is_help=True)
analyses_app = typer.Typer(help="Analyses of the tenant.", no_args_is_help=True)
tokens_app = typer.Typer(help="Personal access tokens (managed with a login's token, not with one of them).")
app.add_typer(repositories_app, name="repositories")
app.add_typer(analyses_app, name="analyses")
app.add_typer(tokens_app, name="tokens", no_args_is_help=True)

# Messages go to stderr, data to stdout: `repolens ... --json | jq` and `TOKEN=$(repolens tokens create ...)` work.
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)

Url = Annotated[str | None, typer.Option("--url", help="API base URL (default REPOLENS_URL, then the saved one)")]
Token = Annotated[
    str | None, typer.Option("--token", help="Token (default REPOLENS_TOKEN, then the saved one)", show_default=False)
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout")]


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _find_repository(api: Api, wanted: str | None) -> dict[str, Any]:
    """By id, by name, or the only one there is."""
    if wanted:
        try:
            uuid.UUID(wanted)
        except ValueError:
            pass
        else:
            found: dict[str, Any] = api.json("GET", f"/api/v2/repositories/{wanted}", retry=True)
            return found
    everything = list(api.pages("/api/v2/repositories"))
    if wanted:
        named = [r for r in everything if r["name"] == wanted]
        if not named:
            raise CliError(f"no repository named {wanted!r}", EXIT_USAGE)
        return named[0]
    if len(everything) != 1:
        raise CliError(f"{len(everything)} repositories: name one with --repository", EXIT_USAGE)
    return everything[0]


def _analysis_body(ci: CiContext, *, ref: str | None, base: str | None, pr: int | None) -> dict[str, Any]:
    """What to analyse: flags first, then what the CI job's environment says (a pull request's number, head and
    base commits only when the flags name no other pull request)."""
    body: dict[str, Any] = {}
    if ref or ci.ref:
        body["ref"] = ref or ci.ref
    if base or ci.base_ref:
        body["base_ref"] = base or ci.base_ref
    number = pr or ci.pull_request
    if number is not None:
        pull: dict[str, Any] = {"number": number}
        if pr is None or pr == ci.pull_request:
            pull.update({k: v for k, v in (("head_sha", ci.sha), ("base_sha", ci.base_sha)) if v})
        body["pull_request"] = pull
    return body


def _wait(api: Api, analysis: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Polls until the analysis ends; a bar on a terminal, a line per change otherwise."""
    deadline = time.monotonic() + timeout_s
    path = f"/api/v2/analyses/{analysis['id']}"
    pauses = _pauses()
    if err.is_terminal:
        columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
        with Progress(*columns, TimeElapsedColumn(), console=err, transient=True) as bar:
            task = bar.add_task(analysis["status"], total=100)
            while analysis["status"] not in FINISHED:
                _pause_or_timeout(analysis, deadline, next(pauses))
                analysis = api.json("GET", path, retry=True)
                bar.update(task, completed=analysis["progress"], description=f"{analysis['status']} {analysis['step']}")
        return analysis
    seen: tuple[str, str] | None = None
    while analysis["status"] not in FINISHED:
        now = (analysis["status"], analysis["step"])
        if now != seen:
            err.print(f"{analysis['status']} {analysis['progress']}% {analysis['step']}".rstrip())
            seen = now
        _pause_or_timeout(analysis, deadline, next(pauses))
        analysis = api.json("GET", path, retry=True)
    return analysis


def _pauses() -> Iterator[float]:
    pause = POLL_FIRST_S
    while True:
        yield pause
        pause = min(pause * POLL_GROWTH, POLL_MAX_S)


def _pause_or_timeout(analysis: dict[str, Any], deadline: float, pause: float) -> None:
    if time.monotonic() + pause > deadline:
        raise CliError(
            f"analysis {analysis['id']} still {analysis['status']} at the timeout (it goes on; "
            f"`repolens analyses show {analysis['id']}` follows it)",
            EXIT_TIMEOUT,
        )
    time.sleep(pause)


def _show_gate(gate: dict[str, Any], link: str) -> None:
    status = gate.get("status", "unknown")
    err.print(f"quality gate: [bold]{status}[/bold]")
    for condition in gate.get("conditions", []):
        if not condition.get("passed", True):
            err.print(f"  failed: {condition['metric']} = {condition['actual']} (at most {condition['threshold']})")
    err.print(f"report: {link}")


def _run(command: Any) -> None:
    try:
        code = command()
    except CliError as exc:
        err.print(f"repolens: {exc.message}", markup=False)
        raise typer.Exit(exc.exit_code) from None
    raise typer.Exit(code or EXIT_PASSED)


@app.command()
def analyse(
    repository: Annotated[
        str | None,
        typer.Option("--repository", "-r", envvar="REPOLENS_REPOSITORY", help="Name or id (default: the only one)"),
    ] = None,
    ref: Annotated[
        str | None, typer.Option(help="Branch, tag or commit (default: from CI, else the default branch)")
    ] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Branch new code is told by (default: from CI, else the default one)")
    ] = None,
    pr: Annotated[int | None, typer.Option("--pr", help="Pull request number (default: from CI)", min=1)] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the end and exit by the quality gate")] = False,
    timeout: Annotated[int, typer.Option(help="Seconds to wait at most (exit 4 past it)", min=1)] = 600,
    sarif: Annotated[Path | None, typer.Option(help="Write the findings as SARIF 2.1.0 here (with --wait)")] = None,
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Queue an analysis; with --wait, exit 0 if the quality gate passed, 1 if it failed, 3 if the analysis failed or
    was cancelled, 4 on timeout."""

    def command() -> int:
        ci = detect(os.environ)
        if sarif is not None and not wait:
            raise CliError("--sarif needs --wait", EXIT_USAGE)
        body = _analysis_body(ci, ref=ref, base=base, pr=pr)
        with Api(resolve(url, token)) as api:
            target = _find_repository(api, repository)
            queued: dict[str, Any] = api.json("POST", f"/api/v2/repositories/{target['id']}/analyses", json=body)
            err.print(f"queued analysis {queued['id']} of {target['name']} at {queued['ref']}")
            if not wait:
                if as_json:
                    _print_json({"analysis": queued})
                return EXIT_PASSED
            final = _wait(api, queued, timeout)
            link = f"{api.target.url}/api/v2/analyses/{final['id']}/report"
            if final["status"] != "succeeded":
                error = final.get("error") or {}
                err.print(f"analysis {final['status']}: {error.get('code', '')} {error.get('message', '')}".rstrip())
                if as_json:
                    _print_json({"analysis": final, "exit_code": EXIT_ANALYSIS_FAILED})
                return EXIT_ANALYSIS_FAILED
            report = api.json("GET", f"/api/v2/analyses/{final['id']}/report", retry=True)
            gate = report.get("quality_gate") or {}
            if sarif is not None:
                sarif.write_bytes(api.request("GET", f"/api/v2/analyses/{final['id']}/sarif", retry=True).content)
                err.print(f"SARIF written to {sarif}")
            _show_gate(gate, link)
            code = EXIT_PASSED if gate.get("status") == "passed" else EXIT_GATE_FAILED
            if as_json:
                _print_json({"analysis": final, "quality_gate": gate, "report_url": link, "exit_code": code})
            return code

    _run(command)


@app.command()
def login(
    url: Annotated[str, typer.Option(envvar="REPOLENS_URL", help="API base URL")] = "http://localhost:8000",
    token: Annotated[str | None, typer.Option(envvar="REPOLENS_TOKEN", show_default=False)] = None,
) -> None:
    """Check a token and keep it, with the URL, in the user's config dir (0600)."""

    def command() -> int:
        chosen = token or typer.prompt("Token", hide_input=True)
        with Api(resolve(url, chosen)) as api:
            try:
                api.request("GET", "/api/v2/repositories", params={"limit": 1})
            except CliError as exc:
                if "ERR_AUTH_013" not in exc.message:  # a token without analysis:read is still a token
                    raise
                err.print("the token cannot read repositories (no analysis:read); kept anyway")
        err.print(f"saved to {save_config(url.rstrip('/'), chosen)}")
        return EXIT_PASSED

    _run(command)


@repositories_app.command("list")
def repositories_list(as_json: AsJson = False, url: Url = None, token: Token = None) -> None:
    """Every repository of the tenant."""

    def command() -> int:
        with Api(resolve(url, token)) as api:
            items = list(api.pages("/api/v2/repositories"))
        if as_json:
            _print_json(items)
            return EXIT_PASSED
        table = Table("id", "name", "default branch", "url")
        for item in items:
            table.add_row(item["id"], item["name"], item["default_branch"], item["url"])
        out.print(table)
        return EXIT_PASSED

    _run(command)


@repositories_app.command("add")
def repositories_add(
    name: str,
    repository_url: Annotated[str, typer.Argument(metavar="URL", help="https:// clone URL")],
    default_branch: str = "main",
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Register a repository (needs repositories:write)."""

    def command() -> int:
        body = {"name": name, "url": repository_url, "default_branch": default_branch}
        with Api(resolve(url, token)) as api:
            created = api.json("POST", "/api/v2/repositories", json=body)
        if as_json:
            _print_json(created)
        else:
            out.print(created["id"])
        return EXIT_PASSED

    _run(command)


@analyses_app.command("list")
def analyses_list(
    repository: Annotated[str | None, typer.Option("--repository", "-r", help="Name or id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    as_json: AsJson = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """The newest analyses, of one repository or of all."""

    def command() -> int:
        with Api(resolve(url, token)) as api:
            params: dict[str, Any] = {"limit": limit}
            if repository:
                params["repository_id"] = _find_repository(api, repository)["id"]
            items = api.json("GET", "/api/v2/analyses", params=params, retry=True)["items"]
        if as_json:
            _print_json(items)
            return EXIT_PASSED
        table = Table("id", "ref", "status", "created")
        for item in items:
            table.add_row(item["id"], item["ref"], item["status"], item["created_at"])
        out.print(table)
        return EXIT_PASSED

    _run(command)


@analyses_app.command("show")
def analyses_show(analysis_id: str, as_json: AsJson = False, url: Url = None, token: Token = None) -> None:
    """One analysis, with its quality gate once it succeeded."""

    def command() -> int:
        with Api(resolve(url, token)) as api:
            analysis = api.json("GET", f"/api/v2/analyses/{analysis_id}", retry=True)
            gate = None
            if analysis["status"] == "succeeded":
                gate = api.json("GET", f"/api/v2/analyses/{analysis_id}/report", retry=True).get("quality_gate")
        if as_json:
            _print_json({"analysis": analysis, "quality_gate": gate})
            return EXIT_PASSED
        out.print(f"{analysis['id']} {analysis['ref']} {analysis['status']} {analysis['progress']}%")
        if gate:
            out.print(f"quality gate: {gate.get('status')}")
        return EXIT_PASSED

    _run(command)


@tokens_app.command("create")
def tokens_create(
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", "-s", help="Repeat for each scope")],
    days: Annotated[int, typer.Option(help="Lifetime in days", min=1)] = 90,
    url: Url = None,
    token: Token = None,
) -> None:
    """Create a token; it is printed once, alone on stdout."""

    def command() -> int:
        body = {"name": name, "scopes": scope, "expires_in_days": days}
        with Api(resolve(url, token)) as api:
            created = api.json("POST", "/api/v2/tokens", json=body)
        err.print(f"token {created['id']} ({', '.join(created['scopes'])}) expires {created['expires_at']}")
        sys.stdout.write(created["token"] + "\n")
        return EXIT_PASSED

    _run(command)


@tokens_app.command("list")
def tokens_list(as_json: AsJson = False, url: Url = None, token: Token = None) -> None:
    """Your live tokens in the tenant (never the tokens themselves)."""

    def command() -> int:
        with Api(resolve(url, token)) as api:
            items = list(api.pages("/api/v2/tokens"))
        if as_json:
            _print_json(items)
            return EXIT_PASSED
        table = Table("id", "name", "prefix", "scopes", "expires", "last used")
        for item in items:
            table.add_row(
                item["id"],
                item["name"],
                item["prefix"],
                " ".join(item["scopes"]),
                item["expires_at"],
                item["last_used_at"] or "never",
            )
        out.print(table)
        return EXIT_PASSED

    _run(command)


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, url: Url = None, token: Token = None) -> None:
    """Revoke a token: it stops working within a second."""

    def command() -> int:
        with Api(resolve(url, token)) as api:
            api.request("DELETE", f"/api/v2/tokens/{token_id}")
        err.print(f"revoked {token_id}")
        return EXIT_PASSED

    _run(command)


def main() -> None:
    app()
