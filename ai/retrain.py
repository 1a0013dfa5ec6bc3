"""Champion / challenger: retrain on the org's own outcomes, promote only what beats both the current model and
the base rate on the newest window.

History is ordered by time (deals by close date, leads by creation). The newest ``WINDOW`` share is held out:
the challenger's procedure is trained on what came before and scored on it, against the current model (the
champion, as it is) and the base rate of the older part (for deals: of their snapshots, the model's own task). The challenger — then refitted on all of the history —
is promoted only when its Brier score on the window is lower than both. Every decision and its figures are kept
with the challenger's row in ``ai_models`` (``metrics.challenge``), promoted or not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel
from sklearn.metrics import brier_score_loss, roc_auc_score

from ai.deals import Deal, DealMapping, DealModel, closed_deals, snapshot, train_deals
from ai.leads import LeadMapping, LeadModel, train_leads
from ai.tabular import DataError

WINDOW = 0.2


class Decision(BaseModel):
    """One challenge: the window, the three Brier scores (and the AUCs) on it, and whether the challenger was
    promoted."""

    kind: str
    promoted: bool
    reason: str
    train_rows: int
    window_rows: int
    window_from: str
    window_until: str
    challenger_brier: float
    champion_brier: float | None
    base_rate_brier: float
    challenger_auc: float | None = None  # None where the window holds one outcome only
    champion_auc: float | None = None


def _decide(kind: str, y: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None, base: float,
            train_rows: int, window: tuple[str, str]) -> Decision:
    chal = float(brier_score_loss(y, challenger))
    champ = float(brier_score_loss(y, champion)) if champion is not None else None
    base_brier = float(brier_score_loss(y, np.full(len(y), base)))
    if chal >= base_brier:
        reason = "not better than the base rate on the newest window"
    elif champ is not None and chal >= champ:
        reason = "not better than the current model on the newest window"
    else:
        reason = "better than the base rate" + (" and the current model" if champ is not None else "")
    return Decision(kind=kind, promoted=reason.startswith("better"), reason=reason, train_rows=train_rows,
                    window_rows=len(y), window_from=window[0], window_until=window[1],
                    challenger_brier=round(chal, 5), champion_brier=None if champ is None else round(champ, 5),
                    base_rate_brier=round(base_brier, 5), challenger_auc=_auc(y, challenger),
                    champion_auc=None if champion is None else _auc(y, champion))


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return round(float(roc_auc_score(y, p)), 4) if len(set(y.tolist())) == 2 else None


def challenge_deals(deals: Sequence[Deal], champion: DealModel | None,
                    mapping: DealMapping | None = None) -> tuple[DealModel, Decision]:
    """The challenger deal model (on all closed deals) and the decision, on the newest-closing window."""
    history = closed_deals(deals)
    cut = int(len(history) * (1 - WINDOW))
    older, window = history[:cut], history[cut:]
    if not window:
        raise DataError("too few closed deals to hold out a window")
    trial = train_deals(older, mapping)
    snaps = snapshot(window, trial.typical)
    current = champion.probabilities(snapshot(window, champion.typical)) if champion else None
    decision = _decide("deals", snaps.y, trial.probabilities(snaps), current, trial.base_rate, len(older),
                       (str(window[0].closed), str(window[-1].closed)))
    return train_deals(history, mapping), decision


def challenge_leads(rows: Sequence[dict], champion: LeadModel | None, times: Sequence[str],
                    mapping: LeadMapping | None = None) -> tuple[LeadModel, Decision]:
    """The challenger lead model and the decision; ``rows`` are in time order (``times``: when each was created)."""
    mapping = mapping or LeadMapping()
    cut = int(len(rows) * (1 - WINDOW))
    older, window = list(rows[:cut]), list(rows[cut:])
    y = np.array([mapping.outcome(r) for r in window], dtype=float)
    if not window or np.isnan(y).any() or len(set(y.tolist())) < 2:
        raise DataError("the newest window needs leads of both outcomes")
    trial = train_leads(older, mapping, moments=False)
    current = champion.predict(window)[0] / 100 if champion else None
    base = float(np.mean([mapping.outcome(r) for r in older]))
    decision = _decide("leads", y, trial.predict(window)[0] / 100, current, base, len(older),
                       (times[cut], times[-1]))
    return train_leads(rows, mapping), decision
