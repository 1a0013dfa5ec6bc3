"""The ``fulqrun-hub`` command line."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer
from pydantic import ValidationError

from app.ai_cli import ai_app
from app.rules_cli import app as rules_app
from app.webhooks_cli import app as webhooks_app
from hub.logs import configure_logging
from hub.settings import Settings, get_settings

app = typer.Typer(help="FulQrun Hub: integration hub and workflow automation for FulQrun.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
secrets_app = typer.Typer(help="Secrets at rest.", no_args_is_help=True)
orgs_app = typer.Typer(help="Orgs.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(orgs_app, name="orgs")
app.add_typer(secrets_app, name="secrets")


def _load_provider_actions() -> None:
    """Import the provider modules so rules check provider action params, as the API does."""
    from connectors.catalogue import import_action_modules

    import_action_modules()


app.add_typer(rules_app, name="rules", callback=_load_provider_actions)
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(ai_app, name="ai")

ADMIN_KEY_FILE = "admin-api-key"


@app.callback()
def private_files() -> None:
    """Every file a command creates (data dir, backups) is readable by its owner only."""
    from hub.datadir import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)


def load_settings() -> Settings:
    """Settings (and JSON logging at their level), or a clear one-line error and exit 2."""
    try:
        settings = get_settings()
        configure_logging(settings.log_level)
        return settings
    except ValidationError as exc:
        msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        typer.echo(f"error: invalid configuration: {msgs}", err=True)
        raise typer.Exit(2) from None


def listening_on(settings: Settings, host: str | None, port: int | None) -> Settings:
    """``settings`` with the API's address from ``--host``/``--port``, so every URL the hub builds from it
    (webhook and OAuth callback URLs without ``HUB_PUBLIC_URL``) names the port it really listens on."""
    return settings.model_copy(update={"api_host": host or settings.api_host, "api_port": port or settings.api_port})


def fail(message: str) -> None:
    """Print ``error: message`` and exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _write_key_file(path, key: str) -> None:  # noqa: ANN001
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")


