"""``fulqrun-hub rules …`` end to end on a temporary SQLite hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from hub.settings import get_settings
from rules.defaults import EXAMPLES_DIR, PEAK_PIPELINE

GOOD_RULE = """\
apiVersion: fulqrun.io/v1
kind: Rule
metadata: {name: score-leads}
spec:
  on: lead.created
  do: [{ai.score_lead: {}}]
"""


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for var in ("HUB_VAULT_KEYS", "HUB_DATABASE_URL", "HUB_ENV"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HUB_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield CliRunner()
    get_settings.cache_clear()


def test_validate_ok_and_every_error(cli: CliRunner, tmp_path: Path) -> None:
    ok = cli.invoke(app, ["rules", "validate", str(PEAK_PIPELINE), str(EXAMPLES_DIR)])
    assert ok.exit_code == 0 and ok.stdout.startswith("ok: 15 resource(s) in 6 file(s)")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        GOOD_RULE.replace("lead.created", "lead.craeted")
        + "---\n"
        + GOOD_RULE.replace("score-leads", "x").replace("ai.score_lead", "ai.nope")
    )
    result = cli.invoke(app, ["rules", "validate", str(bad), str(PEAK_PIPELINE)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{bad}:5:7: spec.on: unknown trigger 'lead.craeted' (did you mean 'lead.created'?)",
        f"{bad}:13:9: spec.do[0][\"ai.nope\"]: unknown action 'ai.nope'; known: "
        + result.stderr.split("known: ")[1].splitlines()[0],
        "2 error(s) in 1 of 2 file(s)",
    ]


def test_apply_is_all_or_nothing_per_file(cli: CliRunner, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD_RULE)
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(
        GOOD_RULE.replace("score-leads", "first-ok")
        + "---\n"
        + PEAK_PIPELINE.read_text()
        + "---\n"
        + PEAK_PIPELINE.read_text().replace("name: peak\n", "name: peak-twin\n")
    )
    result = cli.invoke(app, ["rules", "apply", str(good), str(mixed), "--org", "acme"])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["created Rule/score-leads v1 (org acme)"]
    assert "ties with pipeline 'peak'" in result.stderr and f"{mixed}: not applied" in result.stderr
    listed = cli.invoke(app, ["rules", "list", "--org", "acme"])
    assert [line.split()[1] for line in listed.stdout.splitlines()] == [
        "score-leads"
    ]  # nothing from mixed.yaml


def test_apply_dry_run_then_apply_then_unchanged(cli: CliRunner) -> None:
    dry = cli.invoke(app, ["rules", "apply", str(PEAK_PIPELINE), "--org", "acme", "--dry-run"])
    assert dry.exit_code == 0 and dry.stdout.strip() == "(dry run) created Pipeline/peak v1 (org acme)"
    assert cli.invoke(app, ["rules", "list", "--org", "acme"]).stdout == ""
    first = cli.invoke(app, ["rules", "apply", str(PEAK_PIPELINE), str(EXAMPLES_DIR), "--org", "acme"])
    assert first.exit_code == 0 and first.stdout.count("created ") == 15
    again = cli.invoke(app, ["rules", "apply", str(PEAK_PIPELINE), "--org", "acme"])
    assert again.stdout.strip() == "unchanged Pipeline/peak v1 (org acme)"


def test_apply_needs_an_org(cli: CliRunner) -> None:
    result = cli.invoke(app, ["rules", "apply", str(PEAK_PIPELINE)])
    assert result.exit_code == 1 and "metadata.org: no org; pass --org or set metadata.org" in result.stderr


def test_export_round_trips_unchanged(cli: CliRunner, tmp_path: Path) -> None:
    assert cli.invoke(app, ["rules", "apply", str(EXAMPLES_DIR), "--org", "acme"]).exit_code == 0
    out = tmp_path / "export"
    exported = cli.invoke(app, ["rules", "export", "--org", "acme", "--out", str(out)])
    assert exported.exit_code == 0 and len(list(out.glob("*.yaml"))) == 14
    stdout = cli.invoke(app, ["rules", "export", "--org", "acme", "--kind", "pipeline"]).stdout
    assert stdout.count("kind: Pipeline") == 1
    again = cli.invoke(app, ["rules", "apply", str(out), "--org", "acme"])
    lines = again.stdout.splitlines()
    assert again.exit_code == 0 and len(lines) == 14 and all(line.startswith("unchanged ") for line in lines)


def test_dry_run_test_command(cli: CliRunner, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps(
            {
                "event": {
                    "type": "lead.created",
                    "lead": {"company": "Initech", "employees": 5000, "email": "cto@initech.example"},
                }
            }
        )
    )
    result = cli.invoke(app, ["rules", "test", str(EXAMPLES_DIR), "--event", str(event)])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert (
        "FIRES enterprise-lead-alert: condition true: `has(lead.employees) && lead.employees >= 1000`"
        in lines
    )
    assert (
        '    slack.post_message {"channel": "#enterprise-leads", "text": "New enterprise lead: Initech '
        '(cto@initech.example)"}  (runs for the org)' in lines
    )
    assert (
        "skips big-deal-to-acquire: trigger mismatch: rule runs on 'stage.entered', event is 'lead.created'"
        in lines
    )
    assert lines[-1] == "2 of 13 rule(s) fire for lead.created"
    as_json = json.loads(
        cli.invoke(app, ["rules", "test", str(EXAMPLES_DIR), "--event", str(event), "--json"]).stdout
    )
    assert {o["rule"] for o in as_json if o["fired"]} == {"enterprise-lead-alert", "score-new-leads"}
    event.write_text("{}")
    bad = cli.invoke(app, ["rules", "test", str(EXAMPLES_DIR), "--event", str(event)])
    assert bad.exit_code == 1 and "must be a JSON object with a 'type'" in bad.stderr


def test_schema_command(cli: CliRunner, tmp_path: Path) -> None:
    written = cli.invoke(app, ["rules", "schema", "--out", str(tmp_path)])
    assert written.exit_code == 0
    assert json.loads((tmp_path / "pipeline.schema.json").read_text())["title"] == "Pipeline"
    one = json.loads(cli.invoke(app, ["rules", "schema", "--kind", "rule"]).stdout)
    assert "lead.created" in one["$defs"]["RuleSpec"]["properties"]["on"]["enum"]
