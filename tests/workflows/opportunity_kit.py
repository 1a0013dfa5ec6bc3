"""Shared setup of the opportunity tests: resources, connections to the fakes, workers, an AI stand-in."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from urllib.parse import unquote

import httpx
import yaml
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from activities.ai import AiActivities
from activities.ai_types import Insight, OpportunityInsightInput
from activities.connections import ConnectionActivities
from activities.opportunities import OpportunityActivities
from activities.rule_runs import RuleActivities
from connectors.sharepoint import folder_plan
from hub.auth import ensure_org
from hub.runtime import Hub
from hub.store.connections import Connection, secret_owner
from hub.store.resources import apply_resource
from hub.store.secrets import put_secret
from rules.defaults import PEAK_PIPELINE
from tests.conftest import bearer
from tests.fakes.graph_server import DRIVE_ID, GraphFake
from tests.fakes.slack_server import SlackFake
from workflows.opportunity import OpportunityWorkflow

ORG = "acme"
GRAPH_TOKEN = "graph-test-token"
SLACK_TOKEN = "xoxb-test-token"


def peak() -> dict:
    """The default PEAK pipeline document shipped with the hub."""
    return yaml.safe_load(PEAK_PIPELINE.read_text())


def rule(name: str, on: str, do: list[dict], *, stage: str | None = None, when: str | None = None) -> dict:
    """A Rule document."""
    spec: dict = {"on": on, "do": do}
    if stage:
        spec["stage"] = stage
    if when:
        spec["when"] = when
    return {"apiVersion": "fulqrun.io/v1", "kind": "Rule", "metadata": {"name": name}, "spec": spec}


async def apply(hub: Hub, *docs: dict, org: str = ORG) -> None:
    """Apply resource documents for an org."""
    async with hub.db.session() as session:
        await ensure_org(session, org)
        for doc in docs:
            await apply_resource(session, org, doc, actor="test")


async def connect(hub: Hub, provider: str, auth_mode: str, config: dict, token: str, org: str = ORG) -> str:
    """An active connection whose stored access token the fake accepts; returns its id."""
    async with hub.db.session() as session:
        await ensure_org(session, org)
        conn = Connection(org_id=org, provider=provider, name=provider, auth_mode=auth_mode, config=config,
                          status="active")
        session.add(conn)
        await session.flush()
        await put_secret(session, hub.vault, org, secret_owner(conn.id), "access_token", token)
        return conn.id


def opportunity_body(name: str = "Globex expansion", **changes: object) -> dict:
    """A CRM opportunity body (MEDDPICC all zero unless changed)."""
    body: dict = {
        "name": name,
        "branch": "emea",
        "owner_role": "ae",
        "amount": 120000.0,
        "currency": "EUR",
        "meddpicc": {"metrics": 0, "economic_buyer": 0, "identify_pain": 0, "champion": 0, "paper_process": 0},
        "close_date": "2025-12-31",
        "account": {"name": "Globex", "domain": "globex.example"},
        "contacts": [{"name": "Hank Scorpio", "email": "hank@globex.example"}],
    }
    for key, value in changes.items():
        if key == "meddpicc":
            body["meddpicc"] = {**body["meddpicc"], **value}  # type: ignore[dict-item]
        else:
            body[key] = value
    return body


class AiStandIn:
    """Stands in for the AI activity ``ai.next_action`` (same name and types) where a test must control it:
    it records its calls and can be made to block."""

    def __init__(self) -> None:
        self.calls: list[OpportunityInsightInput] = []
        self.release: asyncio.Event | None = None  # set: calls wait for it
        self.entered = asyncio.Event()

    @activity.defn(name="ai.next_action")
    async def next_action(self, input: OpportunityInsightInput) -> Insight:
        """Risk falls as checklist items get done; the next action names the stage."""
        self.calls.append(input)
        self.entered.set()
        if self.release is not None:
            await self.release.wait()
        done = sum(1 for v in input.checklist.values() if v)
        return Insight(
            risk_score=max(5.0, 90.0 - 10 * done),
            risk_factors=[] if done else [{"code": "empty_checklist"}],
            next_actions=[{"code": "advance", "title": f"advance {input.opp.get('name')} beyond {input.stage}"}],
            model_version="stand-in-1",
            source="test",
        )


def main_activities(hub: Hub, ai: AiStandIn | None) -> list:
    """The main-queue activities of the opportunity workflow; the real AI activity unless a stand-in is given."""
    next_action = ai.next_action if ai is not None else AiActivities(hub).next_action
    opp, rules = OpportunityActivities(hub, insight=next_action), RuleActivities(hub)
    return [opp.prepare, opp.project, opp.send_crm_event, rules.plan, rules.record_runs, rules.record_retry,
            next_action]


def main_worker(hub: Hub, client: Client, task_queue: str, ai: AiStandIn | None = None) -> Worker:
    """The opportunity workflow and its main-queue activities."""
    return Worker(client, task_queue=task_queue, workflows=[OpportunityWorkflow], activities=main_activities(hub, ai))


@asynccontextmanager
async def provider_workers(
    hub: Hub, client: Client, task_queue: str, providers: tuple[str, ...] = ("sharepoint", "slack")
) -> AsyncIterator[None]:
    """One ``connector.run_action`` worker per provider queue (``{task_queue}-{provider}``)."""
    connections = ConnectionActivities(hub)
    async with AsyncExitStack() as stack:
        for provider in providers:
            await stack.enter_async_context(
                Worker(client, task_queue=f"{task_queue}-{provider}", activities=[connections.run_action])
            )
        yield
    await connections.aclose()


@asynccontextmanager
async def workers(
    hub: Hub, client: Client, task_queue: str, ai: AiStandIn | None = None,
    providers: tuple[str, ...] = ("sharepoint", "slack"),
) -> AsyncIterator[Worker]:
    """The opportunity worker on ``task_queue`` (yielded) plus one worker per provider queue."""
    async with provider_workers(hub, client, task_queue, providers), main_worker(hub, client, task_queue, ai) as w:
        yield w


TEMPLATES = ["Account research.docx", "Discovery notes.docx", "Mutual action plan.xlsx", "Proposal.docx",
             "Order form.docx", "Success plan.docx"]


@contextmanager
def graph_fake() -> Iterator[GraphFake]:
    """The Graph fake with the PEAK pipeline's templates in ``Templates/``."""
    with GraphFake(tokens=(GRAPH_TOKEN,)) as fake:
        for name in TEMPLATES:
            fake.add_file(f"Templates/{name}")
        yield fake


