"""Deal win/loss model: P(win) of an open opportunity from historical won and lost deals.

Features: product, account, owner (categories), value (log) and the deal's **age versus the typical
cycle** (age / median days-to-win of won deals), plus days to the expected close date when the
history has an expected-close column. When the history records what happened to its deals (the hub's
own opportunities: the domain events of their workflows), the **integration signals** known at each
snapshot are features too (``SIGNALS``): calls recorded (Gong), documents present (SharePoint,
DocuSign), payments received (Stripe), contract sent, contract signed, and days since the last
activity. A CSV history has none, and its models are as before; models trained before these features
existed load and score unchanged (``_Fit.signals`` absent: no signal columns). Stage is not learned: exports of closed deals do not say which
stage a deal was in at a given age (Maven's closed deals all went Prospecting → Engaging → closed),
so stage acts through the MEDDPICC rules and the prior in ``ai.risk``.

Training uses **snapshots**: each closed deal is seen open at ages 0, 7, 14, 30, 60, 90, 120 and 180
days (those before it closed), labelled with its final outcome, so the model answers "P(win) of a
deal still open at this age". Nothing known only at close is a feature (Maven's ``close_value`` is 0
for every lost deal: the value is the product's list price instead).

Honesty: the logistic regression is strongly regularised, and its log-odds are shrunk toward the
base rate by a factor λ ∈ {0, ¼, ½, ¾, 1}; C and λ are chosen on a time-ordered validation (the
latest-closing quarter of the training deals). When the history carries no signal, λ = 0 and the
model *is* the base rate — never worse than it on the validation it was chosen on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import sklearn
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import SplineTransformer

from ai.monitoring import score_bins
from ai.tabular import CategoryCoder, DataError, clean, fingerprint, one_thread, points, read_csv, to_float

MODEL_FORMAT = "fulqrun-deal-model/2"  # bump when training changes: versions and demo caches follow
SNAPSHOT_AGES = (0, 7, 14, 30, 60, 90, 120, 180)
C_GRID = (0.003, 0.03, 0.3)
SHRINK_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
MISSING = "(missing)"
MIN_DEALS = 50
MIN_PER_CLASS = 10
CATEGORICAL = ("product", "account", "owner")
#: Integration signals as of a snapshot date (counts are log1p'd; the contract ones are 0/1).
SIGNALS = ("calls recorded", "documents present", "payments received", "contract sent", "contract signed",
           "days since last activity")
#: Domain event type → the signal it counts towards (any other event is activity only).
SIGNAL_EVENTS = {
    "call.recorded": "call", "document.changed": "document", "payment.received": "payment",
    "contract.sent": "contract_sent", "docusign.envelope-sent": "contract_sent", "envelope.sent": "contract_sent",
    "contract.signed": "contract_signed",
}
MAX_QUIET_DAYS = 365.0


def product_key(name: str) -> str:
    """Product names compared without case and spaces: Maven's ``GTXPro`` is its price list's ``GTX Pro``."""
    return "".join(name.split()).casefold()


class DealMapping(BaseModel):
    """Which CSV columns mean what. Defaults fit Maven's ``sales_pipeline.csv``."""

    model_config = ConfigDict(extra="forbid")

    id_column: str = "opportunity_id"
    stage_column: str = "deal_stage"
    won_values: list[str] = Field(default_factory=lambda: ["Won"])
    lost_values: list[str] = Field(default_factory=lambda: ["Lost"])
    owner_column: str = "sales_agent"
    product_column: str = "product"
    account_column: str = "account"
    value_column: str | None = Field(default=None, description="an amount known before close; None: price list")
    created_column: str = "engage_date"
    closed_column: str = "close_date"
    expected_close_column: str | None = None
    price_list: dict[str, float] = Field(default_factory=dict, description="product → list price")


@dataclass
class Deal:
    """One opportunity as the model sees it."""

    id: str
    stage: str | None
    won: int | None  # 1 won, 0 lost, None open
    product: str | None
    account: str | None
    owner: str | None
    value: float | None
    created: date | None
    closed: date | None = None
    expected_close: date | None = None
    activity: list[tuple[date, str]] | None = None  # (day, signal kind) of recorded events; None: not recorded

    @property
    def duration(self) -> int | None:
        """Days from creation (engagement) to close."""
        if self.created is None or self.closed is None:
            return None
        return max(0, (self.closed - self.created).days)


