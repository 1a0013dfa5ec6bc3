"""Per-org models: register/activate, load (checksum), lead scoring with storage, demo training with cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from ai import artifacts, service
from ai.leads import train_leads
from hub.runtime import Hub
from hub.store.ai import AiInsight, AiModel, Lead
from tests.ai.synthetic import DEAL_HEADER, LEAD_HEADER, PRODUCTS_CSV, deal_rows, lead_rows, to_csv


@pytest.fixture(scope="module")
def lead_model():
    return train_leads(lead_rows(300))


async def test_register_activate_and_load(hub: Hub, lead_model) -> None:
    assert await service.active_model(hub, "acme", "leads") is None
    first = await service.register_model(hub, "acme", lead_model, actor="test")
    other = train_leads(lead_rows(300, seed=7))
    second = await service.register_model(hub, "acme", other, actor="test")
    again = await service.register_model(hub, "acme", lead_model, actor="test")
    assert again.id == first.id and again.active
    async with hub.db.session() as session:
        rows = (await session.scalars(select(AiModel).where(AiModel.org_id == "acme"))).all()
    assert {(r.id, r.active) for r in rows} == {(first.id, True), (second.id, False)}
    service._models.clear()
    loaded = await service.active_model(hub, "acme", "leads")
    assert loaded.version == lead_model.version and await service.active_model(hub, "acme", "deals") is None
    assert await service.active_model(hub, "other", "leads") is None


def test_artifacts_are_checked(lead_model) -> None:
    data = artifacts.dumps(lead_model)
    assert artifacts.loads(data, artifacts.sha256(data)).version == lead_model.version
    with pytest.raises(artifacts.ArtifactError, match="checksum"):
        artifacts.loads(data[:-1] + b"x", artifacts.sha256(data))
    with pytest.raises(artifacts.ArtifactError, match="not a leads model|not a deals model"):
        artifacts.loads(data, kind="deals")


async def test_score_lead_with_prior_then_model(hub: Hub, lead_model) -> None:
    body = {"email": "a@b.example", "source": "Reference", "fields": {"Lead Source": "Reference",
                                                                     "Total Time Spent on Website": "900"}}
    lead, score = await service.score_lead(hub, "acme", "L1", body)
    assert score.source == "prior" and lead.source == "prior" and lead.data == body
    await service.register_model(hub, "acme", lead_model, actor="test")
    lead, score = await service.score_lead(hub, "acme", "L1")
    assert score.source == "model" and lead.model_version == lead_model.version and lead.data == body
    async with hub.db.session() as session:
        insights = (await session.scalars(select(AiInsight).where(AiInsight.subject_id == "L1"))).all()
        stored = await session.get(Lead, ("acme", "L1"))
    assert [i.source for i in insights] == ["prior", "model"]
    assert insights[1].inputs["lead"]["Lead Source"] == "Reference" and insights[1].output["score"] == stored.score
    with pytest.raises(LookupError):
        await service.score_lead(hub, "acme", "nope")


async def test_train_demo_trains_once_and_caches(hub: Hub, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "lead_scoring_x_education").mkdir(parents=True)
    (shared / "maven_crm_sales_opportunities").mkdir()
    (shared / "lead_scoring_x_education" / "Leads.csv").write_bytes(to_csv(lead_rows(300), LEAD_HEADER))
    (shared / "maven_crm_sales_opportunities" / "sales_pipeline.csv").write_bytes(to_csv(deal_rows(300), DEAL_HEADER))
    (shared / "maven_crm_sales_opportunities" / "products.csv").write_bytes(PRODUCTS_CSV)
    hub.settings = hub.settings.model_copy(update={"shared_data": shared})
    first = await service.train_demo(hub, "demo")
    assert first["leads"].startswith("activated leads-") and first["deals"].startswith("activated deals-")
    assert len(list((hub.settings.data_dir / "ai-cache").glob("*.joblib"))) == 2
    assert await service.train_demo(hub, "demo") == {k: v.replace("activated", "unchanged") for k, v in first.items()}
    deals = await service.active_model(hub, "demo", "deals")
    assert deals.mapping.price_list["GTX Pro"] == 4821
    hub.settings = hub.settings.model_copy(update={"shared_data": tmp_path / "absent"})
    skipped = await service.train_demo(hub, "demo")
    assert skipped["leads"].startswith("skipped:") and skipped["deals"].startswith("skipped:")
