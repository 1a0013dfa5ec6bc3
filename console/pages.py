"""``/console`` pages: sign-in, connections, inbox, opportunities, rules.

Each page is one or more calls to the ``/v1`` API (``Console.api``), made in process with the session's
token, rendered with Jinja2. Forms post here with the session's CSRF token, are forwarded to the API, and
redirect back with a one-line message (post/redirect/get). Nothing here decides what a role may do: a
write the API refuses shows the API's own problem detail; buttons a role cannot use are only hidden.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote

import httpx
import yaml
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from hub.auth import Principal, authenticate
from hub.deps import HubDep
from hub.sessions import COOKIE, TTL, authenticate_session, open_session, read_session

router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def when(value: str | None) -> str:
    """An API timestamp (ISO 8601) as ``2026-12-03 12:14:05 UTC``; empty for none."""
    if not value:
        return ""
    at = datetime.fromisoformat(value)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if at.tzinfo else at.strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters["when"] = when

#: Pages load only the console's own assets and may not be framed (no inline script, no other origin).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                "base-uri 'none'", "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
                "Cache-Control": "no-store"}  # fmt: skip
FLASH_COOKIE = "fqh_flash"
SIGNIN_COOKIE = "fqh_signin"
COOKIE_PATH = "/console"
SYNC_ACTIONS = ("run", "pause", "resume")
INBOX_STATUSES = ("pending", "relayed", "done", "ignored", "dead")
SAMPLE_EVENT = {"type": "stage.entered", "stage": "acquire",
                "opp": {"id": "opp-1", "name": "Acme renewal", "amount": 60000.0}}  # fmt: skip


class SignInRequired(Exception):
    """No valid session: the handler installed by ``console.install`` redirects to the sign-in page."""


@dataclass(frozen=True)
class Answer:
    """An API answer: its status and decoded body."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def detail(self) -> str:
        """The problem's detail (or the status) for a refused call."""
        if isinstance(self.body, dict) and self.body.get("detail"):
            return str(self.body["detail"])
        return f"the API answered {self.status}"


@dataclass
class Console:
    """One signed-in request: the caller, the session token the API calls carry, the CSRF token."""

    request: Request
    principal: Principal
    token: str
    csrf: str

    @property
    def is_admin(self) -> bool:
        return self.principal.role == "admin"

    @property
    def is_writer(self) -> bool:
        return self.principal.role in ("admin", "crm")

    async def api(self, method: str, path: str, **kwargs: Any) -> Answer:
        """Call the hub's own HTTP API in process as the signed-in key."""
        transport = httpx.ASGITransport(app=self.request.app)
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        async with httpx.AsyncClient(transport=transport, base_url="http://console.internal") as http:
            r = await http.request(method, path, headers=headers, **kwargs)
        try:
            body = r.json()
        except ValueError:
            body = r.text
        return Answer(r.status_code, body)

    def render(self, template: str, **context: Any) -> HTMLResponse:
        """A page, with the caller, the CSRF token and any message left by the last form."""
        flash = _read_flash(self.request)
        status = context.pop("status", 200)
        response = templates.TemplateResponse(self.request, template, {"c": self, "flash": flash, **context},
                                              status_code=status, headers=PAGE_HEADERS)
        if flash:
            response.delete_cookie(FLASH_COOKIE, path=COOKIE_PATH)
        return response


async def signed_in(request: Request, hub: HubDep) -> Console:
    """The console session of the request (cookie), or SignInRequired."""
    token = request.cookies.get(COOKIE, "")
    opened = read_session(hub.vault, token)
    if opened is None:
        raise SignInRequired
    async with hub.db.session() as session:
        principal = await authenticate_session(session, hub.vault, token)
    if principal is None:
        raise SignInRequired
    return Console(request, principal, token, opened.csrf)


Signed = Annotated[Console, Depends(signed_in)]


async def form_post(console: Signed, csrf: Annotated[str, Form()] = "") -> Console:
    """A signed-in form post carrying the session's CSRF token (403 otherwise)."""
    if not hmac.compare_digest(csrf.encode(), console.csrf.encode()):
        raise _Forbidden
    return console


Posted = Annotated[Console, Depends(form_post)]


class _Forbidden(Exception):
    """A form without the session's CSRF token."""