def parse_date(value: object) -> date | None:
    """An ISO date or datetime (``2017-03-01``, ``2017-03-01T10:00:00Z``), a ``date``, or None."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = clean(value)
    if text is None:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def activity_of(events: Sequence[object]) -> list[tuple[date, str]]:
    """The (day, kind) of each domain event record (``{"type", "data", "at"}``), oldest first; ``kind`` is the
    event's ``SIGNAL_EVENTS`` entry (a document marked absent, or any other event: ``other``)."""
    out = []
    for event in events:
        if not isinstance(event, dict) or (day := parse_date(event.get("at"))) is None:
            continue
        kind = SIGNAL_EVENTS.get(str(event.get("type") or ""), "other")
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if kind == "document" and data.get("present") is False:
            kind = "other"
        out.append((day, kind))
    return sorted(out)


def signal_row(deal: Deal, when: date | None) -> list[float]:
    """The deal's ``SIGNALS`` as known on ``when`` (NaN days when nothing happened and no creation date)."""
    seen = [(d, k) for d, k in deal.activity or [] if when is None or d <= when]
    count = Counter(k for _, k in seen)
    last = seen[-1][0] if seen else deal.created
    quiet = min(max((when - last).days, 0), MAX_QUIET_DAYS) if when is not None and last is not None else math.nan
    return [math.log1p(count["call"]), math.log1p(count["document"]), math.log1p(count["payment"]),
            float(count["contract_sent"] > 0), float(count["contract_signed"] > 0), float(quiet)]


def deals_from_rows(rows: Sequence[dict], mapping: DealMapping) -> list[Deal]:
    """Deals from CSV rows; the value is the mapped amount, else the product's list price."""
    won = {v.casefold() for v in mapping.won_values}
    lost = {v.casefold() for v in mapping.lost_values}
    prices = {product_key(k): v for k, v in mapping.price_list.items()}
    deals = []
    for i, row in enumerate(rows):
        stage = clean(row.get(mapping.stage_column))
        folded = stage.casefold() if stage else None
        product = clean(row.get(mapping.product_column))
        if mapping.value_column:
            value = to_float(clean(row.get(mapping.value_column)))
        else:
            value = prices.get(product_key(product)) if product else None
        deals.append(
            Deal(
                id=clean(row.get(mapping.id_column)) or str(i + 1),
                stage=stage,
                won=1 if folded in won else 0 if folded in lost else None,
                product=product,
                account=clean(row.get(mapping.account_column)),
                owner=clean(row.get(mapping.owner_column)),
                value=value,
                created=parse_date(row.get(mapping.created_column)),
                closed=parse_date(row.get(mapping.closed_column)),
                expected_close=(
                    parse_date(row.get(mapping.expected_close_column)) if mapping.expected_close_column else None
                ),
            )
        )
    return deals


def read_deals(path: str | Path, mapping: DealMapping | None = None) -> tuple[list[Deal], DealMapping]:
    """Deals from a CSV; with Maven's layout, ``products.csv`` next to it supplies the list prices."""
    path = Path(path)
    mapping = mapping or DealMapping()
    if mapping.value_column is None and not mapping.price_list:
        products = path.with_name("products.csv")
        if products.exists():
            prices = {
                r["product"]: p
                for r in read_csv(products)
                if r.get("product") and (p := to_float(clean(r.get("sales_price")))) is not None
            }
            mapping = mapping.model_copy(update={"price_list": prices})
    return deals_from_rows(read_csv(path), mapping), mapping


def closed_deals(deals: Sequence[Deal]) -> list[Deal]:
    """Won and lost deals with both dates, ordered by close date (then id)."""
    usable = [d for d in deals if d.won is not None and d.created is not None and d.closed is not None]
    return sorted(usable, key=lambda d: (d.closed, d.id))


def typical_cycle(deals: Sequence[Deal]) -> float:
    """Median days from creation to a win (all closed deals if none won); at least one day."""
    won = [d.duration for d in deals if d.won == 1 and d.duration is not None]
    pool = won or [d.duration for d in deals if d.duration is not None]
    return max(1.0, float(np.median(pool))) if pool else 30.0


