"""Stripe actions on stripe-python's ``StripeClient`` (async ``*_async`` methods, httpx underneath).

The client is pointed at the connection's base URL (``base_addresses={"api": ctx.base_url}``) and does
no retries of its own (``max_network_retries=0``): retries are the activity's, under Temporal's policy.
Every create carries an ``Idempotency-Key`` derived from ``ctx.idempotency_key`` (itself derived from
the workflow and activity ids) plus the step, so a retried activity replays Stripe's first answers
instead of creating a second customer, invoice or line. Objects carry ``metadata.opportunity_id``, which
is how ``invoice.paid`` webhooks find their opportunity again.

Webhooks (``StripeWebhooks``): ``Stripe-Signature`` (``t=``/``v1=`` HMAC-SHA256 of ``t.body``, 300 s tolerance),
one event per delivery with its ``evt_…`` id, mapped: ``invoice.paid`` → ``payment.received``,
``invoice.payment_failed`` → ``payment.failed``, ``customer.subscription.deleted`` → ``subscription.canceled``,
the opportunity from ``metadata.opportunity_id`` (the invoice's, then its subscription details').
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from stripe import HTTPXClient, StripeClient, StripeError, StripeObject

from connectors import signing
from connectors.base import ActionContext, ProviderError, action
from connectors.events import (
    Credentials,
    Delivery,
    DomainEvent,
    InboxEvent,
    MalformedEvent,
    Mapped,
    WebhookScheme,
    parse_json,
    webhook_scheme,
)

T = TypeVar("T", bound=StripeObject)
MAX_KEY = 255  # Stripe's idempotency key limit


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateCustomer(_Params):
    """Create a Stripe customer for an account of the CRM."""

    name: str = Field(min_length=1, max_length=256)
    email: str | None = Field(default=None, max_length=512)
    description: str | None = Field(default=None, max_length=350)
    phone: str | None = Field(default=None, max_length=20)
    opportunity_id: str | None = Field(default=None, max_length=500)
    account_id: str | None = Field(default=None, max_length=500, description="the CRM account id")
    metadata: dict[str, str] = Field(default_factory=dict)


class InvoiceLine(_Params):
    """One invoice line: a description and an amount in the currency's minor unit (cents)."""

    description: str = Field(min_length=1, max_length=500)
    amount: int = Field(description="minor units; negative for a discount")


class CreateInvoice(_Params):
    """Create an invoice for a customer: a draft, its lines, then (by default) finalized; optionally sent."""

    customer: str = Field(pattern=r"^cus_[A-Za-z0-9]+$")
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    lines: list[InvoiceLine] = Field(min_length=1, max_length=250)
    collection_method: Literal["send_invoice", "charge_automatically"] = "send_invoice"
    days_until_due: int | None = Field(default=30, ge=0, le=365)
    description: str | None = Field(default=None, max_length=1500)
    opportunity_id: str | None = Field(default=None, max_length=500)
    metadata: dict[str, str] = Field(default_factory=dict)
    finalize: bool = True
    send: bool = False


@action("stripe.create_customer", CreateCustomer, output={"customer_id": str, "replayed": bool})
async def create_customer(ctx: ActionContext, params: CreateCustomer) -> dict:
    """POST /v1/customers → ``{"customer_id", "replayed"}``."""
    metadata = {**params.metadata, **_ids(opportunity_id=params.opportunity_id, crm_account_id=params.account_id)}
    fields = params.model_dump(include={"name", "email", "description", "phone"}, exclude_none=True)
    async with _Stripe(ctx) as client:
        customer = await client.call(
            lambda opts: client.sdk.v1.customers.create_async({**fields, "metadata": metadata}, opts), "customer")
    return {"customer_id": customer.id, "replayed": _replayed(customer)}


@action("stripe.create_invoice", CreateInvoice, output={
    "invoice_id": str, "status": str, "number": str, "total": int, "currency": str, "hosted_invoice_url": str})
async def create_invoice(ctx: ActionContext, params: CreateInvoice) -> dict:
    """Draft invoice + one invoice item per line (+ finalize, + send) → the invoice's id, status, total, URL."""
    metadata = {**params.metadata, **_ids(opportunity_id=params.opportunity_id)}
    draft: dict[str, Any] = {"customer": params.customer, "currency": params.currency, "auto_advance": False,
                             "collection_method": params.collection_method, "metadata": metadata,
                             "pending_invoice_items_behavior": "exclude"}
    if params.collection_method == "send_invoice":
        draft["days_until_due"] = params.days_until_due
    if params.description:
        draft["description"] = params.description
    async with _Stripe(ctx) as client:
        sdk = client.sdk.v1
        invoice = await client.call(lambda opts: sdk.invoices.create_async(draft, opts), "invoice")
        for i, line in enumerate(params.lines):
            item = {"customer": params.customer, "invoice": invoice.id, "currency": params.currency,
                    "amount": line.amount, "description": line.description, "metadata": metadata}
            await client.call(lambda opts, item=item: sdk.invoice_items.create_async(item, opts), f"line/{i}")
        if params.finalize or params.send:
            invoice = await client.call(
                lambda opts: sdk.invoices.finalize_invoice_async(invoice.id, {"auto_advance": False}, opts), "finalize")
        if params.send:
            invoice = await client.call(lambda opts: sdk.invoices.send_invoice_async(invoice.id, None, opts), "send")
    data = invoice.to_dict()
    return {"invoice_id": invoice.id, "status": data.get("status"), "number": data.get("number"),
            "total": data.get("total"), "currency": data.get("currency"),
            "hosted_invoice_url": data.get("hosted_invoice_url")}


