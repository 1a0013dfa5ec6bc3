"""Backup and restore of the hub's own data, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from hub.auth import authenticate, create_key
from hub.backup import RestoreError, backup, restore
from hub.store import Database
from hub.store.orgs import AuditEntry
from hub.store.secrets import get_secret, put_secret
from hub.vault import Vault, new_key_line, parse_keys
from tests.conftest import POSTGRES_URL, _drop_postgres, _postgres_db


async def test_backup_then_restore_into_an_empty_database(db: Database, tmp_path: Path) -> None:
    vault = Vault(parse_keys(new_key_line("b1")))
    async with db.session() as s:
        key = await create_key(s, "acme", "admin")
        await put_secret(s, vault, "acme", "connection:c1", "api_key", "sk_live_x")
    path = tmp_path / "hub.backup.jsonl"
    counts = await backup(db, path)
    assert counts["orgs"] == 1 and counts["secrets"] == 1 and counts["audit_log"] == 1
    assert "sk_live_x" not in path.read_text()

    target = await _postgres_db() if (POSTGRES_URL and not db.is_sqlite) else Database(
        f"sqlite+aiosqlite:///{tmp_path / 'restored.db'}"
    )
    await target.migrate()
    try:
        assert (await restore(target, path))["api_keys"] == 1
        async with target.session() as s:
            assert (await authenticate(s, key)).org_id == "acme"
            assert await get_secret(s, vault, "connection:c1", "api_key") == "sk_live_x"
            await create_key(s, "acme", "viewer")  # sequences continue after restored ids
            assert await s.scalar(select(func.count()).select_from(AuditEntry)) == 2
        with pytest.raises(RestoreError, match="not empty"):
            await restore(target, path)
    finally:
        if target.is_sqlite:
            await target.dispose()
        else:
            await _drop_postgres(target)


async def test_restore_refuses_a_foreign_file(db: Database, tmp_path: Path) -> None:
    bogus = tmp_path / "x.jsonl"
    bogus.write_text('{"format": "something-else"}\n')
    with pytest.raises(RestoreError, match="is not a fulqrun-hub-backup/1 file"):
        await restore(db, bogus)