@dataclass
class Snapshots:
    """Feature rows of deals seen at given ages."""

    cats: np.ndarray  # (n, 3) strings
    nums: np.ndarray  # (n, 3) value (log), age ratio, days to expected close
    y: np.ndarray | None
    ages: np.ndarray
    deal: np.ndarray  # index of the deal each row belongs to
    signals: np.ndarray  # (n, len(SIGNALS)) integration signals as of each row's date


def snapshot(deals: Sequence[Deal], typical: float, ages: Sequence[int] | None = None,
             as_of: Sequence[date] | None = None) -> Snapshots:
    """Rows for ``deals``: at each of ``ages`` while still open (training), or at ``as_of`` dates (scoring)."""
    cats, nums, ys, seen, owner, signals = [], [], [], [], [], []
    for i, deal in enumerate(deals):
        if as_of is not None:
            at = [max(0, (as_of[i] - deal.created).days) if deal.created else 0]
        else:
            duration = deal.duration or 0
            at = [a for a in (ages or SNAPSHOT_AGES) if a == 0 or a < duration]
        for age in at:
            when = (deal.created.toordinal() + age) if deal.created else None
            to_close = (
                deal.expected_close.toordinal() - when if deal.expected_close is not None and when else math.nan
            )
            cats.append([deal.product or MISSING, deal.account or MISSING, deal.owner or MISSING])
            nums.append([math.log1p(deal.value) if deal.value and deal.value > 0 else math.nan,
                         min(age / typical, 5.0), to_close])
            ys.append(deal.won)
            seen.append(age)
            owner.append(i)
            signals.append(signal_row(deal, as_of[i] if as_of is not None else date.fromordinal(when) if when else None))
    return Snapshots(
        cats=np.array(cats, dtype=object).reshape(len(cats), 3),
        nums=np.array(nums, dtype=float).reshape(len(nums), 3),
        y=np.array(ys, dtype=int) if as_of is None else None,
        ages=np.array(seen, dtype=int),
        deal=np.array(owner, dtype=int),
        signals=np.array(signals, dtype=float).reshape(len(signals), len(SIGNALS)),
    )


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def uses_signals(deals: Sequence[Deal]) -> bool:
    """Whether a history records its deals' events (the hub's own), so the integration signals are features."""
    return any(d.activity is not None for d in deals)


class _Fit:
    """Category codes, age spline, the integration signals when the history has them, and a regularised
    logistic regression."""

    def __init__(self, data: Snapshots, C: float, signals: bool = False) -> None:
        self.signals = signals
        if signals:
            self.signal_imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(data.signals)
            filled = self.signal_imputer.transform(data.signals)
            spread = filled.std(axis=0)
            self.signal_center, self.signal_scale = filled.mean(axis=0), np.where(spread > 1e-9, spread, 1.0)
        self.coder = CategoryCoder(data.cats, min_count=20)
        self.numeric = SimpleImputer(strategy="median", keep_empty_features=True).fit(data.nums)
        filled = self.numeric.transform(data.nums)
        self.spline = SplineTransformer(n_knots=4, degree=2).fit(filled[:, 1:2])
        self.center = filled.mean(axis=0)
        spread = filled.std(axis=0)
        self.scale = np.where(spread > 1e-9, spread, 1.0)
        self.model = LogisticRegression(C=C, max_iter=2000).fit(self._matrix(data), data.y)

    def _matrix(self, data: Snapshots) -> sparse.csr_matrix:
        filled = self.numeric.transform(data.nums)
        blocks = [
            self.coder.onehot(self.coder.encode(data.cats)),
            sparse.csr_matrix(((filled - self.center) / self.scale)[:, [0, 2]]),
            sparse.csr_matrix(self.spline.transform(filled[:, 1:2])),
            sparse.csr_matrix(np.isnan(data.nums).astype(float)),
        ]
        if getattr(self, "signals", False):  # absent in models trained before the signals existed
            signals = (self.signal_imputer.transform(data.signals) - self.signal_center) / self.signal_scale
            blocks += [sparse.csr_matrix(signals), sparse.csr_matrix(np.isnan(data.signals[:, -1:]).astype(float))]
        return sparse.hstack(blocks).tocsr()

    def logit(self, data: Snapshots) -> np.ndarray:
        """Unshrunk log-odds of a win."""
        return self.model.decision_function(self._matrix(data))


