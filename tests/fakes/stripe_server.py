"""Fake Stripe API (https://api.stripe.com/v1/...).

Wire format as Stripe's: form-encoded bodies with bracketed nesting (`metadata[k]=v`, `items[0][price]=…`),
`Authorization: Bearer sk_…`, `Idempotency-Key` honoured (same key + same parameters → the first answer
replayed with `Idempotent-Replayed: true`; same key + other parameters → 400 `idempotency_error`),
`Request-Id` on every answer, errors as `{"error": {"type", "code", "message", "param"}}`, 429 with
`Retry-After`. Lists are `{"object": "list", "data", "has_more", "url"}`, newest first, paginated with
`limit`/`starting_after`/`ending_before` and filterable by `created[gte|gt|lte|lt]`. `GET /v1/events` lists
the events recorded with `emit()` (filter `type`, `*` wildcards as Stripe's); `status=all` lists subscriptions
of every status.
Point stripe-python at it with `StripeClient(key, base_addresses={"api": fake.url})`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import secrets
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tests.fakes.server import FakeServer, bearer_token

CREATED_BASE = 1_700_000_000


def decode_form(body: str) -> dict[str, Any]:
    """Decode Stripe's bracketed form encoding into nested dicts/lists."""
    result: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = result
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt_is_index = not last and parts[i + 1].isdigit()
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if last:
                    node[idx] = value
                else:
                    if node[idx] is None:
                        node[idx] = [] if nxt_is_index else {}
                    node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if nxt_is_index else {})
    return result


