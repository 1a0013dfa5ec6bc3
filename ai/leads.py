"""Lead scoring: P(convert) as a 0–100 score with a 90% interval and its top factors in words.

Training (``train_leads``), from a CSV of historical leads with an outcome column:

1. Features are every column except the id, the outcome, ``drop`` and the **leakage columns**
   (``Tags``, ``Lead Quality``, ``Lead Profile``, ``Asymmetrique*``): labels sales assigns only after
   contacting the lead. They are never features, even when a mapping names them (``DataError``).
   Placeholders (``Select``) and empty cells are missing values. Numeric columns are detected.
2. Two learners: gradient-boosted trees (native categorical splits, a count of missing fields) and a
   strongly regularised logistic regression on every category and number decile *and every pair of
   them* seen together at least ``MIN_CROSS`` times (plus splines of log-scaled numbers). Their
   out-of-fold predictions (stratified K-fold) are stacked and calibrated by a small logistic
   regression. Every step is fitted on the training rows of its fold only.
3. The 90% interval is learned out-of-fold too: the out-of-fold scores are cut into score bands and,
   per band, the realised conversion rate of each held-out fold is compared with the band's scores.
   Its mean offset and spread (never below the binomial spread of a fold's band) give the band's
   interval: the range in which the conversion rate of a held-out group of similarly scored leads
   fell, 90% of the time.
4. Factors: each feature in turn is set to its typical value (mode / median) and the lead rescored;
   the largest changes, in points, are the factors.

Until an org has trained, ``LeadPrior`` scores: a documented scorecard with wide intervals.
"""

from __future__ import annotations

import fnmatch
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import sklearn
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, SplineTransformer

from ai.monitoring import score_bins
from ai.tabular import CategoryCoder, DataError, clean, fingerprint, one_thread, points, to_float

#: Sales-assigned labels known only after contact: never features (glob patterns, case-insensitive).
LEAKAGE_COLUMNS: tuple[str, ...] = ("Tags", "Lead Quality", "Lead Profile", "Asymmetrique*")
MODEL_FORMAT = "fulqrun-lead-model/3"  # bump when training changes: versions and demo caches follow
#: When a lead's fields become known, in order: when it is created (form, source, profile), after it engages
#: (website visits and time), after sales contact (what the sales team last did with it).
MOMENTS: tuple[str, ...] = ("creation", "engagement", "contact")
MISSING = "(missing)"
Z90 = 1.6448536269514722
MIN_ROWS = 50
MIN_PER_CLASS = 10
TOP_FACTORS = 3
MIN_CROSS = 5  # a crossed pair of values is a feature when seen together this often


def is_leakage(column: str) -> bool:
    """Whether a column is one of the post-contact sales labels that must never be a feature."""
    return any(fnmatch.fnmatchcase(column.casefold(), p.casefold()) for p in LEAKAGE_COLUMNS)


