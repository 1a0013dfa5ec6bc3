"""The sharepoint.* actions over httpx against the Graph fake: folders, templates, subscriptions, items."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import ValidationError

from connectors.base import ProviderError
from connectors.sharepoint import (
    MAX_SUBSCRIPTION_MINUTES,
    CopyTemplate,
    EnsureFolders,
    GetItem,
    RenewSubscription,
    Subscribe,
    clean_path,
    copy_template,
    create_subscription,
    ensure_folders,
    folder_plan,
    get_item,
    renew_subscription,
)
from tests.fakes.context import action_context
from tests.fakes.graph_server import APP_ID, DRIVE_ID, GraphFake

TOKEN = "graph-test-token"
PEAK = ["01 Prospect/Research", "01 Prospect/Notes", "02 Engage/Proposals", "03 Acquire/Contracts", "04 Keep"]


@pytest.fixture
def graph() -> Iterator[GraphFake]:
    with GraphFake(tokens=(TOKEN,)) as fake:
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


HOOK = "https://hub.example.com/webhooks/microsoft/con_test"


def ctx_for(fake: GraphFake, http: httpx.AsyncClient, token: str = TOKEN, secrets: dict[str, str] | None = None):
    config = {"drive_id": DRIVE_ID, "client_id": APP_ID, "copy_poll_interval_s": 0.01, "copy_timeout_s": 5}
    return action_context("microsoft", fake.url + "/v1.0", http, token=token, config=config,
                          secrets={"client_state": "state-new\nstate-old"} if secrets is None else secrets)


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_paths_are_cleaned_and_planned_parents_first() -> None:
    assert clean_path(' Acme: "Big" deal?/ 01 Prospect. /') == "Acme- -Big- deal-/01 Prospect"
    assert folder_plan("Opps/Acme", ["01 Prospect/Research", "01 prospect/Notes"]) == [
        "Opps", "Opps/Acme", "Opps/Acme/01 Prospect", "Opps/Acme/01 Prospect/Research", "Opps/Acme/01 prospect/Notes"]


async def test_ensure_folders_twice_creates_every_folder_exactly_once(graph: GraphFake,
                                                                      http: httpx.AsyncClient) -> None:
    params = EnsureFolders(root="Opportunities/Acme - opp-1", folders=PEAK)
    first = await ensure_folders(ctx_for(graph, http), params)
    expected = folder_plan(params.root, PEAK)
    assert first["created"] == expected and first["existing"] == []
    assert graph.folder_paths() == sorted(expected)
    assert first["root"]["web_url"].endswith("/Opportunities/Acme%20-%20opp-1")
    posts = graph.calls("/children$", "POST")
    assert all(r.json()["@microsoft.graph.conflictBehavior"] == "fail" for r in posts)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in graph.requests)

    second = await ensure_folders(ctx_for(graph, http), params)
    assert second["created"] == [] and second["existing"] == expected
    assert graph.folder_paths() == sorted(expected)  # nothing created twice
    assert second["root"]["id"] == first["root"]["id"]


async def test_ensure_folders_fills_in_a_partial_tree(graph: GraphFake, http: httpx.AsyncClient) -> None:
    graph.add_folder("Opportunities/Acme/01 Prospect")
    out = await ensure_folders(ctx_for(graph, http), EnsureFolders(root="Opportunities/Acme",
                                                                   folders=["01 PROSPECT/Notes", "02 Engage"]))
    assert out["existing"] == ["Opportunities", "Opportunities/Acme", "Opportunities/Acme/01 PROSPECT"]
    assert out["created"] == ["Opportunities/Acme/01 PROSPECT/Notes", "Opportunities/Acme/02 Engage"]
    assert "Opportunities/Acme/01 Prospect/Notes" in graph.folder_paths()


async def test_concurrent_runs_create_each_folder_once(graph: GraphFake, http: httpx.AsyncClient) -> None:
    params = EnsureFolders(root="Opps/Acme", folders=PEAK)
    runs = await asyncio.gather(*(ensure_folders(ctx_for(graph, http), params) for _ in range(3)))
    expected = folder_plan(params.root, PEAK)
    assert graph.folder_paths() == sorted(expected)
    assert sorted(p for run in runs for p in run["created"]) == sorted(expected)


async def test_a_file_in_the_way_is_an_error(graph: GraphFake, http: httpx.AsyncClient) -> None:
    graph.add_file("Opps/Acme")
    with pytest.raises(ProviderError) as err:
        await ensure_folders(ctx_for(graph, http), EnsureFolders(root="Opps/Acme"))
    assert err.value.status == 409 and "is a file" in err.value.message


async def test_copy_template_follows_the_monitor_and_is_idempotent(graph: GraphFake, http: httpx.AsyncClient) -> None:
    template = graph.add_file("Templates/MSA.docx", b"msa")
    params = CopyTemplate(source="Templates/MSA.docx", root="Opps/Acme", target="03 Acquire/Contracts/")
    out = await copy_template(ctx_for(graph, http), params)
    assert out["created"] is True and out["path"] == "Opps/Acme/03 Acquire/Contracts/MSA.docx"
    copy = graph.find(out["path"])
    assert copy is not None and copy["id"] == out["id"] and copy["content"] == b"msa" and copy["id"] != template["id"]
    (req,) = graph.calls("/copy$", "POST")
    assert req.query["@microsoft.graph.conflictBehavior"] == ["fail"]
    monitor = graph.calls("^/monitor/")
    assert len(monitor) == 2 and all("authorization" not in r.headers for r in monitor)  # 202 then 200

    again = await copy_template(ctx_for(graph, http), params)
    assert again == {**out, "created": False}
    assert len(graph.calls("/copy$", "POST")) == 1


async def test_copy_conflict_from_a_concurrent_run_is_success(graph: GraphFake, http: httpx.AsyncClient) -> None:
    graph.add_file("Templates/MSA.docx")
    graph.add_folder("Opps/Acme")
    params = CopyTemplate(source="Templates/MSA.docx", root="Opps/Acme", target="MSA - Acme.docx")
    # the target appears between our existence check and the copy's completion
    graph.copy_polls = 1
    ctx = ctx_for(graph, http)
    task = asyncio.create_task(copy_template(ctx, params))
    while not graph.operations:
        await asyncio.sleep(0.005)
    racer = graph.add_file("Opps/Acme/MSA - Acme.docx", b"other run")
    out = await task
    assert out["created"] is False and out["id"] == racer["id"]
    assert next(iter(graph.operations.values()))["status"] == "failed"


async def test_copy_answering_409_name_already_exists_is_success(graph: GraphFake, http: httpx.AsyncClient) -> None:
    graph.add_file("Templates/MSA.docx")
    made: list[dict] = []

    async def racing_conflict(scope, receive, send) -> None:  # another run's copy lands first
        made.append(graph.add_file("Opps/Acme/MSA.docx", b"other run"))
        await graph.error(409, "nameAlreadyExists", "The specified item name already exists.")(scope, receive, send)

    graph.inject(racing_conflict, path="/copy$")
    out = await copy_template(ctx_for(graph, http), CopyTemplate(source="Templates/MSA.docx", root="Opps/Acme",
                                                                 target="MSA.docx"))
    assert out["created"] is False and out["id"] == made[0]["id"]
    assert graph.operations == {}


async def test_missing_template_and_expired_token(graph: GraphFake, http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as err:
        await copy_template(ctx_for(graph, http), CopyTemplate(source="Templates/Nope.docx", target="x/"))
    assert err.value.status == 404 and "Templates/Nope.docx" in err.value.message
    with pytest.raises(ProviderError) as err:
        await ensure_folders(ctx_for(graph, http, token="expired"), EnsureFolders(root="Opps"))
    assert (err.value.status, err.value.code) == (401, "InvalidAuthenticationToken")


async def test_rate_limit_surfaces_retry_after(graph: GraphFake, http: httpx.AsyncClient) -> None:
    graph.rate_limit(5, path="/children$")
    with pytest.raises(ProviderError) as err:
        await ensure_folders(ctx_for(graph, http), EnsureFolders(root="Opps", folders=["A"]))
    assert (err.value.status, err.value.code) == (429, "TooManyRequests")
    assert err.value.headers["retry-after"] == "5"
    out = await ensure_folders(ctx_for(graph, http), EnsureFolders(root="Opps", folders=["A"]))
    assert out["created"] == ["Opps", "Opps/A"]


async def test_fake_pages_children_and_delta(graph: GraphFake, http: httpx.AsyncClient) -> None:
    """The fake's lists (for the sync work): @odata.nextLink pages, then a deltaLink that yields only changes."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for i in range(5):
        graph.add_file(f"Docs/file{i}.docx")
    url = f"{graph.url}/v1.0/drives/{DRIVE_ID}/root:/Docs:/children"
    page = (await http.get(url, params={"$top": 2}, headers=auth)).json()
    names = [i["name"] for i in page["value"]]
    while "@odata.nextLink" in page:
        page = (await http.get(page["@odata.nextLink"], headers=auth)).json()
        names += [i["name"] for i in page["value"]]
    assert names == [f"file{i}.docx" for i in range(5)]

    link, seen = f"{graph.url}/v1.0/drives/{DRIVE_ID}/root/delta?$top=3", []
    while True:
        page = (await http.get(link, headers=auth)).json()
        seen += [i["name"] for i in page["value"]]
        if "@odata.deltaLink" in page:
            break
        link = page["@odata.nextLink"]
    assert {"root", "Docs", "file4.docx"} <= set(seen) and len(seen) == 7
    graph.add_file("Docs/new.docx")
    graph.delete(graph.find("Docs/file0.docx")["id"])
    changes = (await http.get(page["@odata.deltaLink"], headers=auth)).json()
    by_name = {i["name"]: i for i in changes["value"]}
    assert "new.docx" in by_name and by_name["file0.docx"]["deleted"] == {"state": "deleted"}
    assert "file1.docx" not in by_name


