"""Activities of the OpportunityWorkflow: keep the projection current, send signed CRM events."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

import httpx
from sqlalchemy import func, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ai_types import Insight, OpportunityInsightInput
from activities.date_triggers import date_rules
from activities.opportunity_types import (
    CrmDelivery,
    CrmEventInput,
    Preparation,
    PrepareInput,
    ProjectInput,
)
from activities.rule_runs import current_rules, plan_events
from connectors.catalogue import catalogue
from hub import crm_signing
from hub.egress import DestinationRefused
from hub.flags import flag_enabled
from hub.runtime import Hub
from hub.store.connections import Connection
from hub.store.opportunities import write_projection
from hub.store.orgs import Org
from hub.store.secrets import get_secret, put_secret
from rules.engine import compile_rules

PREPARE = "opportunity.prepare"
PROJECT = "opportunity.project"
SEND_CRM_EVENT = "opportunity.send_crm_event"
CRM_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

#: Computes an opportunity's AI insight (``AiActivities.next_action``, or a test's stand-in).
InsightFn = Callable[[OpportunityInsightInput], Awaitable[Insight]]


async def crm_signing_secret(hub: Hub, org_id: str, rotate: bool = False) -> str:
    """The org's CRM signing secret, created on first use (or replaced when ``rotate``)."""
    owner = crm_signing.secret_owner(org_id)
    async with hub.db.session() as session:
        current = None if rotate else await get_secret(session, hub.vault, owner, crm_signing.SECRET_NAME)
        if current is None:
            current = crm_signing.new_secret()
            await put_secret(session, hub.vault, org_id, owner, crm_signing.SECRET_NAME, current)
    return current


class OpportunityActivities:
    """Side effects of the opportunity workflow; the runtime (database, vault) and the AI insight are injected."""

    def __init__(self, hub: Hub, insight: InsightFn | None = None) -> None:
        self.hub = hub
        self.insight = insight
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        """One pooled HTTP client for CRM callbacks, through the egress policy (the URL is the tenant's)."""
        if self._http is None:
            self._http = self.hub.egress.httpx_client(timeout=CRM_TIMEOUT, follow_redirects=False)
        return self._http

    @activity.defn(name=PREPARE)
    async def prepare(self, input: PrepareInput) -> Preparation:
        """One read for a transition's effects: the rule plan, a provider connection, the CRM callback URL, the
        relative-date rules to arm timers for;
        and, when asked, the AI insight (a failure of which is returned, not raised: the workflow then runs
        ``ai.next_action`` with its own retries)."""
        input = input.whole()
        provider = catalogue().for_action(input.provider_action).key
        async with self.hub.db.session() as session:
            ruleset = await current_rules(session, input.org_id)
            connected = await session.scalar(
                select(func.count()).select_from(Connection).where(
                    Connection.org_id == input.org_id, Connection.provider == provider, Connection.status == "active"
                )
            )
            org = await session.get(Org, input.org_id)
            insights = await flag_enabled(session, input.org_id, "ai.insights")
        prep = Preparation(
            plan=plan_events(ruleset, input.events),
            provider_connected=bool(connected),
            crm_callback=bool(org and org.crm_callback_url),
            insights=insights,
            date_rules=date_rules(compile_rules(ruleset.runnable), self.hub.settings.day_seconds),
        )
        if input.insight is not None and insights:
            if self.insight is None:
                prep.insight_error = "no AI insight in this worker"
            else:
                try:
                    prep.insight = await self.insight(input.insight)
                except Exception as exc:  # noqa: BLE001 - any failure: the workflow falls back to ai.next_action
                    prep.insight_error = f"{type(exc).__name__}: {exc}"
        return prep

    @activity.defn(name=PROJECT)
    async def project(self, input: ProjectInput) -> bool:
        """Write the workflow's state into the projection tables (older revisions never overwrite newer)."""
        state = input.state
        row = {
            "org_id": state.org_id,
            "id": state.opportunity_id,
            "workflow_id": input.workflow_id,
            "pipeline_name": state.pipeline.name,
            "pipeline_version": state.pipeline.version,
            "stage": state.stage,
            "body_hash": state.body_hash,
            "revision": state.revision,
            "state": state.model_dump(mode="json"),
            "created_at": state.created_at,
            "updated_at": state.updated_at,
            "branch": state.opp.get("branch"),
            "owner": state.owner,
            "archived": state.archived,
        }
        visits = [
            {
                "idx": i,
                "pipeline_name": state.pipeline.name,
                "stage": v.stage,
                "entered_at": v.entered_at,
                "exited_at": v.exited_at,
            }
            for i, v in enumerate(state.visits)
        ]
        return await self.hub.db.write(write_projection, row, visits, rows=1 + len(visits))

    @activity.defn(name=SEND_CRM_EVENT)
    async def send_crm_event(self, input: CrmEventInput) -> CrmDelivery:
        """POST one signed event to the org's CRM callback URL; raise (and so retry) until it answers 2xx."""
        async with self.hub.db.session() as session:
            org = await session.get(Org, input.org_id)
            url = org.crm_callback_url if org else None
        if not url:
            return CrmDelivery(delivered=False)
        secret = await crm_signing_secret(self.hub, input.org_id)
        body = json.dumps(
            {
                "id": input.event_id,
                "type": input.type,
                "org_id": input.org_id,
                "occurred_at": input.occurred_at.isoformat(),
                "data": input.data,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "FulQrun-Hub/1",
            crm_signing.SIGNATURE_HEADER: crm_signing.sign(secret, body, int(time.time())),
            crm_signing.EVENT_ID_HEADER: input.event_id,
            crm_signing.EVENT_TYPE_HEADER: input.type,
        }
        try:
            response = await self.http.post(url, content=body, headers=headers)
        except DestinationRefused as exc:
            raise ApplicationError(f"CRM callback refused: {exc}", type="DestinationRefused",
                                   non_retryable=True) from None
        except httpx.HTTPError as exc:
            raise ApplicationError(f"CRM callback unreachable: {type(exc).__name__}", type="CrmUnreachable") from None
        if not 200 <= response.status_code < 300:
            raise ApplicationError(f"CRM callback answered {response.status_code}", type="CrmRejected")
        return CrmDelivery(delivered=True, status=response.status_code, url=url)
