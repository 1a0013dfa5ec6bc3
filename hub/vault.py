"""Secrets at rest and in Temporal payloads: AES-256-GCM under named, rotatable keys.

A ciphertext is ``fqv1.<key_id>.<base64url(nonce || ciphertext+tag)>``, so it names the key that
sealed it; several keys can be active at once and the newest (last listed) seals new data. Temporal
payloads of an org's workflows are sealed under that org's data key instead (``hub.org_keys``,
wrapped by these keys), see ``EncryptionCodec``.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec, SerializationContext, WithSerializationContext

from hub.settings import Settings

PREFIX = "fqv1"
KEY_FILE = "vault-keys"
PAYLOAD_ENCODING = b"binary/encrypted"
KEY_METADATA = "encryption-key-id"
ORG_METADATA = "encryption-org"


class VaultError(Exception):
    """A ciphertext that cannot be opened: unknown key, tampered or malformed."""


def new_key_line(key_id: str | None = None) -> str:
    """A fresh ``key_id:base64url-key`` entry."""
    kid = key_id or f"k{secrets.token_hex(4)}"
    return f"{kid}:{base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


def parse_keys(spec: str) -> dict[str, bytes]:
    """Parse ``id:key,id:key`` (newest last) into an ordered mapping, naming the bad entry on error."""
    keys: dict[str, bytes] = {}
    for n, entry in enumerate(e.strip() for e in spec.replace("\n", ",").split(",")):
        if not entry:
            continue
        kid, sep, b64 = entry.partition(":")
        if not sep or not kid or "." in kid:
            raise ValueError(f"vault key #{n + 1} must look like 'key_id:base64url-key'")
        try:
            raw = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        except ValueError as exc:
            raise ValueError(f"vault key {kid!r} is not base64url") from exc
        if len(raw) != 32:
            raise ValueError(f"vault key {kid!r} must be 32 bytes, got {len(raw)}")
        keys[kid] = raw
    if not keys:
        raise ValueError("no vault keys configured")
    return keys


class Vault:
    """Encrypts and decrypts strings and bytes; the newest key seals, any known key opens."""

    def __init__(self, keys: dict[str, bytes]) -> None:
        if not keys:
            raise ValueError("a vault needs at least one key")
        self._keys = {kid: AESGCM(raw) for kid, raw in keys.items()}
        self.key_ids: Sequence[str] = list(keys)

    @property
    def current_key_id(self) -> str:
        """The key new ciphertexts are sealed with."""
        return self.key_ids[-1]

    def seal(self, plaintext: bytes, context: bytes = b"") -> tuple[str, bytes]:
        """Encrypt bytes; returns the key id used and ``nonce || ciphertext``."""
        nonce = os.urandom(12)
        kid = self.current_key_id
        return kid, nonce + self._keys[kid].encrypt(nonce, plaintext, context or None)

    def unseal(self, key_id: str, blob: bytes, context: bytes = b"") -> bytes:
        """Decrypt what ``seal`` produced."""
        aead = self._keys.get(key_id)
        if aead is None:
            raise VaultError(f"ciphertext sealed with unknown key {key_id!r}")
        try:
            return aead.decrypt(blob[:12], blob[12:], context or None)
        except InvalidTag as exc:
            raise VaultError("ciphertext failed authentication") from exc

    def encrypt(self, plaintext: str, context: str = "") -> str:
        """Encrypt a string into a self-describing token."""
        kid, blob = self.seal(plaintext.encode(), context.encode())
        return f"{PREFIX}.{kid}.{base64.urlsafe_b64encode(blob).decode()}"

    def decrypt(self, token: str, context: str = "") -> str:
        """Decrypt a token made by ``encrypt``."""
        try:
            prefix, kid, b64 = token.split(".", 2)
        except ValueError as exc:
            raise VaultError("not a vault ciphertext") from exc
        if prefix != PREFIX:
            raise VaultError("not a vault ciphertext")
        return self.unseal(kid, base64.urlsafe_b64decode(b64), context.encode()).decode()

    @staticmethod
    def key_id_of(token: str) -> str:
        """The key id a token names."""
        return token.split(".", 2)[1]

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        """Keys from ``HUB_VAULT_KEYS``; in development, from (or into) ``$HUB_DATA_DIR/vault-keys``."""
        if settings.vault_keys is not None and settings.vault_keys.get_secret_value().strip():
            return cls(parse_keys(settings.vault_keys.get_secret_value()))
        return cls(parse_keys(ensure_dev_key_file(settings.data_dir).read_text()))


def ensure_dev_key_file(data_dir: Path) -> Path:
    """Create the development key file (mode 0600) with one key if it does not exist."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_key_line("k1") + "\n")
    return path


