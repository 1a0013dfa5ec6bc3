"""``fulqrun-hub ai …``: train, score and evaluate the lead and deal models offline.

Heavy imports (scikit-learn) happen inside the commands, so the rest of the CLI starts fast.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import typer

ai_app = typer.Typer(help="AI models: lead scoring, deal risk; train, score, evaluate.", no_args_is_help=True)

CsvOpt = typer.Option(..., "--csv", exists=True, dir_okay=False, help="input CSV (plain or gzip)")
ModelOpt = typer.Option(..., "--model", exists=True, dir_okay=False, help="a model file written by train-*")
MappingOpt = typer.Option(None, "--mapping", exists=True, dir_okay=False, help="column mapping (JSON file)")
OrgOpt = typer.Option(None, "--org", help="also make it this org's active model in the hub database")
OutModelOpt = typer.Option(..., "--out", help="model file to write")


def _mapping(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{path}: the mapping must be a JSON object")
    return value


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _register(org: str, model) -> None:  # noqa: ANN001 - LeadModel | DealModel
    from ai.service import register_model
    from app.cli import load_settings
    from hub.runtime import Hub

    async def main() -> str:
        hub = Hub.from_settings(load_settings())
        try:
            await hub.db.migrate()
            return (await register_model(hub, org, model, actor="cli", origin="cli")).id
        finally:
            await hub.close()

    typer.echo(f"active {model.version} for org {org} (model {asyncio.run(main())})")


def _train_and_save(train: Callable[[], Any], out: Path, org: str | None, summary: Callable[[dict], str]) -> None:
    """Train (bad data is a clear CLI error), save the model to ``out``, say what it is, and make it ``org``'s."""
    from ai import artifacts
    from ai.tabular import DataError

    try:
        model = train()
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    artifacts.save(model, out)
    typer.echo(f"{model.version}: {summary(model.metrics)} -> {out}")
    if org:
        _register(org, model)


@ai_app.command("train-leads")
def train_leads_cmd(
    csv_path: Path = CsvOpt,
    out: Path = OutModelOpt,
    mapping: Path | None = MappingOpt,
    org: str | None = OrgOpt,
) -> None:
    """Train a lead model on historical leads with an outcome column."""
    from ai.leads import LeadMapping, train_leads
    from ai.tabular import read_csv

    _train_and_save(
        lambda: train_leads(read_csv(csv_path), LeadMapping.model_validate(_mapping(mapping))), out, org,
        lambda m: f"{m['rows']} leads, out-of-fold AUC {m['oof_auc']:.4f}, Brier {m['oof_brier']:.4f}, "
                  f"mean interval width {m['mean_interval_width']:.1f}",
    )


@ai_app.command("score-leads")
def score_leads_cmd(
    model_path: Path = ModelOpt,
    csv_path: Path = CsvOpt,
    out: Path = typer.Option(..., "--out", help="scores CSV to write: id, score, low, high, factors"),
) -> None:
    """Score every lead of a CSV: one output row per input row."""
    from ai import artifacts
    from ai.tabular import read_csv

    try:
        model = artifacts.load(model_path, kind="leads")
    except artifacts.ArtifactError as exc:
        _fail(str(exc))
    rows = read_csv(csv_path)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "score", "low", "high", "factors"])
        for start in range(0, len(rows), 2000):
            for s in model.score_records(rows[start:start + 2000]):
                writer.writerow([s.id, s.score, s.low, s.high, "; ".join(f.text for f in s.factors)])
    typer.echo(f"scored {len(rows)} leads with {model.version} -> {out}")


@ai_app.command("train-deals")
def train_deals_cmd(
    csv_path: Path = CsvOpt,
    out: Path = OutModelOpt,
    mapping: Path | None = MappingOpt,
    org: str | None = OrgOpt,
) -> None:
    """Train a deal win/loss model on historical opportunities (``products.csv`` alongside supplies prices)."""
    from ai.deals import DealMapping, read_deals, train_deals

    _train_and_save(
        lambda: train_deals(*read_deals(csv_path, DealMapping.model_validate(_mapping(mapping)))), out, org,
        lambda m: f"{m['deals']} closed deals ({m['snapshots']} snapshots), base rate {m['base_rate']:.3f}, "
                  f"C={m['C']}, shrink λ={m['shrink']}",
    )


