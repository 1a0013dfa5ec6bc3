"""Alembic as people use it: the migrated schema is what the models say, and the ``alembic`` CLI works from
the project root (history, upgrade, downgrade, check, revision --autogenerate)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import hub.store.models  # noqa: F401  (every table on Base.metadata)
from hub.store import MIGRATIONS_DIR, Database
from hub.store.base import Base

ROOT = Path(__file__).resolve().parents[2]


async def test_the_migrated_schema_matches_the_models(db: Database) -> None:
    def differences(conn) -> list:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)

    async with db.engine.connect() as conn:
        assert await conn.run_sync(differences) == []


def test_one_head() -> None:
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    assert len(script.get_heads()) == 1


def alembic(*args: str, cwd: Path = ROOT, ini: Path | None = None) -> subprocess.CompletedProcess:
    """Run the alembic CLI as a developer would, from ``cwd``."""
    cmd = [sys.executable, "-m", "alembic", *(["-c", str(ini)] if ini else []), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_cli_upgrades_checks_and_downgrades(tmp_path: Path) -> None:
    url = f"url=sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    head = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()

    history = alembic("history")
    assert history.returncode == 0, history.stderr
    assert f"-> {head} (head)" in history.stdout

    assert alembic("-x", url, "upgrade", "head").returncode == 0
    current = alembic("-x", url, "current")
    assert f"{head} (head)" in current.stdout, current.stderr
    check = alembic("-x", url, "check")
    assert check.returncode == 0, check.stdout + check.stderr  # autogenerate finds nothing to add

    down = alembic("-x", url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert alembic("-x", url, "current").stdout.strip() == ""
    assert alembic("-x", url, "upgrade", "head").returncode == 0
    assert f"{head} (head)" in alembic("-x", url, "current").stdout


def test_revision_autogenerate_writes_an_empty_migration_on_an_up_to_date_schema(tmp_path: Path) -> None:
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    ini = tmp_path / "alembic.ini"
    ini.write_text((ROOT / "alembic.ini").read_text().replace("%(here)s/hub/migrations", str(scripts))
                   .replace("prepend_sys_path = .", f"prepend_sys_path = {ROOT}"))
    url = f"url=sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    assert alembic("-x", url, "upgrade", "head", ini=ini, cwd=tmp_path).returncode == 0

    made = alembic("-x", url, "revision", "--autogenerate", "-m", "probe", ini=ini, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    [new] = [p for p in (scripts / "versions").glob("*probe.py")]
    head = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()
    body = new.read_text()
    assert f"Revises: {head}" in body
    upgrade = body.split("def upgrade() -> None:", 1)[1].split("def downgrade", 1)[0]
    assert [line.strip() for line in upgrade.splitlines() if line.strip() and not line.strip().startswith("#")] == [
        "pass"
    ]