class LeadMapping(BaseModel):
    """Which CSV columns mean what. Defaults fit the X Education ``Leads.csv``."""

    model_config = ConfigDict(extra="forbid")

    id_column: str = "Prospect ID"
    outcome_column: str = "Converted"
    positive_values: list[str] = Field(default_factory=lambda: ["1", "yes", "true", "converted", "won"])
    negative_values: list[str] = Field(default_factory=lambda: ["0", "no", "false", "not converted", "lost"])
    drop: list[str] = Field(default_factory=lambda: ["Lead Number"], description="identifiers, not features")
    features: list[str] | None = Field(default=None, description="None: every other non-leakage column")
    numeric: list[str] | None = Field(default=None, description="None: detected from the data")
    placeholders: list[str] = Field(default_factory=lambda: ["Select"], description="values meaning missing")
    known_after: dict[Literal["engagement", "contact"], list[str]] = Field(
        default_factory=lambda: {
            "engagement": ["TotalVisits", "Total Time Spent on Website", "Page Views Per Visit", "visits",
                           "time_on_site", "page_views"],
            "contact": ["Last Activity", "Last Notable Activity", "last_activity"],
        },
        description="columns (glob patterns, case-insensitive) known only after engagement / sales contact; "
        "every other feature is known when the lead is created",
    )

    def moment_of(self, column: str) -> str:
        """The moment a column becomes known: ``creation``, ``engagement`` or ``contact``."""
        for moment in reversed(MOMENTS[1:]):
            if any(fnmatch.fnmatchcase(column.casefold(), p.casefold()) for p in self.known_after.get(moment, [])):
                return moment
        return MOMENTS[0]

    def known_at(self, columns: Sequence[str], moment: str) -> list[str]:
        """The columns known at ``moment`` (in their order)."""
        last = MOMENTS.index(moment)
        return [c for c in columns if MOMENTS.index(self.moment_of(c)) <= last]

    def feature_columns(self, header: Sequence[str]) -> list[str]:
        """The feature columns for a CSV header; leakage columns are refused or left out."""
        if self.features is not None:
            leaked = [c for c in self.features if is_leakage(c)]
            if leaked:
                raise DataError(f"leakage columns can never be features: {', '.join(leaked)}")
            absent = [c for c in self.features if c not in header]
            if absent:
                raise DataError(f"feature columns not in the data: {', '.join(absent)}")
            return list(self.features)
        skip = {self.id_column, self.outcome_column, *self.drop}
        return [c for c in header if c not in skip and not is_leakage(c)]

    def outcome(self, row: dict) -> int | None:
        """1 converted, 0 not, None unknown (the row is not used for training)."""
        value = clean(row.get(self.outcome_column))
        if value is None:
            return None
        folded = value.casefold()
        if folded in {v.casefold() for v in self.positive_values}:
            return 1
        if folded in {v.casefold() for v in self.negative_values}:
            return 0
        return None


class Factor(BaseModel):
    """One reason for a score: the feature, its value, its effect in score points, in words."""

    feature: str
    value: str | None
    effect: float
    text: str


class LeadScore(BaseModel):
    """A lead's score (0–100), its 90% interval, top factors, and where it came from."""

    id: str
    score: float
    low: float
    high: float
    factors: list[Factor]
    model_version: str
    source: str  # "model" (trained on the org's history) or "prior"
    moment: str = MOMENTS[0]  # what the score knew: creation, engagement or contact (``MOMENTS``)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def _fmt(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.3g}"


class _Learner:
    """Boosted trees and a logistic regression on pairwise crosses, fitted together (one per CV fold, one
    final). Every step (category codes, number bins, the crosses kept) is fitted on ``fit``'s rows only."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def fit(self, cats: np.ndarray, nums: np.ndarray, y: np.ndarray) -> _Learner:
        self.coder = CategoryCoder(cats)
        codes = self.coder.encode(cats)
        self.spline = (
            make_pipeline(
                SimpleImputer(strategy="median", keep_empty_features=True),
                FunctionTransformer(_signed_log),
                SplineTransformer(n_knots=6, degree=3),
            ).fit(nums)
            if nums.shape[1]
            else None
        )
        self.trees = HistGradientBoostingClassifier(
            categorical_features=list(range(codes.shape[1])),
            max_iter=200,
            learning_rate=0.06,
            max_leaf_nodes=8,
            min_samples_leaf=30,
            l2_regularization=1.0,
            max_features=0.5,
            early_stopping=False,
            random_state=self.seed,
        ).fit(self._tree_matrix(codes, nums), y)
        self.bins = [_decile_edges(nums[:, j]) for j in range(nums.shape[1])]
        onehot = self._onehot(codes, nums)
        seen = onehot.getnnz(axis=0)  # crossing a value (almost) every row has would copy the other column
        self.crossed = np.flatnonzero((seen >= MIN_CROSS) & (seen <= len(y) - MIN_CROSS))
        self.pairs = None
        if self.crossed.size > 1:
            self.pairs = PolynomialFeatures(2, interaction_only=True, include_bias=False).fit(onehot[:, self.crossed])
            both = self.pairs.transform(onehot[:, self.crossed])[:, self.crossed.size :]  # the pairs, not the values
            self.kept = self.crossed.size + np.flatnonzero(both.getnnz(axis=0) >= MIN_CROSS)
        self.linear = LogisticRegression(C=0.01, max_iter=3000).fit(self._linear_matrix(codes, nums), y)
        return self

    def _tree_matrix(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        missing = np.isnan(nums).sum(axis=1, keepdims=True)
        for j, mapping in enumerate(self.coder.maps):
            if MISSING in mapping:
                missing = missing + (codes[:, j : j + 1] == mapping[MISSING])
        return np.hstack([codes, nums, missing])

    def _onehot(self, codes: np.ndarray, nums: np.ndarray) -> sparse.csr_matrix:
        """One column per category code and per number decile (missing numbers get their own column)."""
        parts = [self.coder.onehot(codes)]
        for j, edges in enumerate(self.bins):
            x = nums[:, j]
            index = np.where(np.isnan(x), len(edges) + 1, np.searchsorted(edges, x, side="right"))
            shape = (len(x), len(edges) + 2)
            parts.append(sparse.csr_matrix((np.ones(len(x)), (np.arange(len(x)), index)), shape=shape))
        return sparse.hstack(parts).tocsr()

    def _linear_matrix(self, codes: np.ndarray, nums: np.ndarray) -> sparse.csr_matrix:
        onehot = self._onehot(codes, nums)
        parts = [onehot]
        if self.pairs is not None:
            parts.append(self.pairs.transform(onehot[:, self.crossed])[:, self.kept])
        if self.spline is not None:
            parts += [sparse.csr_matrix(self.spline.transform(nums)), sparse.csr_matrix(np.isnan(nums).astype(float))]
        return sparse.hstack(parts).tocsr()

    def logits(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        """Both learners' predictions as log-odds, one column each, for coded categories and numbers."""
        p_trees = self.trees.predict_proba(self._tree_matrix(codes, nums))[:, 1]
        p_linear = self.linear.predict_proba(self._linear_matrix(codes, nums))[:, 1]
        return np.column_stack([_logit(p_trees), _logit(p_linear)])