@app.command()
def run(
    host: str = typer.Option(None, help="API bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="API port (default 8000)"),
    temporal: str = typer.Option(None, help="use an existing Temporal at HOST:PORT instead of the embedded one"),
) -> None:
    """Everything in one process group: Temporal dev server, worker and API, on the embedded defaults."""
    from app import demo
    from app.runner import (
        StartupError,
        ensure_port_free,
        run_event_loop,
        serve,
        start_temporal_dev_server,
        wait_for_temporal,
    )
    from hub.runtime import Hub

    settings = listening_on(load_settings(), host, port)
    host, port = settings.api_host, settings.api_port
    proc = None
    try:
        ensure_port_free(host, port, "API")
        address = temporal or settings.temporal_address
        if not temporal:
            proc = start_temporal_dev_server(settings, int(address.rsplit(":", 1)[1]))

        async def main() -> None:
            await wait_for_temporal(address, settings.temporal_namespace)
            hub = Hub.from_settings(settings, temporal_address=address)
            await hub.db.migrate()
            key = await demo.bootstrap(hub)
            if key:
                _write_key_file(settings.data_dir / ADMIN_KEY_FILE, key)
            shown = (settings.data_dir / ADMIN_KEY_FILE).resolve()
            base = f"http://{host}:{port}"

            def banner() -> None:
                typer.echo(
                    f"FulQrun Hub is running (data in {settings.data_dir.resolve()})\n"
                    f"  Console:     {base}/console  (sign in with the admin key)\n"
                    f"  API docs:    {base}/docs\n"
                    f"  Temporal UI: http://127.0.0.1:{settings.temporal_ui_port}\n"
                    f"  admin key:   {shown}\n"
                    f"  try:  curl -H \"Authorization: Bearer $(cat {shown})\" {base}/v1/pipelines\n"
                    "Ctrl-C stops everything."
                )

            seeding: list[asyncio.Task] = []

            def ready() -> None:
                banner()
                if key:  # first start: the demo deals, moved through PEAK by the API as a CRM would
                    seeding.append(asyncio.create_task(_seed_demo(base, key)))

            training = asyncio.create_task(demo.train_models(hub))
            training.add_done_callback(
                lambda t: None if t.cancelled() else typer.echo(f"demo AI models: {t.exception() or t.result()}")
            )
            try:
                await serve(hub, api=True, worker=True, host=host, port=port, on_ready=ready)
            finally:
                for task in (training, *seeding):
                    task.cancel()
                await asyncio.gather(training, *seeding, return_exceptions=True)
                await hub.close()

        run_event_loop(main())
    except StartupError as exc:
        fail(str(exc))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except Exception:  # noqa: BLE001
                proc.kill()
    typer.echo("stopped.")


async def _seed_demo(base: str, key: str) -> None:
    """Seed the demo opportunities through the running API and say where they are (or why not)."""
    import httpx

    from app import demo

    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            reached = await demo.seed_opportunities(http, key)
        typer.echo(f"demo opportunities: {', '.join(f'{k} in {v}' for k, v in reached.items())} "
                   f"(board: {base}/console/opportunities)")
    except httpx.HTTPError as exc:
        typer.echo(f"demo opportunities not seeded: {exc}")


def _serve_part(api: bool, worker: bool, host: str | None, port: int | None) -> None:
    from app.runner import StartupError, run_event_loop, serve
    from hub.runtime import Hub

    settings = listening_on(load_settings(), host, port)

    async def main() -> None:
        hub = Hub.from_settings(settings)
        await hub.db.migrate()
        try:
            await serve(hub, api=api, worker=worker, host=settings.api_host, port=settings.api_port)
        finally:
            await hub.close()

    try:
        run_event_loop(main())
    except StartupError as exc:
        fail(str(exc))


@app.command("api")
def api_cmd(host: str = typer.Option(None), port: int = typer.Option(None)) -> None:
    """Run the HTTP API alone (production)."""
    _serve_part(api=True, worker=False, host=host, port=port)


@app.command("worker")
def worker_cmd() -> None:
    """Run the Temporal worker alone (production; scale out by running more)."""
    _serve_part(api=False, worker=True, host=None, port=None)


@app.command("migrate")
def migrate_cmd() -> None:
    """Bring the database schema to the newest version."""
    async def nothing(_db) -> None:  # noqa: ANN001
        return None

    _with_db(nothing)
    typer.echo("schema up to date")


def _with_db(fn):  # noqa: ANN001, ANN202
    """Run ``await fn(db)`` on the configured database and dispose of it."""
    from hub.store import Database

    settings = load_settings()

    async def main():  # noqa: ANN202
        db = Database(settings.resolved_database_url)
        try:
            await db.migrate()
            return await fn(db)
        finally:
            await db.dispose()

    return asyncio.run(main())


@app.command("backup")
def backup_cmd(out: Path = typer.Option(..., "--out", help="file to write (JSON lines)")) -> None:
    """Back up the hub's own data (secrets stay encrypted; keep the vault keys separately)."""
    from hub.backup import backup

    counts = _with_db(lambda db: backup(db, out))
    typer.echo(f"wrote {sum(counts.values())} rows from {len(counts)} tables to {out}")


@app.command("restore")
def restore_cmd(src: Path = typer.Argument(..., exists=True, dir_okay=False, help="a backup file")) -> None:
    """Restore a backup into an empty database (all or nothing)."""
    from hub.backup import RestoreError, restore

    try:
        counts = _with_db(lambda db: restore(db, src))
    except RestoreError as exc:
        fail(str(exc))
    typer.echo(f"restored {sum(counts.values())} rows into {len(counts)} tables")


@app.command("audit")
def audit_cmd(
    org: str = typer.Option(..., help="the org whose audit log to read"),
    resource: str = typer.Option(None, help="e.g. rule/big-deal, connection/c1 (and what is under it)"),
    actor: str = typer.Option(None),
    action: str = typer.Option(None, help="e.g. rule.changed"),
    limit: int = typer.Option(50, min=1, max=1000),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line, as GET /v1/audit answers"),
) -> None:
    """The audit log, newest first: when, who, what, on which resource."""
    from hub.store.orgs import list_audit
    from routes.audit import public

    async def read(db) -> list:  # noqa: ANN001
        async with db.session() as session:
            return [public(e) for e in await list_audit(session, org, resource=resource, actor=actor, action=action,
                                                        limit=limit)]

    for entry in _with_db(read):
        if as_json:
            typer.echo(entry.model_dump_json())
        else:
            typer.echo(f"{entry.at.isoformat()}  {entry.actor:<24} {entry.action:<32} {entry.resource}")


@keys_app.command("create")
def keys_create(
    org: str = typer.Option(..., help="org id"),
    role: str = typer.Option(..., help="admin | crm | viewer"),
    name: str = typer.Option("", help="a label for the key"),
) -> None:
    """Create an API key and print it (it is shown only this once)."""
    from hub.auth import create_key

    async def make(db) -> str:  # noqa: ANN001
        async with db.session() as session:
            return await create_key(session, org, role, name)

    try:
        typer.echo(_with_db(make))
    except ValueError as exc:
        fail(str(exc))


@keys_app.command("list")
def keys_list(org: str = typer.Option(..., help="org id")) -> None:
    """List an org's API keys: id, role, name, created, last used (to the minute), revoked."""
    from hub.auth import list_keys

    async def rows(db) -> list:  # noqa: ANN001
        async with db.sessions() as session:
            return await list_keys(session, org)

    def when(value) -> str:  # noqa: ANN001
        return value.isoformat(timespec="seconds") if value else "-"

    typer.echo("id\trole\tname\tcreated\tlast_used\trevoked")
    for key in _with_db(rows):
        typer.echo("\t".join([key.id, key.role, key.name or "-", when(key.created_at), when(key.last_used_at),
                              when(key.revoked_at)]))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="the key's id (the part after 'fqh_')")) -> None:
    """Revoke an API key: refused (401) from now on; running API processes stop accepting it within
    HUB_API_KEY_CACHE_SECONDS."""
    from hub.auth import revoke_key

    async def revoke(db) -> bool:  # noqa: ANN001
        async with db.session() as session:
            return await revoke_key(session, None, key_id, actor="cli") is not None

    if not _with_db(revoke):
        fail(f"no API key {key_id!r}")
    typer.echo(f"revoked {key_id}")