class DealFactor(BaseModel):
    """One reason for a deal's win probability, in win-probability points."""

    feature: str
    value: str | None
    effect: float  # points of win probability (negative: raises risk)
    text: str


class DealScore(BaseModel):
    """A deal's win probability from history, with the factors that moved it."""

    id: str
    win_probability: float
    factors: list[DealFactor]
    model_version: str
    source: str


class DealModel:
    """A trained deal model: features, fitted regression, shrinkage toward the base rate."""

    source = "model"

    def __init__(self, mapping: DealMapping, fit: _Fit, base_rate: float, shrink: float, C: float,
                 typical: float, reference: dict, version: str, metrics: dict) -> None:
        self.mapping, self.fit, self.base_rate, self.shrink, self.C = mapping, fit, base_rate, shrink, C
        self.typical, self.reference, self.version, self.metrics = typical, reference, version, metrics
        self.trained_at = datetime.now(UTC).isoformat(timespec="seconds")

    def probabilities(self, data: Snapshots) -> np.ndarray:
        """Shrunk P(win) for snapshot rows."""
        base = _logit(self.base_rate)
        z = base + self.shrink * (self.fit.logit(data) - base) if self.shrink else np.full(len(data.cats), base)
        return 1 / (1 + np.exp(-z))

    def score(self, deals: Sequence[Deal], as_of: Sequence[date]) -> list[DealScore]:
        """P(win) of each deal open at its ``as_of`` date, with factors (occlusion, as for leads)."""
        data = snapshot(deals, self.typical, as_of=as_of)
        p = self.probabilities(data)
        names = ["product", "account", "owner", "value", "age vs typical cycle", "days to close date"]
        names += list(SIGNALS) if getattr(self.fit, "signals", False) else []
        effects = np.zeros((len(names), len(deals)))
        if self.shrink:
            for j in range(len(names)):
                cats, nums, signals = data.cats.copy(), data.nums.copy(), data.signals.copy()
                if j < 3:
                    cats[:, j] = self.reference[names[j]]
                elif j < 6:
                    nums[:, j - 3] = self.reference[names[j]]
                else:
                    signals[:, j - 6] = self.reference[names[j]]
                effects[j] = 100 * (p - self.probabilities(Snapshots(cats, nums, None, data.ages, data.deal, signals)))
        out = []
        for i, deal in enumerate(deals):
            factors = []
            for j in np.argsort(-np.abs(effects[:, i]), kind="stable")[:3]:
                effect = float(effects[j, i])
                if abs(effect) < 0.5:
                    break
                value = (str(data.cats[i, j]) if j < 3 else _num_text(j, data.nums[i, j - 3], self.typical) if j < 6
                         else _signal_text(j - 6, data.signals[i, j - 6]))
                verb = "raises" if effect > 0 else "lowers"
                factors.append(DealFactor(feature=names[j], value=value, effect=round(effect, 1),
                                          text=f"{names[j]} is {value}: {verb} the win probability by "
                                               f"{points(effect)} (historical deals)"))
            out.append(DealScore(id=deal.id, win_probability=round(float(p[i]), 4), factors=factors,
                                 model_version=self.version, source=self.source))
        return out


def _num_text(j: int, x: float, typical: float) -> str:
    if math.isnan(x):
        return "not given"
    if j == 3:
        return f"{math.expm1(x):,.0f}"
    if j == 4:
        return f"{x * typical:.0f} days (typical cycle {typical:.0f})"
    return f"{x:.0f} days"


def _signal_text(k: int, x: float) -> str:
    if math.isnan(x):
        return "not known"
    if k < 3:
        return f"{math.expm1(x):.0f}"
    return ("yes" if x else "no") if k < 5 else f"{x:.0f} days"


