"""The vault: named keys, rotation, tamper detection, and settings that refuse placeholder keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from hub.settings import Settings
from hub.store import Database
from hub.store.secrets import Secret, get_secret, put_secret, rotate_secrets
from hub.vault import Vault, VaultError, add_dev_key, new_key_line, parse_keys


def test_ciphertext_names_its_key_and_any_active_key_opens() -> None:
    old = new_key_line("old")
    v1 = Vault(parse_keys(old))
    token = v1.encrypt("s3cret", context="connection:c1/api_key")
    assert token.startswith("fqv1.old.") and "s3cret" not in token
    v2 = Vault(parse_keys(f"{old},{new_key_line('new')}"))
    assert v2.current_key_id == "new"
    assert v2.decrypt(token, context="connection:c1/api_key") == "s3cret"
    assert Vault.key_id_of(v2.encrypt("x")) == "new"


def test_tampering_wrong_context_and_unknown_key_fail() -> None:
    vault = Vault(parse_keys(new_key_line("a")))
    token = vault.encrypt("value", context="owner/name")
    with pytest.raises(VaultError, match="authentication"):
        vault.decrypt(token, context="other/name")
    body = token.rsplit(".", 1)
    flipped = body[0] + "." + ("A" if body[1][5] != "A" else "B").join([body[1][:5], body[1][6:]])
    with pytest.raises(VaultError):
        vault.decrypt(flipped, context="owner/name")
    with pytest.raises(VaultError, match="unknown key"):
        Vault(parse_keys(new_key_line("b"))).decrypt(token, context="owner/name")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("", "no vault keys"), ("nokey", "key_id:base64url"), ("k1:AAAA", "32 bytes"), ("k.1:AAAA", "key_id")],
)
def test_bad_key_specs_are_named(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_keys(spec)


def test_production_refuses_missing_or_placeholder_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_ENV", "production")
    monkeypatch.setenv("HUB_DATABASE_URL", "postgresql+psycopg://db/hub")
    monkeypatch.delenv("HUB_VAULT_KEYS", raising=False)
    with pytest.raises(ValidationError, match="HUB_VAULT_KEYS is required"):
        Settings(_env_file=None)
    monkeypatch.setenv("HUB_VAULT_KEYS", "k1:change-me")
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(_env_file=None)
    monkeypatch.setenv("HUB_VAULT_KEYS", new_key_line("k1"))
    assert Settings(_env_file=None).env == "production"


async def test_rotation_reencrypts_every_secret_under_newest_key(db: Database, tmp_path) -> None:
    data_dir = tmp_path / "vault"
    vault = Vault.from_settings(Settings(data_dir=data_dir))
    assert (data_dir / "vault-keys").stat().st_mode & 0o777 == 0o600
    async with db.session() as s:
        for i in range(5):
            await put_secret(s, vault, "acme", f"connection:c{i}", "api_key", f"value-{i}")
    add_dev_key(data_dir)
    rotated = Vault.from_settings(Settings(data_dir=data_dir))
    assert rotated.current_key_id != vault.current_key_id
    assert await rotate_secrets(db.sessions, rotated, batch=2) == 5
    async with db.session() as s:
        key_ids = set((await s.scalars(select(Secret.key_id))).all())
        assert key_ids == {rotated.current_key_id}
        assert await get_secret(s, rotated, "connection:c3", "api_key") == "value-3"
    assert await rotate_secrets(db.sessions, rotated) == 0


class _OneOrgKeys:
    """Data keys of one org whose workflow ids start with ``opportunity/acme/``."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.key = AESGCM(AESGCM.generate_key(bit_length=256))

    async def sealing_key(self, org_id: str):
        return "k1", self.key

    async def opening_key(self, org_id: str, key_id: str):
        return self.key if (org_id, key_id) == ("acme", "k1") else None

    async def org_of(self, workflow_id: str | None) -> str | None:
        return "acme" if (workflow_id or "").startswith("opportunity/acme/") else None


async def test_converter_in_a_workflows_context_seals_for_its_org_and_reuses_its_converters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker asks for the converter in each activity's context: the copy's codec seals for the workflow's org,
    while the payload and failure converters (and their caches) are the same objects, none built on the way."""
    from temporalio.converter import ActivitySerializationContext, WorkflowSerializationContext

    from hub.temporal import data_converter
    from hub.vault import ORG_METADATA

    converter = data_converter(Vault(parse_keys(new_key_line("a"))), _OneOrgKeys())
    built = []
    original_init = converter.payload_converter_class.__init__
    monkeypatch.setattr(converter.payload_converter_class, "__init__",
                        lambda self, *a, **k: built.append(self) or original_init(self, *a, **k))
    context = ActivitySerializationContext(namespace="default", workflow_id="opportunity/acme/o1",
                                           workflow_type="OpportunityWorkflow", activity_type="opportunity.prepare",
                                           activity_id="1", activity_task_queue="hub", is_local=False)
    scoped = converter.with_context(context)
    assert scoped is not converter and type(scoped) is type(converter)
    assert scoped.payload_converter is converter.payload_converter
    assert scoped.failure_converter is converter.failure_converter
    assert scoped.with_context(context) is scoped  # the same workflow: nothing to change
    assert built == []
    [sealed] = await scoped.encode([{"stage": "s1"}])
    assert sealed.metadata[ORG_METADATA] == b"acme"
    assert await converter.decode([sealed], [dict]) == [{"stage": "s1"}]
    [plain] = await converter.with_context(WorkflowSerializationContext(namespace="default", workflow_id="other")).encode(["x"])
    assert ORG_METADATA not in plain.metadata  # no org: sealed by the vault