@ai_app.command("score-deals")
def score_deals_cmd(
    model_path: Path = ModelOpt,
    csv_path: Path = CsvOpt,
    out: Path = typer.Option(..., "--out", help="scores CSV: id, stage, risk, win_probability, factors"),
    as_of: str | None = typer.Option(None, "--as-of", help="date open deals are scored at (default: the latest "
                                     "date in the file)"),
) -> None:
    """Score every deal of a CSV (model only: the CSV has no MEDDPICC). Open deals are scored as of
    ``--as-of``; closed ones as of their engagement (what the model would have said then)."""
    from ai import artifacts
    from ai.deals import read_deals

    try:
        model = artifacts.load(model_path, kind="deals")
    except artifacts.ArtifactError as exc:
        _fail(str(exc))
    deals, _ = read_deals(csv_path, model.mapping)
    dates = [d for deal in deals for d in (deal.created, deal.closed) if d is not None]
    try:
        when = date.fromisoformat(as_of) if as_of else max(dates, default=date.today())
    except ValueError:
        raise typer.BadParameter(f"--as-of {as_of!r} is not a date (YYYY-MM-DD)") from None
    at = [when if d.won is None else (d.created or when) for d in deals]
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "stage", "risk", "win_probability", "factors"])
        for deal, s in zip(deals, model.score(deals, at), strict=True):
            writer.writerow([s.id, deal.stage or "", round(100 * (1 - s.win_probability), 1), s.win_probability,
                             "; ".join(f.text for f in s.factors)])
    typer.echo(f"scored {len(deals)} deals with {model.version} as of {when} -> {out}")


@ai_app.command("evaluate")
def evaluate_cmd(
    leads: Path | None = typer.Option(None, "--leads", help="lead CSV (default: X Education under HUB_SHARED_DATA)"),
    deals: Path | None = typer.Option(None, "--deals", help="deal CSV (default: Maven under HUB_SHARED_DATA)"),
    folds: int = typer.Option(5, min=2, max=10, help="cross-validation folds for leads"),
    seed: int = typer.Option(0, help="random seed of the folds"),
    seeds: int = typer.Option(3, min=1, max=10, help="fold seeds (seed, seed+1, ...) of the per-moment table"),
    as_json: bool = typer.Option(False, "--json", help="print the figures as JSON"),
) -> None:
    """Leads: stratified K-fold CV (AUC, Brier, calibration by decile vs intervals), then per moment (known at
    creation, after engagement, after sales contact) over several seeds against a gradient-boosting baseline.
    Deals: time-ordered holdout (AUC, Brier, base-rate Brier), and the revenue forecast backtested month by month
    against two naive baselines."""
    from ai.deals import read_deals
    from ai.evaluate import (
        deal_report,
        evaluate_deals,
        evaluate_lead_moments,
        evaluate_leads,
        lead_report,
        moment_report,
        pipeline_backtest,
    )
    from ai.forecast import backtest_report
    from ai.tabular import read_csv
    from app.cli import load_settings

    shared = load_settings().shared_data
    leads = leads or shared / "lead_scoring_x_education" / "Leads.csv"
    deals = deals or shared / "maven_crm_sales_opportunities" / "sales_pipeline.csv"
    report: dict = {}
    if leads.exists():
        lead_rows = read_csv(leads)
        report["leads"] = evaluate_leads(lead_rows, folds=folds, seed=seed)
        report["lead_moments"] = evaluate_lead_moments(lead_rows, folds=folds, seeds=range(seed, seed + seeds))
    if deals.exists():
        report["deals"] = evaluate_deals(read_deals(deals)[0])
        report["forecast"] = pipeline_backtest(deals)
    if not report:
        _fail(f"no data: neither {leads} nor {deals} exists (set HUB_SHARED_DATA or pass --leads/--deals)")
    if as_json:
        typer.echo(json.dumps({k: [r.model_dump() for r in v] if isinstance(v, list) else v.model_dump()
                               for k, v in report.items()}, indent=2))
        return
    if "leads" in report:
        typer.echo(lead_report(report["leads"]))
        typer.echo(moment_report(report["lead_moments"], folds))
    else:
        typer.echo(f"leads: skipped ({leads} not found)")
    if "deals" in report:
        typer.echo(deal_report(report["deals"]))
        typer.echo(backtest_report(report["forecast"]))
    else:
        typer.echo(f"deals: skipped ({deals} not found)")