class StripeFake(FakeServer):
    """Stripe with customers, invoices, invoice items and subscriptions held in memory."""

    def __init__(self, tokens: tuple[str, ...] = ("sk_test_fake",)) -> None:
        super().__init__(tokens)
        self.objects: dict[str, dict[str, dict[str, Any]]] = {
            "customers": {}, "invoices": {}, "invoiceitems": {}, "subscriptions": {}, "events": {}}
        self.idempotency: dict[str, tuple[str, dict[str, Any], int, dict[str, Any]]] = {}
        self._clock = CREATED_BASE

    # --- data ----------------------------------------------------------------------------------
    def _created(self) -> int:
        self._clock += 1
        return self._clock

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(7)}"

    def seed_customers(self, n: int) -> list[dict[str, Any]]:
        """Add `n` customers with increasing `created`."""
        return [self._add_customer({"name": f"Customer {i}", "email": f"c{i}@example.com"}) for i in range(n)]

    def seed_invoices(self, customer_id: str, n: int, status: str = "paid") -> list[dict[str, Any]]:
        """Add `n` finalized invoices for a customer."""
        out = []
        for _ in range(n):
            invoice = self._add_invoice({"customer": customer_id})
            self._finalize(invoice)
            invoice["status"] = status
            out.append(invoice)
        return out

    def seed_subscriptions(self, customer_id: str, n: int) -> list[dict[str, Any]]:
        """Add `n` active subscriptions for a customer."""
        out = []
        for _ in range(n):
            sub = {"id": self._id("sub"), "object": "subscription", "customer": customer_id,
                   "status": "active", "created": self._created(), "currency": "usd", "metadata": {},
                   "items": {"object": "list", "data": [], "has_more": False}}
            self.objects["subscriptions"][sub["id"]] = sub
            out.append(sub)
        return out

    def emit(self, type_: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Record an event (as Stripe would on a change) carrying a snapshot of `obj`; returns it."""
        event = {"id": self._id("evt"), "object": "event", "api_version": "2024-06-20", "created": self._created(),
                 "livemode": False, "pending_webhooks": 0, "type": type_, "data": {"object": json.loads(json.dumps(obj))},
                 "request": {"id": None, "idempotency_key": None}}
        self.objects["events"][event["id"]] = event
        return event

    def _add_customer(self, params: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": self._id("cus"), "object": "customer", "created": self._created(), "livemode": False,
            "email": params.get("email"), "name": params.get("name"), "description": params.get("description"),
            "phone": params.get("phone"), "currency": None, "balance": 0, "delinquent": False,
            "metadata": params.get("metadata") or {},
        }
        self.objects["customers"][customer["id"]] = customer
        return customer

    def _add_invoice(self, params: dict[str, Any]) -> dict[str, Any]:
        invoice = {
            "id": self._id("in"), "object": "invoice", "created": self._created(), "livemode": False,
            "customer": params["customer"], "status": "draft", "number": None, "currency": params.get("currency", "usd"),
            "collection_method": params.get("collection_method", "charge_automatically"),
            "days_until_due": int(params["days_until_due"]) if params.get("days_until_due") else None,
            "auto_advance": params.get("auto_advance", "false") == "true", "description": params.get("description"),
            "metadata": params.get("metadata") or {}, "amount_due": 0, "amount_paid": 0, "total": 0,
            "hosted_invoice_url": None, "invoice_pdf": None,
            "lines": {"object": "list", "data": [], "has_more": False, "url": ""},
        }
        invoice["lines"]["url"] = f"/v1/invoices/{invoice['id']}/lines"
        self.objects["invoices"][invoice["id"]] = invoice
        return invoice

    def _finalize(self, invoice: dict[str, Any]) -> None:
        invoice["status"] = "open"
        invoice["number"] = f"FQ-{len(self.objects['invoices']):04d}"
        invoice["hosted_invoice_url"] = f"https://invoice.stripe.com/i/{invoice['id']}"
        invoice["invoice_pdf"] = f"https://pay.stripe.com/invoice/{invoice['id']}/pdf"

    # --- wire ----------------------------------------------------------------------------------
    def error(self, status: int, code: str, message: str, *, type_: str = "invalid_request_error",
              param: str | None = None) -> Response:
        error: dict[str, Any] = {"type": type_, "message": message}
        if code:
            error["code"] = code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if param:
            error["param"] = param
        return JSONResponse({"error": error}, status_code=status, headers={"Request-Id": self._request_id()})

    def rate_limit_error(self, retry_after: int) -> Response:
        response = self.error(429, "rate_limit", "Request rate limit exceeded. Learn more about rate limits here "
                                                 "https://stripe.com/docs/rate-limits.")
        response.headers["Retry-After"] = str(retry_after)
        return response

    def _request_id(self) -> str:
        return f"req_{secrets.token_hex(7)}"

    def _ok(self, obj: dict[str, Any], status: int = 200) -> Response:
        return JSONResponse(obj, status_code=status, headers={"Request-Id": self._request_id()})

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/customers", self.create_customer, methods=["POST"]),
            Route("/v1/customers", self.lister("customers"), methods=["GET"]),
            Route("/v1/customers/{id}", self.getter("customers", "customer"), methods=["GET"]),
            Route("/v1/invoices", self.create_invoice, methods=["POST"]),
            Route("/v1/invoices", self.lister("invoices"), methods=["GET"]),
            Route("/v1/invoices/{id}", self.getter("invoices", "invoice"), methods=["GET"]),
            Route("/v1/invoices/{id}/finalize", self.finalize_invoice, methods=["POST"]),
            Route("/v1/invoices/{id}/send", self.send_invoice, methods=["POST"]),
            Route("/v1/invoiceitems", self.create_invoice_item, methods=["POST"]),
            Route("/v1/subscriptions", self.lister("subscriptions"), methods=["GET"]),
            Route("/v1/events", self.lister("events"), methods=["GET"]),
        ]

    def _auth(self, request: Request) -> Response | None:
        token = bearer_token(request)
        if token is None:
            return self.error(401, "", "You did not provide an API key. You need to provide your API key in the "
                                       "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                                       "YOUR_SECRET_KEY').")
        if token not in self.tokens:
            return self.error(401, "", f"Invalid API Key provided: {token[:8]}****{token[-4:]}")
        return None

    async def _write(self, request: Request, handler: Any) -> Response:
        """Auth, form decoding and idempotency around a POST handler(params) -> (status, obj) | Response."""
        if (denied := self._auth(request)) is not None:
            return denied
        params = decode_form((await request.body()).decode())
        key = request.headers.get("idempotency-key")
        fingerprint = f"{request.url.path}?{json.dumps(params, sort_keys=True)}"
        if key is not None and key in self.idempotency:
            seen, body, status, _ = self.idempotency[key]
            if seen != fingerprint:
                return self.error(
                    400, "", f"Keys for idempotent requests can only be used with the same parameters they were "
                             f"first used with. Try using a key other than '{key}' if you meant to execute a "
                             f"different request.", type_="idempotency_error")
            return JSONResponse(body, status_code=status, headers={"Request-Id": self._request_id(),
                                                                   "Idempotent-Replayed": "true",
                                                                   "Original-Request": "req_original"})
        result = handler(params)
        if isinstance(result, Response):
            return result
        if key is not None:
            self.idempotency[key] = (fingerprint, result, 200, params)
        return self._ok(result)

    async def create_customer(self, request: Request) -> Response:
        return await self._write(request, self._add_customer)

    async def create_invoice(self, request: Request) -> Response:
        def handler(params: dict[str, Any]) -> dict[str, Any] | Response:
            if params.get("customer") not in self.objects["customers"]:
                return self.error(400, "resource_missing", f"No such customer: '{params.get('customer')}'",
                                  param="customer")
            if params.get("collection_method") == "send_invoice" and not params.get("days_until_due"):
                return self.error(400, "parameter_missing", "Missing required param: days_until_due.",
                                  param="days_until_due")
            return self._add_invoice(params)

        return await self._write(request, handler)

    async def create_invoice_item(self, request: Request) -> Response:
        def handler(params: dict[str, Any]) -> dict[str, Any] | Response:
            if params.get("customer") not in self.objects["customers"]:
                return self.error(400, "resource_missing", f"No such customer: '{params.get('customer')}'",
                                  param="customer")
            invoice = self.objects["invoices"].get(params.get("invoice", ""))
            if params.get("invoice") and invoice is None:
                return self.error(400, "resource_missing", f"No such invoice: '{params['invoice']}'",
                                  param="invoice")
            if invoice is not None and invoice["status"] != "draft":
                return self.error(400, "invoice_not_editable", "You can only add invoice items to draft invoices.")
            quantity = int(params.get("quantity", 1))
            if "amount" in params:
                amount = int(params["amount"])
            elif "price_data" in params:
                amount = int(params["price_data"]["unit_amount"]) * quantity
            else:
                return self.error(400, "parameter_missing", "Missing required param: amount.", param="amount")
            item = {"id": self._id("ii"), "object": "invoiceitem", "customer": params["customer"],
                    "invoice": params.get("invoice"), "amount": amount, "quantity": quantity,
                    "currency": params.get("currency", "usd"), "description": params.get("description"),
                    "date": self._created(), "metadata": params.get("metadata") or {}}
            self.objects["invoiceitems"][item["id"]] = item
            if invoice is not None:
                invoice["lines"]["data"].append({"id": f"il_{item['id'][3:]}", "object": "line_item",
                                                 "amount": amount, "currency": item["currency"],
                                                 "description": item["description"], "quantity": quantity})
                invoice["total"] = invoice["amount_due"] = sum(li["amount"] for li in invoice["lines"]["data"])
            return item

        return await self._write(request, handler)

    async def finalize_invoice(self, request: Request) -> Response:
        invoice_id = request.path_params["id"]

        def handler(params: dict[str, Any]) -> dict[str, Any] | Response:
            invoice = self.objects["invoices"].get(invoice_id)
            if invoice is None:
                return self.error(404, "resource_missing", f"No such invoice: '{invoice_id}'", param="id")
            if invoice["status"] != "draft":
                return self.error(400, "invoice_not_editable", "This invoice is already finalized, you can't "
                                                               "re-finalize a non-draft invoice.")
            self._finalize(invoice)
            return invoice

        return await self._write(request, handler)

    async def send_invoice(self, request: Request) -> Response:
        invoice_id = request.path_params["id"]

        def handler(params: dict[str, Any]) -> dict[str, Any] | Response:
            invoice = self.objects["invoices"].get(invoice_id)
            if invoice is None:
                return self.error(404, "resource_missing", f"No such invoice: '{invoice_id}'", param="id")
            if invoice["status"] != "open":
                return self.error(400, "invoice_not_open", "You can only send open invoices.")
            invoice["sent"] = True
            return invoice

        return await self._write(request, handler)

    def getter(self, kind: str, label: str) -> Any:
        async def get(request: Request) -> Response:
            if (denied := self._auth(request)) is not None:
                return denied
            obj = self.objects[kind].get(request.path_params["id"])
            if obj is None:
                return self.error(404, "resource_missing", f"No such {label}: '{request.path_params['id']}'",
                                  param="id")
            return self._ok(obj)

        return get

    def lister(self, kind: str) -> Any:
        async def list_(request: Request) -> Response:
            if (denied := self._auth(request)) is not None:
                return denied
            q = decode_form(request.url.query)
            limit = int(q.get("limit", 10))
            if not 1 <= limit <= 100:
                return self.error(400, "parameter_invalid_integer", "Invalid integer: limit", param="limit")
            items = sorted(self.objects[kind].values(), key=lambda o: o.get("created", 0), reverse=True)
            created = q.get("created")
            if isinstance(created, dict):
                ops = {"gte": int.__ge__, "gt": int.__gt__, "lte": int.__le__, "lt": int.__lt__}
                for op, bound in created.items():
                    items = [o for o in items if ops[op](o["created"], int(bound))]
            for field in ("customer", "status", "email"):
                if field in q and not (field == "status" and q[field] == "all"):
                    items = [o for o in items if o.get(field) == q[field]]
            if "type" in q:
                items = [o for o in items if fnmatch.fnmatchcase(o.get("type", ""), q["type"])]
            ids = [o["id"] for o in items]
            if "starting_after" in q:
                if q["starting_after"] not in ids:
                    return self.error(400, "resource_missing", f"No such object: '{q['starting_after']}'",
                                      param="starting_after")
                items = items[ids.index(q["starting_after"]) + 1:]
            elif "ending_before" in q:
                if q["ending_before"] not in ids:
                    return self.error(400, "resource_missing", f"No such object: '{q['ending_before']}'",
                                      param="ending_before")
                items = items[:ids.index(q["ending_before"])][-limit:]
            return self._ok({"object": "list", "data": items[:limit], "has_more": len(items) > limit,
                             "url": f"/v1/{kind}"})

        return list_