@orgs_app.command("delete")
def orgs_delete(
    org: str = typer.Argument(..., help="org id"),
    yes: bool = typer.Option(False, "--yes", help="confirm: this cannot be undone"),
) -> None:
    """Delete an org's access and crypto-shred its Temporal data: every API key is revoked and its data keys
    are deleted, so no payload sealed for it (history, /codec) can be read again (running processes drop the
    key from memory within hub.org_keys.CACHE_SECONDS); then its schedules are deleted and its running
    workflows terminated. Run it again if Temporal could not be reached."""
    from temporalio.service import RPCError

    from app.org_removal import check_org_id, stop_org_work
    from hub.auth import list_keys, revoke_key
    from hub.org_keys import OrgKeyring
    from hub.temporal import connect
    from hub.vault import Vault

    if not yes:
        fail("deleting an org cannot be undone: pass --yes")
    try:
        check_org_id(org)
    except ValueError as exc:
        fail(str(exc))
    settings = load_settings()
    vault = Vault.from_settings(settings)

    async def delete(db) -> tuple[int, int]:  # noqa: ANN001
        async with db.session() as session:
            keys = [k for k in await list_keys(session, org) if k.revoked_at is None]
            for key in keys:
                await revoke_key(session, org, key.id, actor="cli")
        return len(keys), await OrgKeyring(db, vault).shred(org)

    revoked, shredded = _with_db(delete)
    typer.echo(f"org {org}: revoked {revoked} API keys, shredded {shredded} data keys")

    async def stop() -> tuple[int, int]:
        return await stop_org_work(await connect(settings, vault), org)

    try:
        schedules, workflows = asyncio.run(stop())
    except (RuntimeError, OSError, RPCError) as exc:  # the client's connection error is a RuntimeError
        fail(f"could not reach Temporal at {settings.temporal_address} to stop org {org}'s workflows ({exc}); "
             "run this again when it is up")
    typer.echo(f"org {org}: deleted {schedules} schedules, terminated {workflows} workflows")


@secrets_app.command("rotate")
def secrets_rotate(
    new_key: bool = typer.Option(False, "--new-key", help="development only: add a new newest key first"),
) -> None:
    """Re-encrypt every stored secret under the newest vault key, online."""
    from hub.store.secrets import rotate_secrets
    from hub.vault import Vault, add_dev_key

    settings = load_settings()
    if new_key:
        if settings.vault_keys is not None:
            fail("--new-key manages the development key file; with HUB_VAULT_KEYS, append the key there")
        typer.echo(f"added key {add_dev_key(settings.data_dir)}")
    vault = Vault.from_settings(settings)
    done = _with_db(lambda db: rotate_secrets(db.sessions, vault))
    typer.echo(f"re-encrypted {done} secrets under key {vault.current_key_id}")
