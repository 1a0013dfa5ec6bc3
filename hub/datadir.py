"""The data dir belongs to its owner alone: the directory is 0700 and every file under it 0600 (the
database and its WAL, Temporal's database, keys, CA bundles, model caches, logs); backups are 0600 too.

``make_private`` creates the data dir or tightens an existing one at startup; the CLI runs with umask
``PRIVATE_UMASK`` (also for the Temporal dev server it starts), so what is created later is private too;
an SQLite database file is created 0600 before SQLite opens it, and SQLite gives its ``-wal``/``-shm``
files the database file's mode.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077


def make_private(data_dir: Path) -> Path:
    """Create ``data_dir`` (0700), or make it and everything under it owner-only; returns it."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    for path in data_dir.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o700 if path.is_dir() else 0o600)
    return data_dir


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist, else make it 0600; returns it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        path.chmod(0o600)
    return path