def _decile_edges(x: np.ndarray) -> np.ndarray:
    present = x[~np.isnan(x)]
    return np.unique(np.quantile(present, np.linspace(0, 1, 11)[1:-1])) if present.size else np.array([])


class IntervalTable(BaseModel):
    """Per score band: the offsets (points) from a score to the low and high ends of its 90% interval."""

    edges: list[float]  # inner band edges, ascending (len = bands - 1)
    low: list[float]
    high: list[float]

    def bounds(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) for each score, clipped to 0–100 and always containing the score."""
        band = np.searchsorted(np.asarray(self.edges), scores, side="right")
        low = np.clip(scores + np.asarray(self.low)[band], 0, 100)
        high = np.clip(scores + np.asarray(self.high)[band], 0, 100)
        return np.minimum(low, scores), np.maximum(high, scores)


def learn_intervals(scores: np.ndarray, y: np.ndarray, folds: np.ndarray, bands: int = 10) -> IntervalTable:
    """Learn per-band interval offsets from out-of-fold ``scores`` (0–100), outcomes and fold ids."""
    bands = max(2, min(bands, len(scores) // 100))
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, bands + 1)[1:-1]))
    band = np.searchsorted(edges, scores, side="right")
    low, high = [], []
    for b in range(len(edges) + 1):
        in_band = band == b
        offsets, spreads = [], []
        for f in np.unique(folds):
            cell = in_band & (folds == f)
            n = int(cell.sum())
            if n == 0:
                continue
            rate = 100 * y[cell].mean()
            offsets.append(rate - scores[cell].mean())
            p = min(max(scores[cell].mean() / 100, 0.01), 0.99)
            spreads.append(100 * math.sqrt(p * (1 - p) / n))
        centre = float(np.mean(offsets))
        spread = max(float(np.std(offsets, ddof=1)) if len(offsets) > 1 else 0.0, float(np.mean(spreads)))
        low.append(round(centre - Z90 * spread, 3))
        high.append(round(centre + Z90 * spread, 3))
    return IntervalTable(edges=[round(float(e), 4) for e in edges], low=low, high=high)


class LeadModel:
    """A trained lead model: featurisers, learners, stacker, interval table and typical values.

    It reads the features known at its ``moment`` (the latest one among its columns); ``earlier`` holds the
    models trained on what is known at each earlier moment, and ``for_lead`` picks the one for a lead."""

    source = "model"
    moment = MOMENTS[-1]
    earlier: dict[str, LeadModel] = {}

    def __init__(
        self,
        mapping: LeadMapping,
        categorical: list[str],
        numeric: list[str],
        learner: _Learner,
        stacker: LogisticRegression,
        intervals: IntervalTable,
        reference: dict[str, str | float | None],
        version: str,
        metrics: dict,
    ) -> None:
        self.mapping, self.categorical, self.numeric = mapping, categorical, numeric
        self.learner, self.stacker, self.intervals = learner, stacker, intervals
        self.reference, self.version, self.metrics = reference, version, metrics
        self.trained_at = datetime.now(UTC).isoformat(timespec="seconds")

    @property
    def features(self) -> list[str]:
        """Every feature column, categorical first."""
        return self.categorical + self.numeric

    def known_moment(self, record: dict) -> str:
        """The latest moment for which the lead has a value among this model's features."""
        present = [self.mapping.moment_of(c) for c in self.features
                   if clean(record.get(c), self.mapping.placeholders) is not None]
        return max(present, key=MOMENTS.index, default=MOMENTS[0])

    def for_lead(self, record: dict) -> LeadModel:
        """The model for what is known of this lead now: the latest moment it has reached that a model covers."""
        by_moment = {**self.earlier, self.moment: self}
        reached = MOMENTS.index(self.known_moment(record))
        usable = [m for m in by_moment if MOMENTS.index(m) <= reached]
        return by_moment[max(usable, key=MOMENTS.index)] if usable else by_moment[min(by_moment, key=MOMENTS.index)]

    def matrices(self, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(categorical strings, numbers with NaN) for records keyed by column name."""
        return _matrices(records, self.categorical, self.numeric, self.mapping.placeholders)

    def _scores(self, codes: np.ndarray, nums: np.ndarray) -> np.ndarray:
        return 100 * self.stacker.predict_proba(self.learner.logits(codes, nums))[:, 1]

    def predict(self, records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, low, high) as arrays, without factors (fast path for evaluation and batches)."""
        cats, nums = self.matrices(records)
        with one_thread():
            scores = self._scores(self.learner.coder.encode(cats), nums)
        return (scores, *self.intervals.bounds(scores))

    def score_records(self, records: Sequence[dict], ids: Sequence[str] | None = None) -> list[LeadScore]:
        """Score records (dicts keyed by column name); ids default to the mapping's id column."""
        if not records:
            return []
        cats, nums = self.matrices(records)
        codes = self.learner.coder.encode(cats)
        n, k = cats.shape
        # Occlusion: rescore each lead with one feature at a time set to its typical value (only the
        # leads whose value differs from it), all variants in one batch.
        typical = self.learner.coder.encode(
            np.array([[self.reference[c] for c in self.categorical]], dtype=object).reshape(1, k)
        )[0]
        variants_c, variants_n, where = [codes], [nums], []
        for j, column in enumerate(self.features):
            ref = self.reference[column]
            if j < k:
                rows = np.flatnonzero(codes[:, j] != typical[j])
            else:
                rows = np.flatnonzero(~np.isnan(nums[:, j - k]) if ref is None else nums[:, j - k] != ref)
            if rows.size == 0:
                continue
            c, x = codes[rows].copy(), nums[rows].copy()
            if j < k:
                c[:, j] = typical[j]
            else:
                x[:, j - k] = np.nan if ref is None else ref
            variants_c.append(c)
            variants_n.append(x)
            where.append((j, rows))
        with one_thread():
            batch = self._scores(np.vstack(variants_c), np.vstack(variants_n))
        scores = batch[:n]
        effects = np.zeros((len(self.features), n))
        start = n
        for j, rows in where:
            effects[j, rows] = scores[rows] - batch[start : start + rows.size]
            start += rows.size
        low, high = self.intervals.bounds(scores)
        out = []
        for i, record in enumerate(records):
            lead_id = ids[i] if ids is not None else clean(record.get(self.mapping.id_column)) or str(i + 1)
            out.append(
                LeadScore(
                    id=lead_id,
                    score=round(float(scores[i]), 1),
                    low=round(float(low[i]), 1),
                    high=round(float(high[i]), 1),
                    factors=self._factors(cats[i], nums[i], effects[:, i]),
                    model_version=self.version,
                    source=self.source,
                    moment=self.moment,
                )
            )
        return out

    def _factors(self, cats: np.ndarray, nums: np.ndarray, effects: np.ndarray) -> list[Factor]:
        k = len(self.categorical)
        order = np.argsort(-np.abs(effects), kind="stable")
        factors = []
        for j in order[:TOP_FACTORS]:
            effect = float(effects[j])
            if abs(effect) < 0.5:
                break
            column = self.features[j]
            ref = self.reference[column]
            if j < k:
                value = None if cats[j] == MISSING else str(cats[j])
                what = f"{column} is not given" if value is None else f"{column} is '{value}'"
                typical = "not given" if ref == MISSING else f"'{ref}'"
            else:
                value = None if np.isnan(nums[j - k]) else _fmt(float(nums[j - k]))
                what = f"{column} is not given" if value is None else f"{column} is {value}"
                typical = "not given" if ref is None else _fmt(float(ref))
            verb = "raises" if effect > 0 else "lowers"
            text = f"{what}: {verb} the score by {points(effect)} (typical lead: {typical})"
            factors.append(Factor(feature=column, value=value, effect=round(effect, 1), text=text))
        return factors


def _cells(records: Sequence[dict], columns: list[str], placeholders: Iterable[str]) -> np.ndarray:
    """The records' cleaned cells (``None`` when missing), one column per name."""
    marks = list(placeholders)
    return np.array([[clean(r.get(c), marks) for c in columns] for r in records], dtype=object).reshape(
        len(records), len(columns)
    )


def _split(cells: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(categorical strings, numbers with NaN) from cleaned cells whose first ``k`` columns are categorical."""
    cats = cells[:, :k].copy()
    cats[cats == None] = MISSING  # noqa: E711 - elementwise on an object array
    nums = np.array([[_num(to_float(v)) for v in row] for row in cells[:, k:]], dtype=float).reshape(
        len(cells), cells.shape[1] - k
    )
    return cats, nums


def _matrices(
    records: Sequence[dict], categorical: list[str], numeric: list[str], placeholders: Iterable[str]
) -> tuple[np.ndarray, np.ndarray]:
    return _split(_cells(records, categorical + numeric, placeholders), len(categorical))


def _num(x: float | None) -> float:
    return math.nan if x is None else x


def detect_numeric(cells: np.ndarray, columns: list[str]) -> list[str]:
    """Columns whose present values are (almost) all numbers, with at least three distinct values."""
    numeric = []
    for j, column in enumerate(columns):
        values = [v for v in cells[:, j] if v is not None]
        allowed = 0.02 * len(values)  # stop parsing a column as soon as too many values are not numbers
        ok, failed = set(), 0
        for v in values:
            number = to_float(v)
            if number is not None:
                ok.add(number)
            else:
                failed += 1
                if failed > allowed:
                    break
        if values and failed <= allowed and len(ok) >= 3:
            numeric.append(column)
    return numeric


def train_leads(rows: Sequence[dict], mapping: LeadMapping | None = None, folds: int = 5, seed: int = 0,
                moments: bool = True) -> LeadModel:
    """Train a lead model on historical leads (dicts keyed by column name, with the outcome column); with
    ``moments``, also one per earlier moment on the features known by then (``LeadModel.earlier``)."""
    mapping = mapping or LeadMapping()
    if not rows:
        raise DataError("no rows to train on")
    header = list(rows[0].keys())
    if mapping.outcome_column not in header:
        raise DataError(f"outcome column {mapping.outcome_column!r} not in the data")
    features = mapping.feature_columns(header)
    labelled = [(r, y) for r in rows if (y := mapping.outcome(r)) is not None]
    data = [r for r, _ in labelled]
    y = np.array([y for _, y in labelled], dtype=int)
    counts = Counter(y.tolist())
    if len(data) < MIN_ROWS or min(counts.get(0, 0), counts.get(1, 0)) < MIN_PER_CLASS:
        raise DataError(
            f"need at least {MIN_ROWS} labelled leads and {MIN_PER_CLASS} of each outcome; "
            f"got {len(data)} ({counts.get(1, 0)} converted)"
        )
    cells = _cells(data, features, mapping.placeholders)
    numeric = mapping.numeric if mapping.numeric is not None else detect_numeric(cells, features)
    if stray := [c for c in numeric if c not in features]:
        raise DataError(f"numeric columns must be feature columns: {', '.join(stray)}")
    categorical = [c for c in features if c not in numeric]
    cats, nums = _split(cells[:, [features.index(c) for c in categorical + numeric]], len(categorical))
    k = min(folds, counts[0], counts[1])
    fold_of = np.zeros(len(y), dtype=int)
    oof = np.zeros((len(y), 2))
    with one_thread():
        for f, (train, test) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(cats, y)):
            learner = _Learner(seed).fit(cats[train], nums[train], y[train])
            oof[test] = learner.logits(learner.coder.encode(cats[test]), nums[test])
            fold_of[test] = f
        stacker = LogisticRegression(C=1e4, max_iter=1000).fit(oof, y)
        learner = _Learner(seed).fit(cats, nums, y)
    oof_scores = 100 * stacker.predict_proba(oof)[:, 1]
    intervals = learn_intervals(oof_scores, y, fold_of)
    low, high = intervals.bounds(oof_scores)
    reference: dict[str, str | float | None] = {
        c: Counter(cats[:, j].tolist()).most_common(1)[0][0] for j, c in enumerate(categorical)
    }
    for j, c in enumerate(numeric):
        present = nums[~np.isnan(nums[:, j]), j]
        reference[c] = float(np.median(present)) if present.size else None
    metrics = {
        "rows": len(y),
        "converted": int(y.sum()),
        "base_rate": round(float(y.mean()), 4),
        "oof_auc": round(float(roc_auc_score(y, oof_scores)), 4),
        "oof_brier": round(float(brier_score_loss(y, oof_scores / 100)), 4),
        "mean_interval_width": round(float(np.mean(high - low)), 2),
        "folds": k,
        "score_bins": score_bins(oof_scores),
    }
    version = "leads-" + fingerprint(
        data, mapping.model_dump_json(), MODEL_FORMAT, sklearn.__version__, str(folds), str(seed)
    )
    model = LeadModel(mapping, categorical, numeric, learner, stacker, intervals, reference, version, metrics)
    model.moment = max((mapping.moment_of(c) for c in features), key=MOMENTS.index)
    if moments:
        model.earlier = _earlier_models(data, mapping, features, numeric, model.moment, folds, seed, version)
        metrics["moments"] = {m: _moment_metrics(model.earlier.get(m, model)) for m in (*model.earlier, model.moment)}
    return model


def _earlier_models(rows: Sequence[dict], mapping: LeadMapping, features: list[str], numeric: list[str],
                    last: str, folds: int, seed: int, version: str) -> dict[str, LeadModel]:
    """One model per moment before ``last`` that has features of its own, trained on those known by then."""
    out: dict[str, LeadModel] = {}
    for moment in MOMENTS[: MOMENTS.index(last)]:
        known = mapping.known_at(features, moment)
        if not known or moment not in {mapping.moment_of(c) for c in known}:
            continue
        subset = mapping.model_copy(update={"features": known, "numeric": [c for c in numeric if c in known]})
        model = train_leads(rows, subset, folds, seed, moments=False)
        model.version, model.moment = version, moment  # one model version; the moment says which part scored
        out[moment] = model
    return out


def _moment_metrics(model: LeadModel) -> dict:
    return {"features": len(model.features), "oof_auc": model.metrics["oof_auc"],
            "oof_brier": model.metrics["oof_brier"], "mean_interval_width": model.metrics["mean_interval_width"]}


class LeadPrior:
    """The documented scorecard used until an org has trained a lead model (``source: prior``).

    Log-odds start at the base rate (25%) and move by fixed amounts per signal; the 90% interval is
    a fixed ±25 points because nothing has been learned from the org yet.

    | signal (any of these field names, case-insensitive) | value | log-odds |
    |---|---|---|
    | source: ``source``, ``Lead Source``, ``lead_source`` | referral, reference, partner, word of mouth, event | +1.0 |
    | | paid, ads, chat, cold, list, purchased | -0.4 |
    | time on site (seconds): ``time_on_site``, ``Total Time Spent on Website`` | >= 600 | +0.8 |
    | | 0 | -0.5 |
    | visits: ``visits``, ``TotalVisits`` | >= 3 | +0.3 |
    | do not contact: ``do_not_email``, ``Do Not Email``, ``do_not_call``, ``Do Not Call`` | yes / true | -0.7 |
    | company given: ``company`` | non-empty | +0.2 |
    """

    source = "prior"
    version = "leads-prior-1"
    base_rate = 0.25
    half_width = 25.0
    mapping = LeadMapping()

    def score_records(self, records: Sequence[dict], ids: Sequence[str] | None = None) -> list[LeadScore]:
        """Score records with the scorecard."""
        out = []
        for i, record in enumerate(records):
            folded = {str(k).casefold(): v for k, v in record.items()}
            z = math.log(self.base_rate / (1 - self.base_rate))
            factors = []
            for feature, value, effect, why in _prior_signals(folded):
                z += effect
                factors.append((feature, value, effect, why))
            p = 1 / (1 + math.exp(-z))
            score = 100 * p
            out_factors = []
            for feature, value, effect, why in sorted(factors, key=lambda f: -abs(f[2]))[:TOP_FACTORS]:
                pts = 100 * (p - 1 / (1 + math.exp(-(z - effect))))
                verb = "raises" if pts > 0 else "lowers"
                out_factors.append(
                    Factor(feature=feature, value=value, effect=round(pts, 1),
                           text=f"{why}: {verb} the score by {points(pts)} (prior scorecard)")
                )
            lead_id = ids[i] if ids is not None else clean(record.get("id")) or str(i + 1)
            known = [self.mapping.moment_of(k) for k, v in record.items() if clean(v, ["Select"]) is not None]
            out.append(
                LeadScore(
                    id=lead_id,
                    score=round(score, 1),
                    low=round(max(0.0, score - self.half_width), 1),
                    high=round(min(100.0, score + self.half_width), 1),
                    factors=out_factors,
                    model_version=self.version,
                    source=self.source,
                    moment=max(known, key=MOMENTS.index, default=MOMENTS[0]),
                )
            )
        return out


_GOOD_SOURCES = ("referral", "reference", "partner", "word of mouth", "event")
_WEAK_SOURCES = ("paid", "ads", "chat", "cold", "list", "purchased")


def _first(folded: dict, *names: str) -> str | None:
    for name in names:
        value = clean(folded.get(name.casefold()), ["Select"])
        if value is not None:
            return value
    return None


def _prior_signals(folded: dict) -> list[tuple[str, str, float, str]]:
    signals = []
    source = _first(folded, "source", "Lead Source", "lead_source")
    if source:
        low = source.casefold()
        if any(s in low for s in _GOOD_SOURCES):
            signals.append(("source", source, 1.0, f"source is '{source}'"))
        elif any(s in low for s in _WEAK_SOURCES):
            signals.append(("source", source, -0.4, f"source is '{source}'"))
    seconds = to_float(_first(folded, "time_on_site", "Total Time Spent on Website"))
    if seconds is not None and seconds >= 600:
        signals.append(("time_on_site", _fmt(seconds), 0.8, f"{_fmt(seconds)} seconds on the website"))
    elif seconds == 0:
        signals.append(("time_on_site", "0", -0.5, "no time on the website"))
    visits = to_float(_first(folded, "visits", "TotalVisits"))
    if visits is not None and visits >= 3:
        signals.append(("visits", _fmt(visits), 0.3, f"{_fmt(visits)} website visits"))
    for name in ("do_not_email", "Do Not Email", "do_not_call", "Do Not Call"):
        flag = clean(folded.get(name.casefold()))
        if flag is not None and flag.casefold() in ("yes", "true", "1"):
            signals.append((name, flag, -0.7, "asked not to be contacted"))
            break
    if _first(folded, "company"):
        signals.append(("company", _first(folded, "company") or "", 0.2, "company given"))
    return signals