def add_dev_key(data_dir: Path) -> str:
    """Append a new newest key to the development key file; returns its id."""
    path = ensure_dev_key_file(data_dir)
    line = new_key_line()
    with path.open("a") as fh:
        fh.write(line + "\n")
    return line.split(":", 1)[0]


class DataKeys(Protocol):
    """Per-org data keys (``hub.org_keys.OrgKeyring``)."""

    async def sealing_key(self, org_id: str) -> tuple[str, AESGCM]:
        """(key id, key) to seal the org's new payloads with."""

    async def opening_key(self, org_id: str, key_id: str) -> AESGCM | None:
        """The named key, or None if it is gone (shredded)."""

    async def org_of(self, workflow_id: str | None) -> str | None:
        """The org a workflow id belongs to, if any."""


class EncryptionCodec(PayloadCodec, WithSerializationContext):
    """Temporal payload codec: every workflow/activity payload is sealed.

    With ``keys``, a payload of an org's workflow (known from the serialization context's workflow id, or
    ``org`` given) is sealed under that org's data key, its metadata naming the org (``encryption-org``,
    bound to the ciphertext as associated data) and the key; other payloads, and every payload without
    ``keys``, are sealed by the vault's newest key as before. Decoding reads the metadata, so payloads of
    either kind, from any history, open wherever their key is known.
    """

    def __init__(self, vault: Vault, keys: DataKeys | None = None, *, workflow_id: str | None = None,
                 org: str | None = None) -> None:
        self.vault = vault
        self.keys = keys
        self.workflow_id = workflow_id
        self.org = org

    def with_context(self, context: SerializationContext) -> EncryptionCodec:
        """A copy that knows which workflow its payloads belong to."""
        workflow_id = getattr(context, "workflow_id", None)
        if self.keys is None or self.org is not None or workflow_id == self.workflow_id:
            return self
        return EncryptionCodec(self.vault, self.keys, workflow_id=workflow_id)

    async def encode(self, payloads: Iterable[Payload]) -> list[Payload]:
        org = self.org or (await self.keys.org_of(self.workflow_id) if self.keys is not None else None)
        if org is not None and self.keys is not None:
            key_id, aead = await self.keys.sealing_key(org)
            out = []
            for p in payloads:
                nonce = os.urandom(12)
                out.append(Payload(
                    metadata={"encoding": PAYLOAD_ENCODING, KEY_METADATA: key_id.encode(), ORG_METADATA: org.encode()},
                    data=nonce + aead.encrypt(nonce, p.SerializeToString(), org.encode()),
                ))
            return out
        out = []
        for p in payloads:
            kid, blob = self.vault.seal(p.SerializeToString())
            out.append(Payload(metadata={"encoding": PAYLOAD_ENCODING, KEY_METADATA: kid.encode()}, data=blob))
        return out

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [await self._open(p) for p in payloads]

    async def decode_for(self, org_id: str, payloads: Iterable[Payload]) -> list[Payload]:
        """Decode only the payloads sealed for ``org_id`` (whose key is not shredded); every other payload is
        returned as it came."""
        out = []
        for p in payloads:
            try:
                out.append(await self._open(p) if p.metadata.get(ORG_METADATA, b"").decode() == org_id else p)
            except VaultError:
                out.append(p)
        return out

    async def _open(self, p: Payload) -> Payload:
        if p.metadata.get("encoding", b"") != PAYLOAD_ENCODING:
            return p
        key_id = p.metadata[KEY_METADATA].decode()
        org = p.metadata.get(ORG_METADATA, b"").decode()
        if not org:
            return Payload.FromString(self.vault.unseal(key_id, p.data))
        if self.keys is None:
            raise VaultError(f"payload sealed with org {org!r}'s data key: this converter has no org keys")
        aead = await self.keys.opening_key(org, key_id)
        if aead is None:
            raise VaultError(f"payload sealed with org {org!r}'s data key {key_id!r}, which is unknown or shredded")
        try:
            return Payload.FromString(aead.decrypt(p.data[:12], p.data[12:], org.encode()))
        except InvalidTag as exc:
            raise VaultError("payload failed authentication") from exc
