"""Finding 8: files under the data dir are readable by their owner only — the database and its WAL,
Temporal's database, backups — even when the process umask would let others read them."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import text

from app.runner import start_temporal_dev_server
from hub.backup import backup
from hub.runtime import Hub
from hub.settings import Settings


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # what a shell usually has: new files world-readable
    try:
        yield
    finally:
        os.umask(previous)


def _modes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): stat.S_IMODE(p.stat().st_mode) for p in directory.rglob("*")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_database_wal_backup_and_existing_files_are_owner_only(
    tmp_path: Path, vault_keys: str, loose_umask: None
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / "old-export.csv").write_text("left by an earlier version")
    os.chmod(data_dir / "old-export.csv", 0o644)
    hub = Hub.from_settings(Settings(data_dir=data_dir, vault_keys=vault_keys))
    try:
        await hub.db.migrate()
        async with hub.db.session() as s:
            await s.execute(text("INSERT INTO orgs (id, name, flags, created_at) VALUES ('a', 'A', '{}', '2026-01-01')"))
        assert {"hub.db", "hub.db-wal", "hub.db-shm"} <= set(_modes(data_dir))
        out = tmp_path / "backup.jsonl"
        await backup(hub.db, out)
    finally:
        await hub.close()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert {name: mode for name, mode in _modes(data_dir).items() if mode != 0o600} == {}
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_temporals_database_is_owner_only_and_in_wal_mode(tmp_path: Path, loose_umask: None) -> None:
    settings = Settings(data_dir=tmp_path / "data", temporal_ui_port=_free_port())
    proc = start_temporal_dev_server(settings, _free_port())
    wal = settings.data_dir / "temporal.db-wal"
    try:
        deadline = time.monotonic() + 60
        while not wal.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # let it create the rest of its files too
        modes = _modes(settings.data_dir)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with closing(sqlite3.connect(settings.data_dir / "temporal.db")) as db:  # the embedded server's store: WAL mode
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert {"temporal.db", "temporal.db-wal", "temporal.log"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o600} == {}
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
