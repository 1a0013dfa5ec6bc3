"""The AI models as the hub runs them: per-org training and activation, loading (cached), lead scoring.

Each org trains on its own history (``fulqrun-hub ai train-leads --org``, or ``POST /v1/ai/models``);
until it has, scores come from the priors (``LeadPrior``, the PEAK stage prior) with ``source: prior``.
``train_demo`` trains the demo org from ``HUB_SHARED_DATA`` at ``make run``, caching the model files
under ``$HUB_DATA_DIR/ai-cache`` so later starts only load them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import sklearn

from ai import artifacts, deals, leads
from ai.artifacts import Model
from ai.deals import read_deals, train_deals
from ai.leads import LeadModel, LeadPrior, LeadScore, train_leads
from ai.monitoring import observe_score
from ai.tabular import read_csv
from hub.store.ai import (
    AiModel,
    Lead,
    activate_model,
    active_model_row,
    model_artifact,
    new_model_id,
    record_insight,
)
from hub.store.base import utcnow
from hub.store.inbox import HUB_CONNECTION, HUB_PROVIDER, NewEvent, insert_new
from hub.store.orgs import record_audit

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger("ai.service")

KINDS = ("leads", "deals")
DEMO_SOURCES = {
    "leads": ("lead_scoring_x_education", "Leads.csv"),
    "deals": ("maven_crm_sales_opportunities", "sales_pipeline.csv"),
}
_CACHE_SIZE = 16
_models: OrderedDict[str, Model] = OrderedDict()  # model id → loaded model (ids are unique per row)
LEAD_PRIOR = LeadPrior()


async def register_model(hub: Hub, org_id: str, model: Model, actor: str, data: bytes | None = None,
                         origin: str = "upload", activate: bool = True) -> AiModel:
    """Store a trained model (``data``: its artifact bytes, when already made) as the org's active model of its
    kind (with ``activate`` False: stored beside it, e.g. a challenger that was not promoted)."""
    from hub.auth import ensure_org

    if data is None:
        data = await asyncio.to_thread(artifacts.dumps, model)
    kind = artifacts.kind_of(model)
    row = AiModel(id=new_model_id(), org_id=org_id, kind=kind, version=model.version, metrics=model.metrics,
                  mapping=model.mapping.model_dump(), artifact=data, artifact_sha256=artifacts.sha256(data),
                  created_by=actor, origin=origin)
    async with hub.db.session() as session:
        await ensure_org(session, org_id)
        if not activate:
            row.active = False
            session.add(row)
            await session.flush()
            return row
        row = await activate_model(session, row)
        await record_audit(session, org_id, actor, "ai_model.activated", f"ai_model/{row.id}",
                           {"kind": kind, "version": model.version})
    _models[row.id] = model
    return row


async def active_model(hub: Hub, org_id: str, kind: str) -> Model | None:
    """The org's active model of ``kind`` (loaded once per process), or None until it has trained."""
    async with hub.db.session() as session:
        row = await active_model_row(session, org_id, kind)
        if row is None:
            return None
        if row.id in _models:
            _models.move_to_end(row.id)
            return _models[row.id]
        stored = await model_artifact(session, row.id)
    assert stored is not None
    model = await asyncio.to_thread(artifacts.loads, stored[0], stored[1], kind)
    _models[row.id] = model
    while len(_models) > _CACHE_SIZE:
        _models.popitem(last=False)
    return model


def lead_record(data: dict) -> dict:
    """The fields a lead model reads: the lead's top-level scalar fields, then its ``fields`` object."""
    record = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
    fields = data.get("fields")
    if isinstance(fields, dict):
        record.update({k: v for k, v in fields.items() if not isinstance(v, dict | list)})
    return record


def lead_created(org_id: str, lead_id: str, data: dict, score: LeadScore) -> NewEvent:
    """The ``lead.created`` event of a new lead, for the inbox: a ``generic`` event of the hub itself
    (connection ``hub``), whose ``data.lead`` — the lead as sent, its id and score — is the rules' ``lead``."""
    body = {"id": f"lead.created:{org_id}/{lead_id}", "type": "lead.created",  # unique across orgs, as ids must be
            "data": {"lead_id": lead_id, "lead": {**data, "id": lead_id, "score": score.score}}}
    return NewEvent(org_id, HUB_CONNECTION, HUB_PROVIDER, body["id"], "lead.created", {}, orjson.dumps(body),
                    "application/json")


