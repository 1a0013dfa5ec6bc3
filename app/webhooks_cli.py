"""``fulqrun-hub webhooks send PROVIDER FIXTURE --connection ID``: post a payload signed like the provider would.

The connection's secret is read from the database through the vault, the payload is signed with
the provider's scheme and posted to the running API (``--url`` to override), so an admin can
exercise rules the way ``stripe trigger`` does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode

import typer

app = typer.Typer(help="Webhooks: send signed test events to the hub.", no_args_is_help=True)

SLACK_EVENTS_API = ("event_callback", "url_verification", "app_rate_limited")


def content_type_of(path: Path, body: bytes) -> str:
    """A fixture's content type from its name and first byte."""
    if path.suffix == ".xml" or body.lstrip()[:1] == b"<":
        return "application/xml"
    if "form" in path.name or path.suffix == ".txt":
        return "application/x-www-form-urlencoded"
    return "application/json"


def with_new_id(scheme: str, body: bytes) -> bytes:
    """The payload under a fresh event id (Stripe ``id``, Slack ``event_id``, generic ``id``)."""
    doc = json.loads(body)
    fresh = secrets.token_hex(12)
    if scheme == "stripe":
        doc["id"] = f"evt_{fresh}"
    elif scheme == "slack" and "event_id" in doc:
        doc["event_id"] = f"Ev{fresh.upper()}"
    elif scheme == "generic":
        doc["id"] = f"msg_{fresh}"
    else:
        raise ValueError(f"--new-id is not supported for {scheme} payloads")
    return json.dumps(doc).encode()


def signed_request(
    scheme: str, body: bytes, content_type: str, creds, url: str, now: int | None = None  # noqa: ANN001
) -> tuple[bytes, dict[str, str]]:
    """The body and headers a provider would send for ``body`` to ``url`` (``creds``: webhooks.receivers.Credentials)."""
    from connectors import signing

    now = int(time.time()) if now is None else now
    secret = creds.webhook_secrets[0] if creds.webhook_secrets else None
    headers = {"content-type": content_type}
    if scheme == "slack" and content_type == "application/json":
        doc = json.loads(body)
        if doc.get("type") not in SLACK_EVENTS_API:  # interactivity: form-encoded payload=<json>
            body = urlencode({"payload": json.dumps(doc)}).encode()
            headers["content-type"] = "application/x-www-form-urlencoded"
    if scheme == "microsoft":
        states = creds.client_states or creds.webhook_secrets
        if not states:
            raise ValueError("the connection has no client_state (or webhook_secrets) to put in the notifications")
        doc = json.loads(body)
        for note in doc.get("value", []):
            note["clientState"] = states[0]
        return json.dumps(doc).encode(), headers
    if scheme == "gong" and creds.public_keys:
        raise ValueError("this Gong connection verifies Gong's signed JWT; only Gong holds that private key")
    if secret is None:
        raise ValueError("the connection has no webhook_secrets")
    if scheme == "stripe":
        headers["stripe-signature"] = signing.sign_stripe(body, secret, now)
    elif scheme == "slack":
        headers["x-slack-request-timestamp"] = str(now)
        headers["x-slack-signature"] = signing.sign_slack(body, secret, now)
    elif scheme == "docusign":
        headers["x-docusign-signature-1"] = signing.sign_docusign(body, secret)
    elif scheme == "gong":
        headers["authorization"] = f"Bearer {secret}"
    elif scheme == "hubspot":
        ts = str(now * 1000)
        headers["x-hubspot-request-timestamp"] = ts
        headers["x-hubspot-signature-v3"] = signing.hubspot_signature("v3", secret, body, "POST", url, ts)
    elif scheme == "generic":
        doc = json.loads(body)
        msg_id = str(doc.get("id") or f"msg_{secrets.token_hex(12)}")
        headers.update({
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            "webhook-signature": signing.sign_generic(body, secret, msg_id, now),
        })  # fmt: skip
    else:
        raise ValueError(f"no signer for scheme {scheme!r}")
    return body, headers


@app.command("send")
def send(
    provider: str = typer.Argument(..., help="provider of the connection, e.g. stripe"),
    fixture: Path = typer.Argument(..., exists=True, dir_okay=False, help="payload file (JSON, XML or form)"),
    connection: str = typer.Option(..., "--connection", help="connection id (con_…)"),
    url: str = typer.Option(None, help="endpoint to post to (default: the configured API)"),
    new_id: bool = typer.Option(False, "--new-id", help="give the event a fresh id (Stripe, Slack events, generic)"),
) -> None:
    """Sign FIXTURE with the connection's secret and post it to /webhooks/PROVIDER/ID."""
    import httpx

    from app.cli import fail, load_settings
    from hub.store import Database
    from hub.vault import Vault
    from webhooks.inbox import CredentialCache
    from webhooks.receivers import scheme_for

    settings = load_settings()
    scheme = scheme_for(provider)
    if scheme is None:
        fail(f"provider {provider!r} receives no webhooks")
    target = url or settings.webhook_url(provider, connection)

    async def main() -> httpx.Response:
        db = Database(settings.resolved_database_url)
        try:
            creds, _ = await CredentialCache(db, Vault.from_settings(settings)).get(connection)
        finally:
            await db.dispose()
        if creds is None or creds.provider != provider:
            raise ValueError(f"no {provider} connection {connection!r}")
        raw = fixture.read_bytes()
        body = with_new_id(scheme, raw) if new_id else raw
        body, headers = signed_request(scheme, body, content_type_of(fixture, raw), creds, target)
        async with httpx.AsyncClient(timeout=30) as http:
            return await http.post(target, content=body, headers=headers)

    try:
        response = asyncio.run(main())
    except (ValueError, httpx.HTTPError) as exc:
        fail(str(exc))
    typer.echo(f"{response.status_code} {response.text}".rstrip())
    if response.status_code >= 300:
        raise typer.Exit(1)
