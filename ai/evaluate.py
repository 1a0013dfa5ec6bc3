"""``fulqrun-hub ai evaluate``: how good the models are on held-out data, with the figures the README quotes.

* Leads — stratified K-fold cross-validation of the whole training procedure (each outer fold trains
  a model, including its own inner folds for the intervals, and scores the held-out leads): AUC,
  Brier score, mean interval width, and calibration by score decile against the stated intervals:
  a decile *holds* when its observed conversion rate lies between its mean low and mean high. The
  same check per fold × decile (groups about the size the intervals are learned for) gives a coverage
  that should be near or above 90%. The same folds fit a **baseline**: gradient-boosted trees with
  default settings on the same features (native categorical splits).
* Leads per moment — that evaluation for the features known at creation, after engagement and after
  sales contact (``ai.leads.MOMENTS``), over several fold seeds; each moment's model should beat its
  baseline in both AUC and Brier.
* Forecast — ``ai.forecast.backtest`` over the months of the Maven history from the third month with
  closings (``pipeline_backtest``): MAPE and 80% interval coverage against two naive baselines.
* Deals — a time-ordered split: train on the deals that closed first, test on the latest-closing
  ones. AUC, Brier and the Brier of predicting the training base rate, over the held-out deals'
  snapshots (seen open at 0, 7, 14, ... days, the model's own task) and at engagement (age 0).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from ai.deals import Deal, DealMapping, closed_deals, snapshot, train_deals
from ai.forecast import Backtest, backtest, maven_deals, period_bounds
from ai.leads import MOMENTS, LeadMapping, LeadModel, train_leads
from ai.tabular import DataError, one_thread, read_csv, to_float


class DecileRow(BaseModel):
    """Calibration of one score decile against its intervals."""

    decile: int
    n: int
    mean_score: float
    observed: float
    mean_low: float
    mean_high: float
    holds: bool


class LeadEvaluation(BaseModel):
    """Cross-validated lead-model figures."""

    rows: int
    folds: int
    auc: float
    brier: float
    mean_width: float
    deciles: list[DecileRow]
    deciles_holding: int
    fold_decile_coverage: float
    seconds: float
    moment: str | None = None
    features: int = 0
    baseline_auc: float = 0.0
    baseline_brier: float = 0.0


class MomentRow(BaseModel):
    """One moment's figures over several fold seeds (means, and the range of AUC), with its baseline's."""

    moment: str
    features: int
    seeds: int
    auc: float
    auc_min: float
    auc_max: float
    brier: float
    fold_decile_coverage: float
    deciles_holding: float
    mean_width: float
    baseline_auc: float
    baseline_brier: float

    @property
    def beats_baseline(self) -> bool:
        """Higher AUC and lower Brier than the gradient-boosting baseline."""
        return self.auc > self.baseline_auc and self.brier < self.baseline_brier


class DealView(BaseModel):
    """Held-out figures of one view (snapshots, or at engagement)."""

    rows: int
    auc: float  # 0.5 when the predictions are constant
    brier: float
    base_rate: float
    base_rate_brier: float

    @property
    def not_worse(self) -> bool:
        """The model's Brier is no worse than the base rate's."""
        return self.brier <= self.base_rate_brier + 1e-12


class DealEvaluation(BaseModel):
    """Time-ordered holdout figures of the deal model."""

    train_deals: int
    test_deals: int
    train_closed_until: str
    test_closed_from: str
    test_closed_until: str
    shrink: float
    snapshots: DealView
    at_engagement: DealView
    seconds: float


def _decile_index(scores: np.ndarray) -> np.ndarray:
    ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
    return ranks * 10 // len(scores)


def moment_mapping(rows: Sequence[dict], mapping: LeadMapping, moment: str) -> LeadMapping:
    """``mapping`` restricted to the features known at ``moment``."""
    features = mapping.known_at(mapping.feature_columns(list(rows[0].keys())), moment)
    numeric = None if mapping.numeric is None else [c for c in mapping.numeric if c in features]
    return mapping.model_copy(update={"features": features, "numeric": numeric})


def _baseline(model: LeadModel, train: Sequence[dict], y: np.ndarray, test: Sequence[dict], seed: int) -> np.ndarray:
    """P(convert) of gradient-boosted trees (default settings) on the model's features, fitted on ``train``."""
    def matrix(rows: Sequence[dict]) -> np.ndarray:
        cats, nums = model.matrices(rows)
        return np.hstack([model.learner.coder.encode(cats), nums])

    k = len(model.categorical)
    with one_thread():
        trees = HistGradientBoostingClassifier(categorical_features=list(range(k)) or None, random_state=seed)
        return trees.fit(matrix(train), y).predict_proba(matrix(test))[:, 1]


