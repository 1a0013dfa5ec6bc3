"""Prometheus metrics of the AI services, per org and model, and score drift (population stability index).

| metric | labels | what |
|---|---|---|
| ``hub_ai_scores_total`` | org, kind, model, source, moment | scores and insights served (``kind``: lead_score, deal_risk, next_action) |
| ``hub_ai_score_seconds`` | org, kind | time to compute one |
| ``hub_ai_fallbacks_total`` | org, kind, reason | served without the org's model (``no_model``: the prior) or without the LLM's refinement (``no_connection``, ``budget``, ``rate_limited``, ``timeout``, ``invalid_answer``, ``provider_error``, ``legacy_workflow``) |
| ``hub_ai_openai_tokens_total`` | org, model, type | OpenAI tokens (``prompt``, ``completion``) |
| ``hub_ai_openai_errors_total`` | org, reason | OpenAI refinements that failed (and fell back to the local list) |
| ``hub_ai_score_psi`` | org, kind, model, moment | PSI of the last 7 days' scores against the model's training scores |

Drift: each model keeps the decile edges of its training (out-of-fold) scores and the share of scores in
each band (``metrics.score_bins``). The scores this process served in the last ``WINDOW_DAYS`` days are
counted in the same bands; PSI = Σ (aᵢ − eᵢ)·ln(aᵢ/eᵢ) over bands (shares floored at 10⁻⁴), published once
``MIN_SCORES`` scores are in the window. Alert thresholds (README): PSI ≥ 0.1 watch, ≥ 0.25 alert.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

SCORES = Counter("hub_ai_scores_total", "AI scores and insights served", ["org", "kind", "model", "source", "moment"])
LATENCY = Histogram("hub_ai_score_seconds", "Time to compute one AI score or insight", ["org", "kind"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
FALLBACKS = Counter("hub_ai_fallbacks_total", "AI answers served without the org's model or the LLM, by reason",
                    ["org", "kind", "reason"])
OPENAI_TOKENS = Counter("hub_ai_openai_tokens_total", "OpenAI tokens used", ["org", "model", "type"])
OPENAI_ERRORS = Counter("hub_ai_openai_errors_total", "OpenAI refinements that failed", ["org", "reason"])
DRIFT = Gauge("hub_ai_score_psi", "Population stability index of the last 7 days' scores against training",
              ["org", "kind", "model", "moment"])

WINDOW_DAYS = 7
MIN_SCORES = 50
PSI_WATCH, PSI_ALERT = 0.1, 0.25
_FLOOR = 1e-4


def score_bins(scores: np.ndarray) -> dict:
    """The training distribution of scores for drift: inner decile edges and the share in each band."""
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, 11)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(edges) + 1)
    return {"edges": [round(float(e), 6) for e in edges], "expected": [round(float(c) / len(scores), 6) for c in counts]}


def psi(expected: Sequence[float], counts: Sequence[int]) -> float:
    """Population stability index of observed band ``counts`` against ``expected`` shares."""
    total = sum(counts)
    value = 0.0
    for e, c in zip(expected, counts, strict=True):
        e, a = max(e, _FLOOR), max(c / total, _FLOOR)
        value += (a - e) * math.log(a / e)
    return value


class ScoreDrift:
    """Band counts of the scores served per (org, kind, model, moment), by day, over a rolling window."""

    def __init__(self, clock=time.time) -> None:  # noqa: ANN001 - a () -> float
        self.clock = clock
        self.days: dict[tuple, dict[int, np.ndarray]] = defaultdict(dict)

    def observe(self, key: tuple[str, str, str, str], bins: dict | None, score: float) -> float | None:
        """Count one score; the window's PSI (also set on the gauge) once it holds ``MIN_SCORES``, else None."""
        if not bins or len(bins.get("expected", ())) < 2:
            return None
        today = int(self.clock() // 86400)
        days = self.days[key]
        for day in [d for d in days if d <= today - WINDOW_DAYS]:
            del days[day]
        counts = days.setdefault(today, np.zeros(len(bins["expected"]), dtype=np.int64))
        counts[int(np.searchsorted(bins["edges"], score, side="right"))] += 1
        window = sum(days.values())
        if window.sum() < MIN_SCORES:
            return None
        value = psi(bins["expected"], window.tolist())
        DRIFT.labels(*key).set(value)
        return value


DRIFTS = ScoreDrift()


def observe_score(org: str, kind: str, model: str, source: str, seconds: float, moment: str = "",
                  bins: dict | None = None, score: float | None = None) -> None:
    """Record one score served: count, latency, the prior as a ``no_model`` fallback, drift."""
    SCORES.labels(org, kind, model, source, moment).inc()
    LATENCY.labels(org, kind).observe(seconds)
    if source == "prior":
        FALLBACKS.labels(org, kind, "no_model").inc()
    elif score is not None:
        DRIFTS.observe((org, kind, model, moment), bins, score)


def observe_llm(org: str, provenance: dict) -> None:
    """Record an OpenAI refinement from its provenance: tokens used, or the reason the answer is the local
    one (``fallback_reason``; ``no_connection`` also when OpenAI is on without an active connection)."""
    reason = provenance.get("fallback_reason")
    if provenance.get("engine") == "openai":
        usage = provenance.get("usage") or {}
        model = str(provenance.get("model") or "")
        for kind, names in (("prompt", ("prompt_tokens", "input_tokens")),
                            ("completion", ("completion_tokens", "output_tokens"))):
            tokens = next((usage[n] for n in names if isinstance(usage.get(n), int)), 0)
            if tokens:
                OPENAI_TOKENS.labels(org, model, kind).inc(tokens)
        if provenance.get("fallback"):
            reason = reason or "provider_error"
            OPENAI_ERRORS.labels(org, reason).inc()
    if reason:
        FALLBACKS.labels(org, "next_action", reason).inc()