async def score_lead(hub: Hub, org_id: str, lead_id: str, data: dict | None = None) -> tuple[Lead, LeadScore]:
    """Score a lead with the org's model for what is known of it now (``LeadModel.for_lead``: at creation, after
    engagement, after sales contact) or the prior, store the lead and its score and the insight; a new lead
    raises ``lead.created`` through the webhook inbox (in the same transaction: durable, once per lead).

    ``data`` None: rescore the stored lead. Raises ``LookupError`` if there is no such lead."""
    model = await active_model(hub, org_id, "leads")
    async with hub.db.session() as session:
        lead = await session.get(Lead, (org_id, lead_id))
        if data is None:
            if lead is None:
                raise LookupError(f"lead {lead_id!r} not found")
            data = lead.data
    record = lead_record(data)
    scorer: LeadModel | LeadPrior = model.for_lead(record) if isinstance(model, LeadModel) else LEAD_PRIOR
    started = time.perf_counter()
    score = (await asyncio.to_thread(scorer.score_records, [record], [lead_id]))[0]
    observe_score(org_id, "lead_score", score.model_version, score.source, time.perf_counter() - started,
                  score.moment, getattr(scorer, "metrics", {}).get("score_bins"), score.score)
    now = utcnow()
    async with hub.db.session() as session:
        lead = await session.get(Lead, (org_id, lead_id))
        if lead is None:
            lead = Lead(org_id=org_id, id=lead_id, created_at=now)
            session.add(lead)
            await insert_new(session, [lead_created(org_id, lead_id, data, score)])
        lead.data = data
        lead.score, lead.low, lead.high = score.score, score.low, score.high
        lead.factors = [f.model_dump() for f in score.factors]
        lead.model_version, lead.source, lead.scored_at, lead.updated_at = score.model_version, score.source, now, now
        lead.moment = score.moment
        await record_insight(session, org_id, "lead", lead_id, "lead_score", score.model_version, score.source,
                             inputs={"lead": record}, output=score.model_dump(),
                             provenance={"engine": "local", "model_version": score.model_version,
                                         "source": score.source})
    return lead, score


def _cache_name(kind: str, path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    trained_by = leads.MODEL_FORMAT if kind == "leads" else deals.MODEL_FORMAT
    digest.update(f"{kind}|{trained_by}|{artifacts.ARTIFACT_FORMAT}|{sklearn.__version__}".encode())
    return f"{kind}-{digest.hexdigest()[:16]}.joblib"


def _train_file(kind: str, path: Path) -> Model:
    if kind == "leads":
        return train_leads(read_csv(path))
    deals, mapping = read_deals(path)
    return train_deals(deals, mapping)


async def _demo_model(hub: Hub, org_id: str, kind: str, path: Path, cached: Path) -> str:
    if cached.exists():
        model = await asyncio.to_thread(artifacts.load, cached, kind)
    else:
        model = await asyncio.to_thread(_train_file, kind, path)
        await asyncio.to_thread(artifacts.save, model, cached)
    async with hub.db.session() as session:
        row = await active_model_row(session, org_id, kind)
    if row is not None and row.version == model.version:
        return f"unchanged {model.version}"
    await register_model(hub, org_id, model, "demo", origin="demo")
    log.info("demo %s model %s (%s)", kind, model.version, model.metrics)
    return f"activated {model.version}"


async def train_demo(hub: Hub, org_id: str) -> dict[str, str]:
    """Train (or load from the cache) the demo org's lead and deal models from the shared data, if present."""
    outcome: dict[str, str] = {}
    cache_dir = hub.settings.data_dir / "ai-cache"
    for kind, parts in DEMO_SOURCES.items():
        path = hub.settings.shared_data.joinpath(*parts)
        if not path.exists():
            outcome[kind] = f"skipped: {path} not found"
            continue
        try:
            outcome[kind] = await _demo_model(hub, org_id, kind, path, cache_dir / _cache_name(kind, path))
        except Exception as exc:  # noqa: BLE001 - the demo starts without this model; say why
            log.warning("demo %s model not trained: %s", kind, exc)
            outcome[kind] = f"failed: {exc}"
    return outcome