def sign_in_redirect(request: Request, _: Exception) -> Response:
    """Where an unauthenticated console request goes."""
    if isinstance(_, _Forbidden):
        return HTMLResponse("<h1>Forbidden</h1><p>The form was not sent from this console; reload and retry.</p>",
                            status_code=403)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/signin?next={quote(target)}", status_code=303)


EXCEPTION_HANDLERS = {SignInRequired: sign_in_redirect, _Forbidden: sign_in_redirect}


def back(to: str, answer: Answer | None = None, ok: str = "", error: str = "") -> RedirectResponse:
    """Redirect after a form, with a message: ``ok`` on success, the API's problem (or ``error``) otherwise."""
    response = RedirectResponse(to, status_code=303)
    failed = (answer is not None and not answer.ok) or bool(error)
    text = (error or answer.detail) if failed else ok
    if text:
        flash = json.dumps({"kind": "error" if failed else "ok", "text": text[:500]})
        response.set_cookie(FLASH_COOKIE, quote(flash), max_age=60, path=COOKIE_PATH, httponly=True, samesite="lax")
    return response


def _read_flash(request: Request) -> dict | None:
    raw = request.cookies.get(FLASH_COOKIE)
    try:
        return json.loads(unquote(raw)) if raw else None
    except ValueError:
        return None


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


# --- sign-in ---------------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a console path is a place to return to (no open redirect)."""
    if target and target.startswith("/console") and not target.startswith("//"):
        return target
    return "/console"


@router.get("/signin")
async def signin_page(request: Request, next: str | None = None) -> HTMLResponse:
    """The sign-in form; a pre-session cookie carries its CSRF token."""
    token = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(24)
    response = templates.TemplateResponse(request, "signin.html", {"csrf": token, "next": _safe_next(next)},
                                          headers=PAGE_HEADERS)
    response.set_cookie(SIGNIN_COOKIE, token, max_age=900, path=COOKIE_PATH, httponly=True, samesite="lax",
                        secure=_secure(request))
    return response


