"""``fulqrun-hub ai …``: train, score (one output row per input row), evaluate, register for an org."""

from __future__ import annotations

import asyncio
import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ai.artifacts import load
from app.cli import app
from hub.settings import get_settings
from hub.store import Database
from hub.store.ai import active_model_row
from tests.ai.synthetic import DEAL_HEADER, LEAD_HEADER, PRODUCTS_CSV, deal_rows, lead_rows, to_csv

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HUB_VAULT_KEYS", "HUB_DATABASE_URL", "HUB_ENV"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HUB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HUB_SHARED_DATA", str(tmp_path / "no-shared-data"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["ai", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_and_score_leads(cli_env: Path) -> None:
    train, score = cli_env / "train.csv", cli_env / "new.csv"
    train.write_bytes(to_csv(lead_rows(300), LEAD_HEADER))
    new = lead_rows(25, seed=8)
    new[3]["Prospect ID"] = ""
    score.write_bytes(to_csv(new, LEAD_HEADER))
    out = invoke("train-leads", "--csv", str(train), "--out", str(cli_env / "leads.joblib"))
    model = load(cli_env / "leads.joblib", kind="leads")
    assert out.startswith(f"{model.version}: 300 leads, out-of-fold AUC ")
    invoke("score-leads", "--model", str(cli_env / "leads.joblib"), "--csv", str(score), "--out",
           str(cli_env / "s.csv"))
    rows = read(cli_env / "s.csv")
    assert list(rows[0]) == ["id", "score", "low", "high", "factors"]
    assert [r["id"] for r in rows] == [r["Prospect ID"] or "4" for r in new]
    assert all(0 <= float(r["low"]) <= float(r["score"]) <= float(r["high"]) <= 100 for r in rows)
    assert all(" the score by " in r["factors"] for r in rows)


def test_bad_inputs_are_one_line_errors(cli_env: Path) -> None:
    train = cli_env / "train.csv"
    train.write_bytes(to_csv(lead_rows(300), LEAD_HEADER))
    (cli_env / "m.json").write_text('{"features": ["Tags"]}')
    bad = runner.invoke(app, ["ai", "train-leads", "--csv", str(train), "--out", str(cli_env / "x"),
                              "--mapping", str(cli_env / "m.json")])
    assert bad.exit_code == 1 and bad.stderr.strip() == "error: leakage columns can never be features: Tags"
    (cli_env / "junk.joblib").write_bytes(b"not a model")
    junk = runner.invoke(app, ["ai", "score-leads", "--model", str(cli_env / "junk.joblib"), "--csv", str(train),
                               "--out", str(cli_env / "s.csv")])
    assert junk.exit_code == 1 and "not a model file" in junk.stderr


def test_train_and_score_deals_and_register_for_an_org(cli_env: Path) -> None:
    (cli_env / "products.csv").write_bytes(PRODUCTS_CSV)
    pipeline = cli_env / "sales_pipeline.csv"
    rows = deal_rows(400)
    pipeline.write_bytes(to_csv(rows, DEAL_HEADER, trailing_comma=False))
    out = invoke("train-deals", "--csv", str(pipeline), "--out", str(cli_env / "deals.joblib"), "--org", "acme")
    model = load(cli_env / "deals.joblib", kind="deals")
    assert f"active {model.version} for org acme" in out
    invoke("score-deals", "--model", str(cli_env / "deals.joblib"), "--csv", str(pipeline), "--out",
           str(cli_env / "d.csv"), "--as-of", "2017-12-31")
    scored = read(cli_env / "d.csv")
    assert [r["id"] for r in scored] == [r["opportunity_id"] for r in rows]
    assert list(scored[0]) == ["id", "stage", "risk", "win_probability", "factors"]
    assert all(abs(float(r["risk"]) - 100 * (1 - float(r["win_probability"]))) < 0.06 for r in scored)

    async def active() -> str | None:
        db = Database(get_settings().resolved_database_url)
        try:
            async with db.session() as session:
                row = await active_model_row(session, "acme", "deals")
                return row.version if row else None
        finally:
            await db.dispose()

    assert asyncio.run(active()) == model.version


def test_evaluate_prints_both_reports(cli_env: Path) -> None:
    (cli_env / "leads.csv").write_bytes(to_csv(lead_rows(500), LEAD_HEADER))
    (cli_env / "deals.csv").write_bytes(to_csv(deal_rows(400), DEAL_HEADER))
    out = invoke("evaluate", "--leads", str(cli_env / "leads.csv"), "--deals", str(cli_env / "deals.csv"),
                 "--folds", "3", "--seeds", "1")
    assert "leads: 500 rows, stratified 3-fold CV" in out and "deciles holding:" in out
    assert "leads by moment (stratified 3-fold CV, 1 fold seeds" in out
    assert "\n  creation " in out and "\n  engagement " in out and "\n  contact " not in out  # no contact columns
    assert "deals: time-ordered split, train 288 deals" in out and "snapshots" in out
    assert "forecast backtest" in out and "MAPE forecast" in out
    nothing = runner.invoke(app, ["ai", "evaluate"])
    assert nothing.exit_code == 1 and "no data" in nothing.stderr