def evaluate_leads(rows: Sequence[dict], mapping: LeadMapping | None = None, folds: int = 5,
                   seed: int = 0, moment: str | None = None) -> LeadEvaluation:
    """Stratified ``folds``-fold cross-validation of ``train_leads`` on labelled rows (only the features known
    at ``moment`` when given), and of the gradient-boosting baseline in the same folds."""
    started = time.perf_counter()
    mapping = mapping or LeadMapping()
    if moment is not None:
        mapping = moment_mapping(rows, mapping, moment)
    labelled = [(r, y) for r in rows if (y := mapping.outcome(r)) is not None]
    data = [r for r, _ in labelled]
    y = np.array([y for _, y in labelled], dtype=int)
    scores, low, high, base = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y))
    fold_of = np.zeros(len(y), dtype=int)
    features = 0
    for f, (train, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(data, y)):
        train_rows, test_rows = [data[i] for i in train], [data[i] for i in test]
        model = train_leads(train_rows, mapping, seed=seed, moments=False)
        s, lo, hi = model.predict(test_rows)
        scores[test], low[test], high[test], fold_of[test] = s, lo, hi, f
        base[test] = _baseline(model, train_rows, y[train], test_rows, seed)
        features = len(model.features)
    decile = _decile_index(scores)
    table = []
    for d in range(10):
        cell = decile == d
        observed = 100 * y[cell].mean()
        table.append(DecileRow(
            decile=d + 1, n=int(cell.sum()), mean_score=round(float(scores[cell].mean()), 2),
            observed=round(float(observed), 2), mean_low=round(float(low[cell].mean()), 2),
            mean_high=round(float(high[cell].mean()), 2),
            holds=bool(low[cell].mean() <= observed <= high[cell].mean()),
        ))
    held = total = 0
    for f in range(folds):
        for d in range(10):
            cell = (fold_of == f) & (decile == d)
            if cell.any():
                total += 1
                held += int(low[cell].mean() <= 100 * y[cell].mean() <= high[cell].mean())
    return LeadEvaluation(
        rows=len(y), folds=folds,
        auc=round(float(roc_auc_score(y, scores)), 4),
        brier=round(float(brier_score_loss(y, scores / 100)), 4),
        mean_width=round(float(np.mean(high - low)), 2),
        deciles=table, deciles_holding=sum(r.holds for r in table),
        fold_decile_coverage=round(held / total, 3),
        seconds=round(time.perf_counter() - started, 1),
        moment=moment, features=features,
        baseline_auc=round(float(roc_auc_score(y, base)), 4),
        baseline_brier=round(float(brier_score_loss(y, base)), 4),
    )


def evaluate_lead_moments(rows: Sequence[dict], mapping: LeadMapping | None = None, folds: int = 5,
                          seeds: Sequence[int] = (0, 1, 2)) -> list[MomentRow]:
    """``evaluate_leads`` at each moment that has features of its own, for each fold seed, summarised."""
    mapping = mapping or LeadMapping()
    features = mapping.feature_columns(list(rows[0].keys()))
    table = []
    for moment in MOMENTS:
        if moment not in {mapping.moment_of(c) for c in features}:
            continue
        runs = [evaluate_leads(rows, mapping, folds, seed, moment) for seed in seeds]
        aucs = [r.auc for r in runs]

        def mean(name: str, places: int = 4, runs: list[LeadEvaluation] = runs) -> float:
            return round(float(np.mean([getattr(r, name) for r in runs])), places)

        table.append(MomentRow(
            moment=moment, features=runs[0].features, seeds=len(runs), auc=mean("auc"), auc_min=min(aucs),
            auc_max=max(aucs), brier=mean("brier"), fold_decile_coverage=mean("fold_decile_coverage", 3),
            deciles_holding=mean("deciles_holding", 1), mean_width=mean("mean_width", 2),
            baseline_auc=mean("baseline_auc"), baseline_brier=mean("baseline_brier"),
        ))
    return table


def _view(model_p: np.ndarray, y: np.ndarray, base: float) -> DealView:
    auc = float(roc_auc_score(y, model_p)) if len(set(y.tolist())) == 2 and np.ptp(model_p) > 0 else 0.5
    return DealView(rows=len(y), auc=round(auc, 4), brier=round(float(brier_score_loss(y, model_p)), 5),
                    base_rate=round(base, 4),
                    base_rate_brier=round(float(brier_score_loss(y, np.full(len(y), base))), 5))