async def connect_fakes(hub: Hub, graph: GraphFake, slack: SlackFake | None = None) -> None:
    """Active Microsoft (SharePoint) and Slack connections pointing at the fakes."""
    await connect(hub, "microsoft", "client_credentials",
                  {"tenant_id": "t", "client_id": "c", "base_url": graph.url + "/v1.0", "drive_id": DRIVE_ID,
                   "copy_poll_interval_s": 0.01, "copy_timeout_s": 5}, GRAPH_TOKEN)
    if slack is not None:
        await connect(hub, "slack", "oauth2_code_pkce", {"base_url": slack.url + "/api"}, SLACK_TOKEN)


async def settle(api: httpx.AsyncClient, key: str, opp: str, timeout: float = 20) -> dict:
    """The opportunity once every queued effect is done."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        view = (await api.get(f"/v1/opportunities/{opp}", headers=bearer(key))).json()
        assert "pending_effects" in view, view
        if view["pending_effects"] == 0:
            return view
        assert asyncio.get_running_loop().time() < deadline, f"effects still pending: {view}"
        await asyncio.sleep(0.05)


def folder_requests(graph: GraphFake) -> Counter[str]:
    """How many times each folder path was asked for (POST …/children), whatever the answer."""
    seen: Counter[str] = Counter()
    for r in graph.calls("/children$", "POST"):
        path = unquote(r.path)
        parent = path.split("/root:/", 1)[1].rsplit(":/children", 1)[0] if "/root:/" in path else ""
        seen[f"{parent}/{r.json()['name']}".lstrip("/")] += 1
    return seen


def stage_folder_requests(oid: str, stages: list[dict]) -> Counter[str]:
    """The folder requests one run of ensure_folders + copy_template per entered stage makes."""
    once: Counter[str] = Counter()
    for stage in stages:
        once.update(folder_plan(f"Opportunities/{oid}", stage["folders"]))
        for template in stage["templates"]:
            once.update(folder_plan(f"Opportunities/{oid}/{template['target'].rsplit('/', 1)[0]}", []))
    return once
