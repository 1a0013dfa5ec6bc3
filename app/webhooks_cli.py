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

import typer

from connectors.events import Credentials, get, scheme_for

app = typer.Typer(help="Webhooks: send signed test events to the hub.", no_args_is_help=True)


def content_type_of(path: Path, body: bytes) -> str:
    """A fixture's content type from its name and first byte."""
    if path.suffix == ".xml" or body.lstrip()[:1] == b"<":
        return "application/xml"
    if "form" in path.name or path.suffix == ".txt":
        return "application/x-www-form-urlencoded"
    return "application/json"


def with_new_id(scheme: str, body: bytes) -> bytes:
    """The payload under a fresh event id, where the scheme knows one (Stripe, Slack events, generic)."""
    doc = json.loads(body)
    get(scheme).new_id(doc, secrets.token_hex(12))
    return json.dumps(doc).encode()


def signed_request(
    scheme: str, body: bytes, content_type: str, creds: Credentials, url: str, now: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers a provider would send for ``body`` to ``url``, signed with the connection's secret."""
    return get(scheme).sign(body, content_type, creds, url, int(time.time()) if now is None else now)


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