def evaluate_deals(deals: Sequence[Deal], mapping: DealMapping | None = None, holdout: float = 0.2) -> DealEvaluation:
    """Train on the first ``1 - holdout`` of closed deals (by close date), test on the rest."""
    started = time.perf_counter()
    history = closed_deals(deals)
    cut = int(len(history) * (1 - holdout))
    train, test = history[:cut], history[cut:]
    model = train_deals(train, mapping)
    snaps = snapshot(test, model.typical)
    engaged = snapshot(test, model.typical, ages=(0,))
    deal_rate = float(np.mean([d.won for d in train]))
    return DealEvaluation(
        train_deals=len(train), test_deals=len(test),
        train_closed_until=str(train[-1].closed), test_closed_from=str(test[0].closed),
        test_closed_until=str(test[-1].closed), shrink=model.shrink,
        snapshots=_view(model.probabilities(snaps), snaps.y, model.base_rate),
        at_engagement=_view(model.probabilities(engaged), engaged.y, deal_rate),
        seconds=round(time.perf_counter() - started, 1),
    )


def lead_report(ev: LeadEvaluation) -> str:
    """The lead evaluation as text."""
    lines = [
        f"leads: {ev.rows} rows, stratified {ev.folds}-fold CV ({ev.seconds}s)",
        f"  AUC {ev.auc:.4f}   Brier {ev.brier:.4f}   mean 90% interval width {ev.mean_width:.1f} points",
        "  decile      n   mean score   observed   mean low   mean high   holds",
    ]
    for r in ev.deciles:
        lines.append(f"  {r.decile:>6} {r.n:>6} {r.mean_score:>12.1f} {r.observed:>10.1f} {r.mean_low:>10.1f}"
                     f" {r.mean_high:>11.1f}   {'yes' if r.holds else 'NO'}")
    lines.append(f"  deciles holding: {ev.deciles_holding}/10; fold x decile coverage "
                 f"{ev.fold_decile_coverage:.0%} (nominal 90%)")
    return "\n".join(lines)


def moment_report(table: Sequence[MomentRow], folds: int) -> str:
    """The per-moment lead evaluation as text."""
    lines = [
        f"leads by moment (stratified {folds}-fold CV, {table[0].seeds if table else 0} fold seeds; "
        "baseline: gradient-boosted trees, default settings, same folds and features)",
        "  moment       features   AUC (min-max)            Brier    interval cover  deciles   baseline AUC  Brier"
        "    beats",
    ]
    for r in table:
        lines.append(
            f"  {r.moment:<12} {r.features:>8}   {r.auc:.4f} ({r.auc_min:.4f}-{r.auc_max:.4f})  {r.brier:.4f}"
            f"   {r.fold_decile_coverage:>13.0%}  {r.deciles_holding:>5.1f}/10   {r.baseline_auc:>12.4f}  "
            f"{r.baseline_brier:.4f}   {'yes' if r.beats_baseline else 'NO'}"
        )
    return "\n".join(lines)


def pipeline_backtest(pipeline_csv: Path, simulations: int = 1000) -> Backtest:
    """The monthly forecast backtest on a Maven-layout ``sales_pipeline.csv`` (``products.csv`` beside it gives the
    list prices open deals are valued at): each month from the third after the first closing to the last one
    with closings, forecast from what was known at its start."""
    products = pipeline_csv.with_name("products.csv")
    prices = {r["product"]: p for r in read_csv(products) if (p := to_float(r.get("sales_price"))) is not None} \
        if products.exists() else {}
    deals, actual = maven_deals(read_csv(pipeline_csv), prices)
    closings = sorted(d.closed for d in deals if d.closed is not None)
    if not closings:
        raise DataError("no closed deals to backtest the forecast on")
    first = period_bounds(closings[0], "month", 3)[2][0]
    return backtest(deals, actual, first, closings[-1].replace(day=1), simulations)


def deal_report(ev: DealEvaluation) -> str:
    """The deal evaluation as text."""
    lines = [
        f"deals: time-ordered split, train {ev.train_deals} deals closed until {ev.train_closed_until}, "
        f"test {ev.test_deals} closed {ev.test_closed_from}..{ev.test_closed_until} ({ev.seconds}s); "
        f"shrink toward base rate λ={ev.shrink}",
    ]
    for name, v in (("snapshots", ev.snapshots), ("at engagement", ev.at_engagement)):
        verdict = "not worse than base rate" if v.not_worse else "WORSE than base rate"
        lines.append(f"  {name:<14} n={v.rows:<6} AUC {v.auc:.3f}   Brier {v.brier:.5f}   base rate {v.base_rate:.3f} "
                     f"Brier {v.base_rate_brier:.5f}   {verdict}")
    return "\n".join(lines)