async def test_create_subscription_speaks_graph_and_never_makes_two(graph: GraphFake, http: httpx.AsyncClient) -> None:
    out = await create_subscription(ctx_for(graph, http), Subscribe(notification_url=HOOK))
    [post] = graph.calls("^/v1.0/subscriptions$", "POST")
    body = post.json()
    assert body["changeType"] == "updated" and body["resource"] == f"drives/{DRIVE_ID}/root"
    assert body["notificationUrl"] == body["lifecycleNotificationUrl"] == HOOK
    assert body["clientState"] == "state-new"  # the newest value: what the receiver checks first
    lifetime = _at(body["expirationDateTime"]) - datetime.now(UTC)
    assert timedelta(minutes=4229) < lifetime <= timedelta(minutes=4230)
    assert out["created"] is True and list(graph.subscriptions) == [out["id"]]

    again = await create_subscription(ctx_for(graph, http), Subscribe(notification_url=HOOK, minutes=60))
    assert again["created"] is False and again["id"] == out["id"]  # a retry renews instead of subscribing twice
    assert len(graph.calls("^/v1.0/subscriptions$", "POST")) == 1
    [patch] = graph.calls("^/v1.0/subscriptions/", "PATCH")
    assert patch.json().keys() == {"expirationDateTime"}