@router.post("/signin")
async def signin(
    request: Request, hub: HubDep, api_key: Annotated[str, Form()], csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/console",
) -> Response:
    """Exchange an API key for a session cookie (the key itself is never stored in the browser)."""
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
        raise _Forbidden
    async with hub.db.session() as session:
        principal = await authenticate(session, api_key.strip())
    if principal is None:
        return templates.TemplateResponse(
            request, "signin.html", {"csrf": expected, "next": _safe_next(next),
                                     "error": "That API key is unknown or revoked."}, status_code=401,
        )  # fmt: skip
    token, _ = open_session(hub.vault, principal)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(COOKIE, token, max_age=int(TTL.total_seconds()), path=COOKIE_PATH, httponly=True,
                        samesite="lax", secure=_secure(request))
    response.delete_cookie(SIGNIN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/signout")
async def signout(_: Posted) -> Response:
    """End the session (the cookie is dropped; the token expires on its own)."""
    response = RedirectResponse("/console/signin", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


@router.get("")
async def home(_: Signed) -> Response:
    """The console starts on the opportunities board."""
    return RedirectResponse("/console/opportunities", status_code=303)


# --- connections ---------------------------------------------------------------------------------------------


@router.get("/connections")
async def connections(c: Signed, authorisation: str | None = None) -> HTMLResponse:
    """Every connection with its status, last refresh and last error."""
    answer = await c.api("GET", "/v1/connections", params={"limit": 200})
    return c.render("connections.html", answer=answer, authorisation=authorisation)


@router.get("/connections/{connection_id}")
async def connection(c: Signed, connection_id: str, authorisation: str | None = None) -> HTMLResponse:
    """One connection: status, webhook URL, syncs with their progress and controls."""
    conn = await c.api("GET", f"/v1/connections/{connection_id}")
    if not conn.ok:
        return c.render("error.html", answer=conn, status=conn.status)
    syncs = await c.api("GET", f"/v1/connections/{connection_id}/syncs")
    return c.render("connection.html", conn=conn.body, syncs=syncs, authorisation=authorisation)


@router.post("/connections/{connection_id}/authorize")
async def authorize(c: Posted, connection_id: str) -> Response:
    """Start the OAuth2 consent: off to the provider, whose callback brings the browser back here."""
    answer = await c.api("POST", f"/v1/connections/{connection_id}:authorize")
    if not answer.ok:
        return back(f"/console/connections/{connection_id}", answer)
    return RedirectResponse(answer.body["authorization_url"], status_code=303)


@router.post("/connections/{connection_id}/syncs/{model}/{action}")
async def sync_action(c: Posted, connection_id: str, model: str, action: str) -> Response:
    """Run, pause or resume one sync."""
    page = f"/console/connections/{connection_id}"
    if action not in SYNC_ACTIONS:
        return back(page, error=f"unknown sync action {action!r}")
    answer = await c.api("POST", f"/v1/connections/{connection_id}/syncs/{model}:{action}")
    return back(page, answer, ok=f"{model}: {action} requested")


@router.get("/connections/{connection_id}/syncs.json")
async def sync_progress(c: Signed, connection_id: str) -> JSONResponse:
    """The syncs' live progress, polled by the connection page."""
    answer = await c.api("GET", f"/v1/connections/{connection_id}/syncs")
    return JSONResponse(answer.body, status_code=answer.status)


# --- inbox -----------------------------------------------------------------------------------------------


@router.get("/inbox")
async def inbox(
    c: Signed, provider: str = "", status: str = "", type: str = "", cursor: str = "",
) -> HTMLResponse:
    """Webhook events, newest first, filtered by provider, status and type."""
    params = {k: v for k, v in {"provider": provider, "status": status, "type": type, "cursor": cursor}.items() if v}
    answer = await c.api("GET", "/v1/webhook-events", params={**params, "limit": 50})
    return c.render("inbox.html", answer=answer, filters={"provider": provider, "status": status, "type": type},
                    statuses=INBOX_STATUSES)


@router.get("/inbox/{event_id}")
async def inbox_event(c: Signed, event_id: str) -> HTMLResponse:
    """One webhook event: headers, body, attempts and errors."""
    answer = await c.api("GET", f"/v1/webhook-events/{event_id}")
    if not answer.ok:
        return c.render("error.html", answer=answer, status=answer.status)
    return c.render("event.html", event=answer.body)


@router.post("/inbox/{event_id}/replay")
async def replay(c: Posted, event_id: str) -> Response:
    """Process a finished or dead-lettered event again."""
    answer = await c.api("POST", f"/v1/webhook-events/{event_id}:replay")
    return back(f"/console/inbox/{event_id}", answer, ok="Replay queued: the event is processed again.")


# --- opportunities ---------------------------------------------------------------------------------------------


@router.get("/opportunities/{opportunity_id}")
async def opportunity(c: Signed, opportunity_id: str) -> HTMLResponse:
    """An opportunity's timeline: transitions, checklist and documents per stage, rule runs, insights."""
    answer = await c.api("GET", f"/v1/opportunities/{opportunity_id}")
    if not answer.ok:
        return c.render("error.html", answer=answer, status=answer.status)
    view = answer.body
    pinned = await c.api("GET", f"/v1/pipelines/{view['pipeline']['name']}",
                         params={"version": view["pipeline"]["version"]})
    transitions = pinned.body["document"]["spec"].get("transitions", []) if pinned.ok else []
    targets = [t["to"] for t in transitions if t.get("from") in (view["stage"], "*") and t["to"] != view["stage"]]
    return c.render("opportunity.html", opp=view, targets=list(dict.fromkeys(targets)))


@router.post("/opportunities/{opportunity_id}/move")
async def move(
    c: Posted, opportunity_id: str, to: Annotated[str, Form()], role: Annotated[str, Form()],
    reason: Annotated[str, Form()] = "",
) -> Response:
    """Ask for a stage transition as the signed-in key, in a sales role, with an optional reason (kept in the
    history); a refusal lists what is unmet."""
    actor = {"id": f"console:{c.principal.key_id}", "role": role.strip()}
    move = {"to": to, "actor": actor, **({"reason": reason.strip()} if reason.strip() else {})}
    answer = await c.api("POST", f"/v1/opportunities/{opportunity_id}/transitions", json=move)
    if answer.status == 409 and isinstance(answer.body, dict):
        unmet = "; ".join(u.get("message", u.get("code", "")) for u in answer.body.get("unmet", []))
        return back(f"/console/opportunities/{opportunity_id}", answer, error=f"{answer.detail}: {unmet}")
    return back(f"/console/opportunities/{opportunity_id}", answer, ok=f"Moved to {to}.")


# --- rules -----------------------------------------------------------------------------------------------


@router.get("/rules")
async def rules(c: Signed) -> HTMLResponse:
    """Rules and pipelines with their current version."""
    rule_page = await c.api("GET", "/v1/rules", params={"limit": 200})
    pipelines = await c.api("GET", "/v1/pipelines", params={"limit": 200})
    return c.render("rules.html", rules=rule_page, pipelines=pipelines)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A document as ``{dotted.path: scalar}``, so two versions compare field by field."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def field_diff(old: dict, new: dict) -> list[dict[str, Any]]:
    """The fields that differ between two documents: path, old value, new value (None when absent)."""
    a, b = flatten(old), flatten(new)
    return [{"field": k, "old": a.get(k), "new": b.get(k)} for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


RECORDED_CHOICES = 20  # inbox events offered for a dry-run


@router.get("/rules/{kind}/{name}")
async def resource(c: Signed, kind: str, name: str, diff: int | None = None) -> HTMLResponse:
    """A rule or pipeline: the YAML editor, its versions and a field-by-field diff of one against the previous."""
    plural = "pipelines" if kind == "pipeline" else "rules"
    current = await c.api("GET", f"/v1/{plural}/{name}")
    if not current.ok:
        return c.render("error.html", answer=current, status=current.status)
    versions = await c.api("GET", f"/v1/{plural}/{name}/versions", params={"limit": 200})
    items = versions.body.get("items", []) if versions.ok else []
    by_version = {v["version"]: v for v in items}
    shown = diff or current.body["version"]
    changes = None
    if shown in by_version and shown - 1 in by_version:
        changes = field_diff(by_version[shown - 1]["document"], by_version[shown]["document"])
    text = yaml.safe_dump(current.body["document"], sort_keys=False, allow_unicode=True)
    recorded = []
    if kind == "rule":  # the newest inbox events, to dry-run the rule against one
        inbox = await c.api("GET", "/v1/webhook-events", params={"limit": RECORDED_CHOICES})
        recorded = inbox.body.get("items", []) if inbox.ok else []
    return c.render("resource.html", kind=kind, plural=plural, res=current.body, text=text, versions=items,
                    shown=shown, changes=changes, sample=json.dumps(SAMPLE_EVENT, indent=2), recorded=recorded)


@router.post("/rules/{kind}/{name}")
async def save_resource(c: Posted, kind: str, name: str, text: Annotated[str, Form()]) -> Response:
    """Apply the edited YAML as a new version (nothing changes if it is invalid)."""
    plural = "pipelines" if kind == "pipeline" else "rules"
    answer = await c.api("PUT", f"/v1/{plural}/{name}", content=text.encode(),
                         headers={"Content-Type": "application/yaml"})
    if not answer.ok and isinstance(answer.body, dict) and answer.body.get("errors"):
        where = "; ".join(f"line {e.get('line')}, column {e.get('column')}: {e.get('message')}"
                          for e in answer.body["errors"])
        return back(f"/console/rules/{kind}/{name}", error=f"Not saved — {where}")
    outcome = answer.body.get("outcome", "") if isinstance(answer.body, dict) else ""
    return back(f"/console/rules/{kind}/{name}", answer, ok=f"Saved: {outcome}.")


@router.post("/rules/rule/{name}/test")
async def dry_run(
    c: Posted, name: str, event: Annotated[str, Form()] = "", webhook_event: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """Dry-run the rule against a pasted event, or a recorded inbox event (``webhook_event``, its id): fired or not
    and why, and the rendered actions."""
    if webhook_event:
        report = await c.api("POST", f"/v1/rules/{name}:test", json={"webhook_event": webhook_event})
        if report.ok and isinstance(report.body, dict):
            event = json.dumps(report.body.get("event"), indent=2)
        return c.render("dry_run.html", name=name, event=event, report=report, recorded=webhook_event)
    try:
        parsed = json.loads(event)
    except ValueError as exc:
        report = Answer(422, {"detail": f"the event is not JSON: {exc}"})
    else:
        report = await c.api("POST", f"/v1/rules/{name}:test", json={"event": parsed})
    return c.render("dry_run.html", name=name, event=event, report=report)


@router.post("/rules/rule/{name}/{action}")
async def enable_rule(c: Posted, name: str, action: str) -> Response:
    """Enable or disable a rule (a new version)."""
    if action not in ("enable", "disable"):
        return back(f"/console/rules/rule/{name}", error=f"unknown action {action!r}")
    answer = await c.api("POST", f"/v1/rules/{name}:{action}")
    return back(f"/console/rules/rule/{name}", answer, ok=f"Rule {action}d.")


@router.post("/validate")
async def validate(c: Signed, request: Request) -> JSONResponse:
    """Validate YAML as it is typed (the editor's script posts it with the CSRF token in a header)."""
    if not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), c.csrf.encode()):
        raise _Forbidden
    answer = await c.api("POST", "/v1/resources:validate", content=await request.body(),
                         headers={"Content-Type": "application/yaml"})
    return JSONResponse(answer.body, status_code=answer.status)


# --- rule runs and audit ---------------------------------------------------------------------------------


@router.get("/runs")
async def runs(c: Signed, rule: str = "", status: str = "", opportunity: str = "", cursor: str = "") -> HTMLResponse:
    """Rule runs, newest first, with each action's params, output or error, and retry for failed ones."""
    filters = {"rule": rule, "status": status, "opportunity": opportunity}
    params = {k: v for k, v in {**filters, "cursor": cursor}.items() if v}
    answer = await c.api("GET", "/v1/rule-runs", params={**params, "limit": 50})
    return c.render("runs.html", answer=answer, filters=filters)


@router.post("/runs/{run_id}/actions/{index}/retry")
async def retry_action(c: Posted, run_id: int, index: int) -> Response:
    """Run one failed action again (under its original idempotency key)."""
    answer = await c.api("POST", f"/v1/rule-runs/{run_id}/actions/{index}:retry")
    attempt = answer.body.get("attempt") if isinstance(answer.body, dict) else None
    return back("/console/runs", answer, ok=f"Retry started (attempt {attempt}).")


@router.get("/audit")
async def audit(c: Signed, resource: str = "", actor: str = "", action: str = "", cursor: str = "") -> HTMLResponse:
    """Who changed what, when."""
    filters = {"resource": resource, "actor": actor, "action": action}
    params = {k: v for k, v in {**filters, "cursor": cursor}.items() if v}
    answer = await c.api("GET", "/v1/audit", params={**params, "limit": 100})
    return c.render("audit.html", answer=answer, filters=filters)


# --- opportunities board -------------------------------------------------------------------------------


@dataclass
class Card:
    """An opportunity on the board: its summary, with AI risk and next action from its own view."""

    id: str
    name: str | None
    amount: float | None
    risk: float | None = None
    next_action: str | None = None


async def _card(c: Console, summary: dict) -> Card:
    card = Card(summary["id"], summary.get("name"), summary.get("amount"))
    view = await c.api("GET", f"/v1/opportunities/{summary['id']}")
    insight = view.body.get("insight") if view.ok else None
    if insight:
        card.risk = insight.get("risk_score")
        card.next_action = (insight.get("next_actions") or [{}])[0].get("title")
    return card


@router.get("/opportunities")
async def board(c: Signed, cursor: str = "") -> HTMLResponse:
    """The PEAK board: one column per stage of each pipeline, cards with amount, AI risk and next action."""
    answer = await c.api("GET", "/v1/opportunities", params={"limit": 50, **({"cursor": cursor} if cursor else {})})
    summaries = answer.body.get("items", []) if answer.ok else []
    cards = dict(zip([s["id"] for s in summaries], await asyncio.gather(*(_card(c, s) for s in summaries)),
                     strict=True))
    boards = []
    for name in dict.fromkeys(s["pipeline"] for s in summaries):
        pipeline = await c.api("GET", f"/v1/pipelines/{name}")
        stages = pipeline.body["document"]["spec"]["stages"] if pipeline.ok else []
        on_it = [s for s in summaries if s["pipeline"] == name]
        known = {st["key"] for st in stages}
        stages += [{"key": k, "name": k} for k in dict.fromkeys(s["stage"] for s in on_it) if k not in known]
        columns = []
        for stage in stages:
            here = [cards[s["id"]] for s in on_it if s["stage"] == stage["key"]]
            columns.append({"key": stage["key"], "name": stage.get("name", stage["key"]), "cards": here,
                            "total": sum(card.amount or 0 for card in here)})
        boards.append({"pipeline": name, "columns": columns})
    return c.render("board.html", answer=answer, boards=boards)