def _select(train: Sequence[Deal], valid: Sequence[Deal], signals: bool = False) -> tuple[float, float, dict]:
    """(C, λ, validation figures): the pair with the lowest validation Brier, kept only if its gain over
    the base rate is clear (more than two standard errors, deals as clusters); otherwise λ = 0."""
    typical = typical_cycle(train)
    tr, va = snapshot(train, typical), snapshot(valid, typical)
    base = float(tr.y.mean())
    base_logit = _logit(base)
    base_loss = (base - va.y) ** 2
    best: tuple[float, float, float, np.ndarray] | None = None
    briers = {"base_rate": round(float(base_loss.mean()), 5)}
    for C in C_GRID:
        z = _Fit(tr, C, signals).logit(va)
        for shrink in SHRINK_GRID[1:]:
            p = 1 / (1 + np.exp(-(base_logit + shrink * (z - base_logit))))
            loss = (p - va.y) ** 2
            briers[f"C={C},shrink={shrink}"] = round(float(loss.mean()), 5)
            if best is None or loss.mean() < best[0] - 1e-9:
                best = (float(loss.mean()), shrink, C, loss)
    assert best is not None
    gain = np.bincount(va.deal, weights=base_loss - best[3])  # per validation deal
    n = len(gain)
    se = float(gain.std(ddof=1) * math.sqrt(n)) / len(va.y) if n > 1 else math.inf
    clear = float(gain.sum()) / len(va.y) > 2 * se
    briers["gain"], briers["gain_se"] = round(float(gain.sum()) / len(va.y), 6), round(se, 6)
    return (best[2], best[1], briers) if clear else (best[2], 0.0, briers)


def train_deals(deals: Sequence[Deal], mapping: DealMapping | None = None) -> DealModel:
    """Train on closed deals (won/lost with dates); open deals are ignored."""
    history = closed_deals(deals)
    counts = Counter(d.won for d in history)
    if len(history) < MIN_DEALS or min(counts.get(0, 0), counts.get(1, 0)) < MIN_PER_CLASS:
        raise DataError(
            f"need at least {MIN_DEALS} closed deals with dates and {MIN_PER_CLASS} won and lost; "
            f"got {len(history)} ({counts.get(1, 0)} won)"
        )
    cut = int(len(history) * 0.75)
    signals = uses_signals(history)
    with one_thread():
        C, shrink, briers = _select(history[:cut], history[cut:], signals)
        typical = typical_cycle(history)
        data = snapshot(history, typical)
        fit = _Fit(data, C, signals)
    reference = {
        "product": Counter(data.cats[:, 0].tolist()).most_common(1)[0][0],
        "account": Counter(data.cats[:, 1].tolist()).most_common(1)[0][0],
        "owner": Counter(data.cats[:, 2].tolist()).most_common(1)[0][0],
        "value": float(np.nanmedian(data.nums[:, 0])) if not np.isnan(data.nums[:, 0]).all() else math.nan,
        "age vs typical cycle": 1.0,
        "days to close date": math.nan,
        **({name: float(np.nanmedian(data.signals[:, k])) if k == 5 and not np.isnan(data.signals[:, k]).all()
            else 0.0 for k, name in enumerate(SIGNALS)} if signals else {}),
    }
    metrics = {
        "deals": len(history),
        "won": counts[1],
        "snapshots": len(data.y),
        "base_rate": round(float(data.y.mean()), 4),
        "typical_cycle_days": typical,
        "C": C,
        "shrink": shrink,
        "signals": list(SIGNALS) if signals else [],
        "validation_brier": briers,
    }
    mapping = mapping or DealMapping()
    version = "deals-" + fingerprint(
        [{"id": d.id, "won": str(d.won), "p": d.product or "", "a": d.account or "", "o": d.owner or "",
          "v": str(d.value), "c": str(d.created), "x": str(d.closed), "e": str(d.expected_close),
          **({"s": str(d.activity)} if signals else {})} for d in history],
        mapping.model_dump_json(), MODEL_FORMAT, sklearn.__version__,
    )
    model = DealModel(mapping, fit, float(data.y.mean()), shrink, C, typical, reference, version, metrics)
    metrics["score_bins"] = score_bins(100 * model.probabilities(data))  # for drift (ai.monitoring)
    return model
