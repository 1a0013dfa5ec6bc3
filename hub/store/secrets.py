"""Encrypted secrets in the database: written and read only through the vault."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String, Text, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.base import Base, utcnow
from hub.vault import Vault


class Secret(Base):
    """One encrypted secret (token, client secret, signing secret) owned by something in an org."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("owner", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(String(64), index=True)
    owner: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(100))
    ciphertext: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(64), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


async def put_secret(session: AsyncSession, vault: Vault, org_id: str, owner: str, name: str, value: str) -> None:
    """Store (or replace) a secret, encrypted and bound to its owner and name."""
    token = vault.encrypt(value, context=f"{owner}/{name}")
    row = await session.scalar(select(Secret).where(Secret.owner == owner, Secret.name == name))
    if row is None:
        session.add(Secret(org_id=org_id, owner=owner, name=name, ciphertext=token, key_id=vault.key_id_of(token)))
    else:
        row.ciphertext, row.key_id = token, vault.key_id_of(token)


async def get_secret(session: AsyncSession, vault: Vault, owner: str, name: str) -> str | None:
    """Decrypt one secret, or None if it is not stored."""
    row = await session.scalar(select(Secret).where(Secret.owner == owner, Secret.name == name))
    return None if row is None else vault.decrypt(row.ciphertext, context=f"{owner}/{name}")


async def delete_secrets(session: AsyncSession, owner: str) -> None:
    """Forget every secret of one owner."""
    for row in await session.scalars(select(Secret).where(Secret.owner == owner)):
        await session.delete(row)


async def rotate_secrets(sessions, vault: Vault, batch: int = 200) -> int:  # noqa: ANN001
    """Re-encrypt every secret not under the newest key, a batch per transaction, while serving."""
    done = 0
    while True:
        async with sessions() as session, session.begin():
            rows = (
                await session.scalars(
                    select(Secret).where(Secret.key_id != vault.current_key_id).limit(batch).with_for_update()
                )
            ).all()
            for row in rows:
                ctx = f"{row.owner}/{row.name}"
                token = vault.encrypt(vault.decrypt(row.ciphertext, context=ctx), context=ctx)
                row.ciphertext, row.key_id = token, vault.key_id_of(token)
        done += len(rows)
        if len(rows) < batch:
            return done
