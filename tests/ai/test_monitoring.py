"""AI metrics: scores served, latency, fallbacks by reason and score drift (PSI) per org and model."""

from __future__ import annotations

import httpx
import numpy as np
from prometheus_client import REGISTRY

from ai.monitoring import MIN_SCORES, PSI_ALERT, PSI_WATCH, ScoreDrift, psi, score_bins
from hub.runtime import Hub
from tests.conftest import bearer


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    training = rng.beta(2, 5, 5000) * 100
    bins = score_bins(training)
    assert len(bins["expected"]) == 10 and abs(sum(bins["expected"]) - 1) < 1e-6

    def counts(scores: np.ndarray) -> list[int]:
        return np.bincount(np.searchsorted(bins["edges"], scores, side="right"), minlength=10).tolist()

    assert psi(bins["expected"], counts(rng.beta(2, 5, 2000) * 100)) < PSI_WATCH
    assert psi(bins["expected"], counts(rng.beta(5, 2, 2000) * 100)) > PSI_ALERT


def test_drift_counts_a_rolling_week_and_sets_the_gauge() -> None:
    rng = np.random.default_rng(1)
    bins = score_bins(rng.uniform(0, 100, 4000))
    now = [1_000 * 86400.0]
    drift = ScoreDrift(clock=lambda: now[0])
    key = ("drift-org", "lead_score", "leads-test", "creation")
    values = [drift.observe(key, bins, float(s)) for s in rng.uniform(0, 100, MIN_SCORES)]
    assert values[:-1] == [None] * (MIN_SCORES - 1) and values[-1] < PSI_ALERT
    now[0] += 8 * 86400  # a week later the old scores have left the window
    shifted = [drift.observe(key, bins, float(s)) for s in rng.uniform(90, 100, MIN_SCORES)]
    assert shifted[-2] is None and shifted[-1] > PSI_ALERT
    labels = dict(zip(("org", "kind", "model", "moment"), key, strict=True))
    assert REGISTRY.get_sample_value("hub_ai_score_psi", labels) == shifted[-1]
    assert drift.observe(key, {"edges": [], "expected": [1.0]}, 50.0) is None  # a constant model has no bands


async def test_lead_scores_reach_metrics(api: httpx.AsyncClient, hub: Hub, admin_key: str) -> None:
    await api.put("/v1/leads/M-1", json={"source": "Referral"}, headers=bearer(admin_key))
    text = (await api.get("/metrics")).text
    assert 'hub_ai_scores_total{kind="lead_score",model="leads-prior-1",moment="creation",org="acme",source="prior"}' in text
    assert 'hub_ai_fallbacks_total{kind="lead_score",org="acme",reason="no_model"}' in text
    assert 'hub_ai_score_seconds_count{kind="lead_score",org="acme"}' in text