async def test_renew_moves_the_expiry_out(graph: GraphFake, http: httpx.AsyncClient) -> None:
    sub = graph.add_subscription(HOOK, minutes=30)
    before = _at(sub["expirationDateTime"])
    out = await renew_subscription(ctx_for(graph, http), RenewSubscription(subscription_id=sub["id"],
                                                                             notification_url=HOOK))
    assert out == {"id": sub["id"], "resource": f"drives/{DRIVE_ID}/root", "expiration": out["expiration"],
                   "created": False}
    assert _at(out["expiration"]) - before > timedelta(days=2)
    assert [r.path for r in graph.calls(method="PATCH")] == [f"/v1.0/subscriptions/{sub['id']}"]
    assert graph.calls("^/v1.0/subscriptions$", "POST") == []


async def test_renewing_a_subscription_graph_lost_subscribes_again(graph: GraphFake, http: httpx.AsyncClient) -> None:
    gone = graph.add_subscription(HOOK)
    graph.subscriptions.clear()
    out = await renew_subscription(ctx_for(graph, http), RenewSubscription(subscription_id=gone["id"],
                                                                             notification_url=HOOK, minutes=120))
    assert out["created"] is True and out["id"] != gone["id"] and list(graph.subscriptions) == [out["id"]]
    [post] = graph.calls("^/v1.0/subscriptions$", "POST")
    assert post.json()["notificationUrl"] == HOOK and post.json()["clientState"] == "state-new"


async def test_subscription_needs_a_client_state_and_a_lifetime_graph_allows(graph: GraphFake,
                                                                           http: httpx.AsyncClient) -> None:
    with pytest.raises(ProviderError) as err:
        await create_subscription(ctx_for(graph, http, secrets={}), Subscribe(notification_url=HOOK))
    assert err.value.code == "missing_secret" and graph.subscriptions == {}
    with pytest.raises(ValidationError):
        Subscribe(notification_url=HOOK, minutes=MAX_SUBSCRIPTION_MINUTES + 1)
    with pytest.raises(ProviderError) as err:  # Graph refuses http notification URLs
        await create_subscription(ctx_for(graph, http), Subscribe(notification_url="http://localhost:8000/webhooks/microsoft/con_test"))
    assert err.value.status == 400 and "HTTPS" in err.value.message


async def test_get_item_gives_the_path_and_who_wrote_it(graph: GraphFake, http: httpx.AsyncClient) -> None:
    user_file = graph.add_file("Opportunities/opp-1/03 Acquire/Contracts/Acme - Order form.docx")
    graph.add_file("Templates/MSA.docx")
    copied = await copy_template(ctx_for(graph, http), CopyTemplate(source="Templates/MSA.docx", target="x/",
                                                                    root="Opportunities/opp-1"))
    ctx = ctx_for(graph, http)
    mine = await get_item(ctx, GetItem(item_id=user_file["id"]))
    assert mine == {"id": user_file["id"], "name": "Acme - Order form.docx", "folder": False, "deleted": False,
                    "path": "Opportunities/opp-1/03 Acquire/Contracts/Acme - Order form.docx",
                    "web_url": mine["web_url"], "by_hub": False}
    assert (await get_item(ctx, GetItem(item_id=copied["id"])))["by_hub"] is True  # the hub's own template copy
    folder = await get_item(ctx, GetItem(item_id=graph.find("Opportunities/opp-1")["id"], drive_id=DRIVE_ID))
    assert folder["folder"] is True and folder["path"] == "Opportunities/opp-1"
    graph.delete(user_file["id"])
    gone = await get_item(ctx, GetItem(item_id=user_file["id"]))
    assert gone["deleted"] is True and gone["path"] is None
