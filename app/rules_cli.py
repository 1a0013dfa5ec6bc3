"""``fulqrun-hub rules …``: validate, apply, dry-run, list, export pipelines and rules; write JSON Schemas.

``validate`` and ``test`` work offline on files; ``apply``, ``list`` and ``export`` use the hub's
database (``HUB_DATABASE_URL``, or SQLite under ``HUB_DATA_DIR``). Errors are printed as
``file:line:col: field: message`` and make the command exit 1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
import yaml

from rules.loader import LoadResult, ResourceError, load_path
from rules.model import KINDS

app = typer.Typer(help="Pipelines and automation rules (YAML, versioned).", no_args_is_help=True)

SUFFIXES = (".yaml", ".yml", ".json")


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        else:
            out.append(path)
    return out


def _print_errors(errors: Iterable[ResourceError]) -> int:
    count = 0
    for error in errors:
        typer.echo(str(error), err=True)
        count += 1
    return count


def _load_all(paths: list[Path]) -> list[LoadResult]:
    files = _files(paths)
    if not files:
        typer.echo("error: no .yaml, .yml or .json file found", err=True)
        raise typer.Exit(1)
    return [load_path(f) for f in files]


@app.command()
def validate(paths: list[Path] = typer.Argument(..., help="files or directories")) -> None:
    """Check every document of every file; print every error as file:line:col: message."""
    results = _load_all(paths)
    errors = _print_errors(e for r in results for e in r.errors)
    documents = sum(len(r.documents) for r in results)
    if errors:
        typer.echo(
            f"{errors} error(s) in {sum(not r.ok for r in results)} of {len(results)} file(s)", err=True
        )
        raise typer.Exit(1)
    typer.echo(f"ok: {documents} resource(s) in {len(results)} file(s)")


@app.command()
def apply(
    paths: list[Path] = typer.Argument(..., help="files or directories"),
    org: str = typer.Option(None, help="org to apply to (default: metadata.org of each document)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="show what would change; write nothing"),
) -> None:
    """Apply resources, all-or-nothing per file; print created / changed / unchanged for each."""
    results = _load_all(paths)
    failed = 0
    for result in results:
        if not result.ok:
            _print_errors(result.errors)
            typer.echo(f"{result.file}: not applied", err=True)
            failed += 1
    good = [r for r in results if r.ok]
    if good:
        failed += asyncio.run(_apply_files(good, org, dry_run))
    if failed:
        raise typer.Exit(1)


async def _apply_files(results: list[LoadResult], org: str | None, dry_run: bool) -> int:
    from app.cli import load_settings
    from hub.auth import ensure_org
    from hub.store import Database
    from hub.store.resources import apply_resource
    from rules.validate import ResourceInvalid, format_path

    settings = load_settings()
    db = Database(settings.resolved_database_url)
    failed = 0
    applied: set[str] = set()
    changed_rules: list[tuple[str, str, Any]] = []  # (org, name, new version) of the rules applied
    try:
        await db.migrate()
        for result in results:
            targets = [org or (d.data.get("metadata") or {}).get("org") for d in result.documents]
            missing = [d for d, t in zip(result.documents, targets, strict=True) if not t]
            for doc in missing:
                line, col = doc.positions.get(("metadata",), (1, 1))
                typer.echo(
                    f"{result.file}:{line}:{col}: metadata.org: no org; pass --org or set metadata.org",
                    err=True,
                )
            if missing:
                typer.echo(f"{result.file}: not applied", err=True)
                failed += 1
                continue
            lines: list[str] = []
            doc = result.documents[0]
            try:
                async with db.session() as session:
                    for doc, target in zip(result.documents, targets, strict=True):
                        if not dry_run:
                            await ensure_org(session, target)
                        outcome, row = await apply_resource(session, target, doc.data, "cli", dry_run=dry_run)
                        lines.append(f"{outcome} {row.kind}/{row.name} v{row.version} (org {target})")
                        if row.kind == "Rule" and outcome != "unchanged" and not dry_run:
                            changed_rules.append((target, row.name, row))
            except ResourceInvalid as exc:
                for issue in exc.issues:
                    line, col = doc.positions.get(issue.path, doc.positions.get((), (1, 1)))
                    typer.echo(
                        f"{result.file}:{line}:{col}: {format_path(issue.path)}: {issue.message}", err=True
                    )
                typer.echo(f"{result.file}: not applied", err=True)
                failed += 1
                continue
            prefix = "(dry run) " if dry_run else ""
            for line in lines:
                typer.echo(f"{prefix}{line}")
            applied |= set() if dry_run else set(targets)
        if applied:
            await _sync_schedules(settings, db, sorted(applied), changed_rules)
    finally:
        await db.dispose()
    return failed


async def _sync_schedules(settings: Any, db: Any, orgs: list[str], changed_rules: list[tuple[str, str, Any]]) -> None:
    """Bring the Temporal Schedules of the orgs' ``on: schedule`` rules in line, and send the date rules of orgs
    whose relative-date rules changed to their opportunities (best effort, 10 s each)."""
    from activities import date_triggers, rule_schedules
    from hub.runtime import Hub
    from hub.vault import Vault

    hub = Hub(settings=settings, db=db, vault=Vault.from_settings(settings))
    try:
        for org in orgs:
            done = await asyncio.wait_for(rule_schedules.reconcile(hub, org), timeout=10)
            for schedule, what in sorted(done.items()):
                typer.echo(f"schedule {schedule}: {what}")
        async with db.session() as session:
            dated = {o for o, name, row in changed_rules if await date_triggers.concerns_dates(session, o, name, row)}
            for org_id in sorted(dated):
                sent = await asyncio.wait_for(date_triggers.broadcast(hub, session, org_id), timeout=10)
                typer.echo(f"date rules of org {org_id}: sent to {sent} opportunities")
    except Exception as exc:  # noqa: BLE001 - Temporal away: the hub reconciles at its next start
        typer.echo(f"warning: rule schedules or date rules not synced now ({type(exc).__name__}); schedules follow "
                   "at the next start, opportunities' date rules at their next transition", err=True)


def _read_event(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        typer.echo(f"error: {path}: cannot read the event: {exc}", err=True)
        raise typer.Exit(1) from None
    event = data.get("event", data) if isinstance(data, dict) else None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        typer.echo(
            f"error: {path}: the event must be a JSON object with a 'type' (or {{\"event\": {{...}}}})",
            err=True,
        )
        raise typer.Exit(1)
    return event


@app.command()
def test(
    paths: list[Path] = typer.Argument(..., help="rule files or directories"),
    event: Path = typer.Option(..., "--event", help='JSON file: the event, or {"event": {...}}'),
    as_json: bool = typer.Option(False, "--json", help="print the outcomes as JSON"),
) -> None:
    """Dry-run: which rules fire for the event, which do not and why, and the rendered actions."""
    from rules.actions import placement
    from rules.engine import compile_rules

    payload = _read_event(event)
    results = _load_all(paths)
    errors = _print_errors(e for r in results for e in r.errors)
    docs = [
        {**d.data, "version": 0}
        for r in results
        for d in r.documents
        if d.resource is not None and d.data.get("kind") == "Rule"
    ]
    outcomes = compile_rules(docs).evaluate(payload)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "rule": o.rule,
                        "fired": o.fired,
                        "reason": o.reason,
                        "actions": [
                            dict(zip(("name", "params", "runs_for", "problem", "step"),
                                     (a.name, a.params, *placement(a.name, payload), a.step), strict=True))
                            for a in o.actions
                        ],
                    }
                    for o in outcomes
                ],
                indent=2,
            )
        )
    else:
        for o in outcomes:
            typer.echo(f"{'FIRES' if o.fired else 'skips'} {o.rule}: {o.reason}")
            for action in o.actions:
                runs_for, problem = placement(action.name, payload)
                where = f"WOULD FAIL: {problem}" if problem else f"runs for the {runs_for}"
                if action.step and action.step.get("skipped"):
                    where = f"skipped: {action.step['skipped']}"
                elif action.step and action.step.get("deferred"):
                    where += "; rendered when it runs, from earlier steps"
                typer.echo(f"    {action.name} {json.dumps(action.params, ensure_ascii=False)}  ({where})")
        typer.echo(f"{sum(o.fired for o in outcomes)} of {len(outcomes)} rule(s) fire for {payload['type']}")
    if errors:
        raise typer.Exit(1)


def _kinds(kind: str | None) -> list[str]:
    if kind is None:
        return list(KINDS)
    canonical = {k.lower(): k for k in KINDS}.get(kind.lower())
    if canonical is None:
        typer.echo(f"error: unknown kind {kind!r}; one of: {', '.join(KINDS)}", err=True)
        raise typer.Exit(1)
    return [canonical]


async def _current(org: str, kinds: list[str]) -> list[Any]:
    from app.cli import load_settings
    from hub.store import Database
    from hub.store.resources import list_resources

    db = Database(load_settings().resolved_database_url)
    rows: list[Any] = []
    try:
        await db.migrate()
        async with db.session() as session:
            for kind in kinds:
                cursor = None
                while True:
                    page, cursor = await list_resources(session, org, kind, 200, cursor)
                    rows += page
                    if cursor is None:
                        break
    finally:
        await db.dispose()
    return rows


@app.command("list")
def list_(
    org: str = typer.Option(..., help="org id"),
    kind: str = typer.Option(None, help="Pipeline or Rule (default: both)"),
) -> None:
    """The current version of every pipeline and rule of an org."""
    rows = asyncio.run(_current(org, _kinds(kind)))
    for row in rows:
        state = "enabled" if row.enabled else "disabled"
        scope = f"branches={','.join(row.branches)} roles={','.join(row.roles)}"
        typer.echo(
            f"{row.kind:<8} {row.name:<32} v{row.version:<4} {state:<8} {scope} {row.content_hash[:12]}"
        )
    if not rows:
        typer.echo(f"no resources for org {org!r}", err=True)


@app.command()
def export(
    org: str = typer.Option(..., help="org id"),
    kind: str = typer.Option(None, help="Pipeline or Rule (default: both)"),
    out: Path = typer.Option(None, help="directory: one file per resource (default: all to stdout)"),
) -> None:
    """Print (or write) the current resources as YAML that `rules apply` accepts back unchanged."""
    rows = asyncio.run(_current(org, _kinds(kind)))
    if out is None:
        typer.echo(yaml.safe_dump_all([r.spec for r in rows], sort_keys=False, allow_unicode=True), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        path = out / f"{row.kind.lower()}-{row.name}.yaml"
        path.write_text(yaml.safe_dump(row.spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
        typer.echo(str(path))


@app.command()
def schema(
    kind: str = typer.Option(None, help="Pipeline or Rule (default: both; needs --out)"),
    out: Path = typer.Option(None, help="directory for pipeline.schema.json and rule.schema.json"),
) -> None:
    """Write the JSON Schemas for editors (YAML language server: `# yaml-language-server: $schema=…`)."""
    from rules.schema import json_schema

    kinds = _kinds(kind)
    if out is None:
        if len(kinds) != 1:
            typer.echo("error: pass --kind to print one schema, or --out DIR to write both", err=True)
            raise typer.Exit(1)
        typer.echo(json.dumps(json_schema(kinds[0]), indent=2))
        return
    out.mkdir(parents=True, exist_ok=True)
    for k in kinds:
        path = out / f"{k.lower()}.schema.json"
        path.write_text(json.dumps(json_schema(k), indent=2) + "\n", encoding="utf-8")
        typer.echo(str(path))


@app.command()
def backtest(
    name: str = typer.Argument(..., help="the rule's name"),
    org: str = typer.Option(..., help="org id"),
    since: datetime = typer.Option(..., help="start of the window (UTC unless a zone is given)"),
    until: datetime = typer.Option(None, help="end of the window (default now)"),
    version: int = typer.Option(None, help="a stored version (default: the latest)"),
    draft: Path = typer.Option(None, help="a Rule file to test instead of a stored version"),
    compare_to: int = typer.Option(None, "--compare-to", help="a stored version to diff with"),
    limit: int = typer.Option(20, help="firings and ids to list"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """What a rule version (or a draft) would have done with the org's recorded history; nothing runs."""
    if draft is not None and version is not None:
        typer.echo("error: give either --version or --draft, not both", err=True)
        raise typer.Exit(1)
    document = None
    if draft is not None:
        result = load_path(draft)
        if _print_errors(result.errors) or len(result.documents) != 1 or result.documents[0].data.get("kind") != "Rule":
            typer.echo(f"error: {draft}: needs exactly one valid Rule document", err=True)
            raise typer.Exit(1)
        document = result.documents[0].data
    report = asyncio.run(_backtest(name, org, since, until, version, document, compare_to, limit))
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    label = "draft" if report["draft"] else f"v{report['version']}"
    typer.echo(f"{name} {label}: {report['fired']} firing(s) on {report['opportunities']['count']} opportunity(ies) "
               f"over {report['events']} recorded event(s) ({report['evaluated']} evaluated), "
               f"{report['errors']['count']} error(s)")  # fmt: skip
    for firing in report["firings"]:
        typer.echo(f"  {firing['at']} {firing['type']} {firing['opportunity'] or '(org)'}")
        for action in firing["actions"]:
            typer.echo(f"      {action['name']} {json.dumps(action['params'], ensure_ascii=False)}")
    if "compare" in report:
        diff = report["compare"]
        typer.echo(f"v{report['compare_to']}: {diff['fired']} firing(s); only {label}: {diff['only_version']['count']}, "
                   f"only v{report['compare_to']}: {diff['only_compare_to']['count']}, "
                   f"other actions: {diff['changed_actions']['count']}")  # fmt: skip


