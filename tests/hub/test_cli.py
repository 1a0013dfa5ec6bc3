"""The foundation's CLI commands: keys create, secrets rotate, backup/restore, clear config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app, listening_on
from hub.settings import Settings, get_settings
from routes.connections import redirect_uri


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HUB_VAULT_KEYS", "HUB_DATABASE_URL", "HUB_ENV"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HUB_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_keys_create_prints_a_key_once_and_rejects_bad_roles(cli_env: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["keys", "create", "--org", "acme", "--role", "crm"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("fqh_")
    bad = runner.invoke(app, ["keys", "create", "--org", "acme", "--role", "root"])
    assert bad.exit_code == 1 and "role must be one of admin, crm, viewer" in bad.stderr


def test_rotate_backup_and_restore_from_the_cli(cli_env: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "create", "--org", "acme", "--role", "admin"]).exit_code == 0
    rotated = runner.invoke(app, ["secrets", "rotate", "--new-key"])
    assert rotated.exit_code == 0 and "re-encrypted 0 secrets under key" in rotated.stdout
    out = cli_env / "b.jsonl"
    assert runner.invoke(app, ["backup", "--out", str(out)]).exit_code == 0
    refused = runner.invoke(app, ["restore", str(out)])
    assert refused.exit_code == 1 and "not empty" in refused.stderr


def test_production_without_keys_is_a_one_line_config_error(cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_ENV", "production")
    result = CliRunner().invoke(app, ["migrate"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: invalid configuration: HUB_VAULT_KEYS is required when HUB_ENV=production"


def test_the_port_given_to_run_is_the_port_in_every_url_the_hub_builds(settings: Settings) -> None:
    local = listening_on(settings.model_copy(update={"public_url": None}), None, 18710)
    assert local.base_url == "http://127.0.0.1:18710"
    assert local.webhook_url("stripe", "con_1") == "http://127.0.0.1:18710/webhooks/stripe/con_1"
    assert redirect_uri(local, "slack") == "http://127.0.0.1:18710/oauth/slack/callback"
    public = listening_on(settings.model_copy(update={"public_url": "https://hub.example.com/"}), "0.0.0.0", 18710)
    assert public.webhook_url("stripe", "con_1") == "https://hub.example.com/webhooks/stripe/con_1"
    assert redirect_uri(public, "slack") == "https://hub.example.com/oauth/slack/callback"