def _ids(**values: str | None) -> dict[str, str]:
    return {k: v for k, v in values.items() if v}


def _replayed(obj: StripeObject) -> bool:
    response = obj.last_response
    return bool(response and response.headers.get("idempotent-replayed") == "true")


class _Stripe:
    """A StripeClient for one action run (its httpx pool closed on exit) with error mapping and keys."""

    def __init__(self, ctx: ActionContext) -> None:
        self.ctx = ctx
        self.http = HTTPXClient()
        self.http._client_async = ctx.egress.httpx_client()  # the egress policy's (the SDK has no transport option)

    async def __aenter__(self) -> _Stripe:
        self.sdk = StripeClient(await self.ctx.access_token(), base_addresses={"api": self.ctx.base_url},
                                max_network_retries=0, http_client=self.http)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close_async()

    def idempotency_key(self, step: str) -> str:
        """``{ctx.idempotency_key}/{step}``, hashed if it would exceed Stripe's 255 characters."""
        key = f"{self.ctx.idempotency_key}/{step}"
        return key if len(key) <= MAX_KEY else hashlib.sha256(key.encode()).hexdigest()

    async def call(self, request: Callable[[Any], Awaitable[T]], step: str) -> T:
        """Run one SDK request with its idempotency key; Stripe's errors become ``ProviderError``."""
        try:
            await self.ctx.before_request()
            return await request({"idempotency_key": self.idempotency_key(step)})
        except StripeError as exc:
            if exc.http_status is None:  # network failure: let the activity retry it
                raise
            error = exc.error
            code = (error.code or error.type) if error else exc.code
            message = (error.message if error and error.message else exc.user_message) or str(exc)
            raise ProviderError(exc.http_status, message, code=code,
                                headers=dict(exc.headers or {})) from None


# --- webhooks -----------------------------------------------------------------------------------------------

STRIPE_DOMAIN = {
    "invoice.paid": "payment.received",
    "invoice.payment_failed": "payment.failed",
    "customer.subscription.deleted": "subscription.canceled",
}
STRIPE_IGNORED = {
    "invoice.payment_succeeded": "same payment as invoice.paid, which is the one mapped",
}


def _opportunity_from_metadata(*metas: object) -> str | None:
    for meta in metas:
        if isinstance(meta, dict) and meta.get("opportunity_id"):
            return str(meta["opportunity_id"])
    return None


def _map_stripe(event_type: str, doc: object) -> Mapped:
    domain = STRIPE_DOMAIN.get(event_type)
    if domain is None:
        reason = STRIPE_IGNORED.get(event_type, f"Stripe {event_type} has no domain event")
        return Mapped(ignored=reason)
    obj = ((doc or {}).get("data") or {}).get("object") or {} if isinstance(doc, dict) else {}
    details = obj.get("subscription_details") or {}
    opp = _opportunity_from_metadata(obj.get("metadata"), details.get("metadata"))
    if obj.get("object") == "subscription":
        items = ((obj.get("items") or {}).get("data")) or []
        data = {
            "subscription_id": obj.get("id"),
            "customer_id": obj.get("customer"),
            "status": obj.get("status"),
            "canceled_at": obj.get("canceled_at"),
            "ended_at": obj.get("ended_at"),
            "price_ids": [((i.get("price") or {}).get("id")) for i in items if isinstance(i, dict)],
        }
    else:
        data = {
            "invoice_id": obj.get("id"),
            "invoice_number": obj.get("number"),
            "customer_id": obj.get("customer"),
            "subscription_id": obj.get("subscription"),
            "amount_paid": obj.get("amount_paid"),
            "amount_due": obj.get("amount_due"),
            "currency": obj.get("currency"),
            "status": obj.get("status"),
            "attempt_count": obj.get("attempt_count"),
            "hosted_invoice_url": obj.get("hosted_invoice_url"),
        }
    data["opportunity_id"] = opp
    return Mapped(events=[DomainEvent(type=domain, opportunity_id=opp, data=data)])


@webhook_scheme
class StripeWebhooks(WebhookScheme):
    """Stripe's webhook scheme (see the module docstring)."""

    name = "stripe"
    description = "Stripe-Signature t=/v1= HMAC-SHA256, 300 s tolerance"

    def verify(self, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
        """Check the ``Stripe-Signature`` header."""
        signing.verify_stripe(delivery.body, delivery.headers.get("stripe-signature"), creds.webhook_secrets, now=now)

    def split(self, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
        """One event: its ``id`` and ``type``."""
        doc = parse_json(body)
        if not isinstance(doc, dict) or not doc.get("id") or not doc.get("type"):
            raise MalformedEvent("a Stripe event needs 'id' and 'type'")
        return [InboxEvent(str(doc["id"]), str(doc["type"]), body, headers.get("content-type", ""))]

    def map(self, event_type: str, body: bytes, content_type: str) -> Mapped:
        """Invoices paid or failed and subscriptions deleted (``STRIPE_DOMAIN``)."""
        return _map_stripe(event_type, parse_json(body))

    def sign(
        self, body: bytes, content_type: str, creds: Credentials, url: str, now: int
    ) -> tuple[bytes, dict[str, str]]:
        """A ``Stripe-Signature`` with the connection's newest secret."""
        signature = signing.sign_stripe(body, creds.first_secret(), now)
        return body, {"content-type": content_type, "stripe-signature": signature}

    def new_id(self, doc: dict, fresh: str) -> None:
        """``evt_<fresh>``."""
        doc["id"] = f"evt_{fresh}"