async def _backtest(
    name: str, org: str, since: datetime, until: datetime | None, version: int | None, draft: dict | None,
    compare_to: int | None, limit: int,
) -> dict[str, Any]:
    from datetime import UTC

    from app.cli import load_settings
    from hub.problems import Problem
    from hub.store import Database
    from hub.store.resources import get_version
    from rules.backtest import backtest_document, triggers
    from webhooks.backtest import backtest, recorded

    def utc(value: datetime) -> datetime:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

    async def run(fn: Any, *args: Any) -> Any:
        return fn(*args)  # the operator's own process: no tenant to bound

    db = Database(load_settings().resolved_database_url)
    try:
        await db.migrate()
        async with db.session() as session:

            async def stored(number: int | None, option: str) -> dict:
                row = await get_version(session, org, "Rule", name, number)
                if row is None or row.deleted:
                    typer.echo(f"error: rule {name!r} {option or ''} not found in org {org!r}", err=True)
                    raise typer.Exit(1)
                return backtest_document(row.spec, row.version)

            rule = backtest_document(draft, 0) if draft is not None else await stored(version, f"version {version}" if version else "")
            compare = await stored(compare_to, f"version {compare_to}") if compare_to is not None else None
            window = (utc(since), utc(until or datetime.now(UTC)))
            try:
                history = await recorded(session, org, *window, triggers(rule, compare))
            except Problem as exc:
                typer.echo(f"error: {exc.detail}", err=True)
                raise typer.Exit(1) from None
        async for step in backtest(history, name, rule, compare, run, limit):
            if "progress" in step:
                typer.echo(f"{step['progress']['items']}/{step['progress']['of']} items", err=True)
            else:
                return step["report"]
    finally:
        await db.dispose()
    raise AssertionError("a backtest always ends with its report")
