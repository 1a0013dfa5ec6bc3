"""Fake DocuSign eSignature REST API v2.1 (https://demo.docusign.net/restapi/v2.1/accounts/{accountId}/...).

Wire format as DocuSign's: JSON bodies in camelCase, `Authorization: Bearer <access token>`, numbers in list
envelopes as strings, errors as `{"errorCode": "...", "message": "..."}` (400 for request errors, 401
`USER_AUTHENTICATION_FAILED`, 404 for unknown accounts), throttling as 429 with `X-RateLimit-Reset` and
`Retry-After`. Envelope lists (`list_status_changes`) need `from_date` and page with
`start_position`/`count` and `nextUri`.
Point docusign-esign at it with `ApiClient(host=fake.url + "/restapi")`.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.server import FakeServer, bearer_token

ACCOUNT_ID = "8f4c1a2e-0000-4000-8000-00000000acme"
MSA_TEMPLATE_ID = "4d2a7f00-0000-4000-8000-0000000000a1"
BASE = "/restapi/v2.1/accounts/{account_id}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-4] + "Z"


def _parse(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class DocuSignFake(FakeServer):
    """DocuSign with one account, an MSA template (role `Signer`) and envelopes in memory."""

    def __init__(self, tokens: tuple[str, ...] = ("docusign-test-token",)) -> None:
        super().__init__(tokens)
        self.templates: dict[str, dict[str, Any]] = {
            MSA_TEMPLATE_ID: {"templateId": MSA_TEMPLATE_ID, "name": "MSA", "roles": ["Signer"],
                              "emailSubject": "Please sign the Master Services Agreement"}}
        self.envelopes: dict[str, dict[str, Any]] = {}
        self.clock = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    # --- data ----------------------------------------------------------------------------------
    def _tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def seed_envelopes(self, n: int, status: str = "sent") -> list[dict[str, Any]]:
        """Add `n` envelopes from the MSA template, each changed one second after the previous."""
        return [self._add_envelope(MSA_TEMPLATE_ID, [{"email": f"s{i}@example.com", "name": f"Signer {i}",
                                                      "roleName": "Signer"}],
                                   [{"name": "opportunity_id", "value": f"opp-{i}"}], status) for i in range(n)]

    def set_status(self, envelope_id: str, status: str) -> dict[str, Any]:
        """Move an envelope to `status` (e.g. "completed", as a signer finishing would)."""
        envelope = self.envelopes[envelope_id]
        now = _iso(self._tick())
        envelope.update(status=status, statusChangedDateTime=now, lastModifiedDateTime=now)
        if status == "completed":
            envelope["completedDateTime"] = now
            for signer in envelope["recipients"]["signers"]:
                signer.update(status="completed", signedDateTime=now)
        return envelope

    def _add_envelope(self, template_id: str, roles: list[dict[str, Any]], text_fields: list[dict[str, Any]],
                      status: str, email_subject: str | None = None) -> dict[str, Any]:
        envelope_id = str(uuid.uuid4())
        now = _iso(self._tick())
        template = self.templates[template_id]
        envelope = {
            "envelopeId": envelope_id, "status": status, "emailSubject": email_subject or template["emailSubject"],
            "createdDateTime": now, "lastModifiedDateTime": now, "statusChangedDateTime": now,
            "sentDateTime": now if status == "sent" else None, "templateId": template_id,
            "envelopeUri": f"/envelopes/{envelope_id}",
            "customFields": {"textCustomFields": [
                {"fieldId": str(10_000 + i), "name": f["name"], "value": f.get("value", ""),
                 "show": f.get("show", "false"), "required": f.get("required", "false")}
                for i, f in enumerate(text_fields)], "listCustomFields": []},
            "recipients": {"signers": [
                {"recipientId": str(i + 1), "recipientIdGuid": str(uuid.uuid4()), "email": r["email"],
                 "name": r["name"], "roleName": r["roleName"], "routingOrder": str(r.get("routingOrder", "1")),
                 "status": "sent" if status == "sent" else "created"} for i, r in enumerate(roles)],
                "recipientCount": str(len(roles))},
        }
        self.envelopes[envelope_id] = envelope
        return envelope

    # --- wire ----------------------------------------------------------------------------------
    def error(self, status: int, code: str, message: str) -> Response:
        return JSONResponse({"errorCode": code, "message": message}, status_code=status)

    def rate_limit_error(self, retry_after: int) -> Response:
        return JSONResponse(
            {"errorCode": "HOURLY_APIINVOCATION_LIMIT_EXCEEDED",
             "message": "The maximum number of hourly API invocations has been exceeded."},
            status_code=429, headers={"Retry-After": str(retry_after), "X-RateLimit-Limit": "3000",
                                      "X-RateLimit-Remaining": "0",
                                      "X-RateLimit-Reset": str(int(time.time()) + retry_after)})

    def routes(self) -> list[BaseRoute]:
        base = BASE.format(account_id="{account_id}")
        return [
            Route(f"{base}/envelopes", self.create_envelope, methods=["POST"]),
            Route(f"{base}/envelopes", self.list_status_changes, methods=["GET"]),
            Route(f"{base}/envelopes/{{envelope_id}}", self.get_envelope, methods=["GET"]),
            Route(f"{base}/envelopes/{{envelope_id}}/custom_fields", self.custom_fields, methods=["GET"]),
        ]

    def _auth(self, request: Request) -> Response | None:
        if bearer_token(request) not in self.tokens:
            return self.error(401, "USER_AUTHENTICATION_FAILED",
                              "One or both of Username and Password are invalid. Invalid access token")
        if request.path_params["account_id"] != ACCOUNT_ID:
            return self.error(400, "ACCOUNT_LACKS_PERMISSIONS",
                              "This Account lacks sufficient permissions.")
        return None

    async def create_envelope(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        body = await request.json()
        template_id = body.get("templateId")
        if template_id not in self.templates:
            return self.error(400, "TEMPLATE_ID_INVALID", f"Invalid template ID. {template_id}")
        roles = body.get("templateRoles") or []
        known = set(self.templates[template_id]["roles"])
        if not roles or any(r.get("roleName") not in known for r in roles):
            return self.error(400, "ENVELOPE_IS_INCOMPLETE",
                              "The Envelope is not Complete. A Complete Envelope Requires Documents, Recipients, "
                              "Tabs, and a Subject Line.")
        if any(not r.get("email") or "@" not in r["email"] for r in roles):
            return self.error(400, "INVALID_EMAIL_ADDRESS_FOR_RECIPIENT",
                              "The email address for the recipient is invalid.")
        status = body.get("status", "created")
        text_fields = (body.get("customFields") or {}).get("textCustomFields") or []
        envelope = self._add_envelope(template_id, roles, text_fields, status, body.get("emailSubject"))
        return JSONResponse({"envelopeId": envelope["envelopeId"], "uri": envelope["envelopeUri"],
                             "statusDateTime": envelope["statusChangedDateTime"], "status": status},
                            status_code=201)

    async def get_envelope(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        envelope = self.envelopes.get(request.path_params["envelope_id"])
        if envelope is None:
            return self.error(400, "ENVELOPE_DOES_NOT_EXIST",
                              "The envelope specified either does not exist or you have no rights to it.")
        include = set(request.query_params.get("include", "").split(","))
        return JSONResponse(self._view(envelope, include))

    async def custom_fields(self, request: Request) -> Response:
        if (denied := self._auth(request)) is not None:
            return denied
        envelope = self.envelopes.get(request.path_params["envelope_id"])
        if envelope is None:
            return self.error(400, "ENVELOPE_DOES_NOT_EXIST",
                              "The envelope specified either does not exist or you have no rights to it.")
        return JSONResponse(envelope["customFields"])

    def _view(self, envelope: dict[str, Any], include: set[str]) -> dict[str, Any]:
        hidden = {name for param, name in (("custom_fields", "customFields"), ("recipients", "recipients"))
                  if param not in include}
        return {k: v for k, v in envelope.items() if k not in hidden and v is not None}

    async def list_status_changes(self, request: Request) -> Response:
        """`from_date` (required), `to_date`, `status`, `custom_field` (name=value), `start_position`, `count`,
        `include`."""
        if (denied := self._auth(request)) is not None:
            return denied
        q = request.query_params
        if "from_date" not in q and "envelope_ids" not in q:
            return self.error(400, "INVALID_REQUEST_PARAMETER",
                              "The request contained at least one invalid parameter. A value for 'from_date', "
                              "'envelope_ids', or 'transaction_ids' must be set.")
        items = sorted(self.envelopes.values(), key=lambda e: e["lastModifiedDateTime"])
        if "envelope_ids" in q:
            wanted = set(q["envelope_ids"].split(","))
            items = [e for e in items if e["envelopeId"] in wanted]
        if "from_date" in q:
            since = _parse(q["from_date"])
            items = [e for e in items if _parse(e["lastModifiedDateTime"]) >= since]
        if "to_date" in q:
            until = _parse(q["to_date"])
            items = [e for e in items if _parse(e["lastModifiedDateTime"]) < until]
        if "custom_field" in q:
            name, _, value = q["custom_field"].partition("=")
            items = [e for e in items if any(f["name"] == name and f["value"] == value
                                             for f in e["customFields"]["textCustomFields"])]
        if "status" in q:
            statuses = set(q["status"].split(","))
            items = [e for e in items if e["status"] in statuses]
        start = int(q.get("start_position", 0))
        count = int(q.get("count", 100))
        page = items[start:start + count]
        include = set(q.get("include", "").split(","))
        body: dict[str, Any] = {
            "resultSetSize": str(len(page)), "startPosition": str(start),
            "endPosition": str(start + len(page) - 1 if page else start), "totalSetSize": str(len(items)),
            "envelopes": [self._view(e, include) for e in page],
        }
        if start + count < len(items):
            params = {**dict(q), "start_position": str(start + count), "count": str(count)}
            query = "&".join(f"{k}={v}" for k, v in params.items())
            body["nextUri"] = f"/accounts/{ACCOUNT_ID}/envelopes?{query}"
        return JSONResponse(body)
