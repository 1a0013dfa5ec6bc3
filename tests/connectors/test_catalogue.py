"""The provider catalogue: validated at load, every named action and hook exists, per-connection overrides,
and the worker's per-provider queues at ~90% of the published rate."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util

import pytest
from pydantic import ValidationError
from temporalio.client import Client

from connectors.base import ACTIONS
from connectors.catalogue import catalogue, parse_catalogue
from connectors.events import for_provider
from hub.runtime import Hub

EXPECTED_MODES = {
    "slack": "oauth2_code_pkce", "docusign": "jwt_grant", "stripe": "api_key", "gong": "basic",
    "microsoft": "client_credentials", "openai": "api_key", "generic_oauth2": "oauth2_code_pkce",
    "hubspot": "api_key",
}


def test_every_provider_is_declared_with_its_auth_mode() -> None:
    assert {k: p.auth_mode for k, p in catalogue().providers.items()} == EXPECTED_MODES
    assert catalogue().get("microsoft").token_client == "msal"
    assert catalogue().get("docusign").token_client == "docusign"


@pytest.mark.parametrize("module", catalogue().action_modules())
def test_every_action_the_catalogue_names_exists(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not written yet")
    importlib.import_module(module)
    entry = next(p for p in catalogue().providers.values() if p.module == module)
    missing = [name for name in entry.actions if name not in ACTIONS]
    assert not missing, f"{module} does not register {missing}"
    unnamed = sorted(n for n in ACTIONS if n.split(".", 1)[0] == entry.action_prefix and n not in entry.actions)
    assert not unnamed, f"{module} registers actions the catalogue does not name: {unnamed}"
    for name in entry.actions:
        assert ACTIONS[name].fn.__module__ == module


def test_every_webhook_signing_scheme_exists() -> None:
    for entry in catalogue().providers.values():
        if entry.webhook:
            scheme = for_provider(entry.key)
            assert scheme is not None and scheme.name == entry.webhook.signing, entry.key
            assert type(scheme).__module__ == entry.module, f"{entry.key}'s scheme lives in its own module"


def test_invalid_entries_name_the_provider_and_the_field() -> None:
    bad = """
slack:
  display_name: Slack
  auth_mode: oauth3
  rate_limit: {per_second: 1}
  base_url: https://x
"""
    with pytest.raises(ValidationError) as err:
        parse_catalogue(bad)
    assert "providers.slack.auth_mode" in str(err.value)
    missing_url = """
acme:
  display_name: Acme
  auth_mode: client_credentials
  required_config: [client_id]
  token_url: https://{tenant}.acme.test/token
  rate_limit: {per_second: 1}
  base_url: https://x
"""
    with pytest.raises(ValidationError, match=r"token_url uses \['tenant'\] which are not in required_config"):
        parse_catalogue(missing_url)
    stray_action = """
acme:
  display_name: Acme
  auth_mode: api_key
  rate_limit: {per_second: 1}
  base_url: https://x
  module: connectors.acme
  actions: [other.thing]
"""
    with pytest.raises(ValidationError, match="other.thing"):
        parse_catalogue(stray_action)
    with pytest.raises(ValidationError, match="providers.acme.rate_limit.headroom"):
        parse_catalogue(stray_action.replace("{per_second: 1}", "{per_second: 1, headroom: 1.5}"))


def test_endpoints_take_per_connection_overrides_and_placeholders() -> None:
    ms = catalogue().get("microsoft")
    e = ms.endpoints({"tenant_id": "contoso", "client_id": "x"})
    assert e.token_url == "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"
    assert e.base_url == "https://graph.microsoft.com/v1.0"
    e = ms.endpoints({"tenant_id": "t", "base_url": "http://127.0.0.1:9/v1.0", "scopes": "a b"})
    assert e.base_url == "http://127.0.0.1:9/v1.0" and e.scopes == ["a", "b"]
    assert catalogue().get("slack").endpoints({}).scope == "chat:write,chat:write.public,channels:read,commands"
    assert ms.missing_config({"tenant_id": "t"}) == ["client_id"]
    assert catalogue().for_action("sharepoint.ensure_folders").key == "microsoft"


def test_sync_models_are_declared_with_cursor_page_size_and_interval() -> None:
    stripe = catalogue().get("stripe")
    assert [s.name for s in stripe.syncs] == ["customers", "invoices", "subscriptions"]
    assert stripe.syncs[0].interval.total_seconds() == 3600 and stripe.syncs[0].page_size == 100
    assert catalogue().get("microsoft").syncs[0].cursor == "delta_link"


async def test_provider_queues_limit_each_connection_on_the_server_not_the_queue(hub: Hub, client: Client) -> None:
    """No queue-wide rate (one org's burst would hold every other org back): the server hands out each
    fairness key's (connection's) tasks at the provider's published limit. Eager activities only on the main
    queue: a provider activity is on a queue of its own, so it is never executed eagerly."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    from worker import build_workers, configure_provider_queues

    workers = build_workers(hub, client)
    main, providers = workers[0], workers[1:]
    assert main.config()["disable_eager_activity_execution"] is False
    assert all(w.config()["task_queue"] != main.config()["task_queue"] for w in providers)
    assert all(w.config()["max_task_queue_activities_per_second"] is None for w in providers)
    await configure_provider_queues(client, hub.settings.task_queue)
    for entry in catalogue().providers.values():
        described = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace="default", task_queue=TaskQueue(name=f"{hub.settings.task_queue}-{entry.action_prefix}"),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, report_config=True))
        rate = described.config.fairness_keys_rate_limit_default.rate_limit.requests_per_second
        assert rate == pytest.approx(entry.rate_limit.per_second, rel=1e-6)
        assert not described.config.HasField("queue_rate_limit")

async def test_workers_starting_together_all_configure_the_provider_queues(hub: Hub, client: Client) -> None:
    """Ten workers starting at once send 60 fairness updates: the server refuses most of them at first (its rate
    limit on these updates); each is sent again until it lands, and no worker's start fails."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    from worker import configure_provider_queues

    main = f"{hub.settings.task_queue}-together"
    await asyncio.gather(*(configure_provider_queues(client, main) for _ in range(10)))
    for entry in catalogue().providers.values():
        described = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
            namespace="default", task_queue=TaskQueue(name=f"{main}-{entry.action_prefix}"),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, report_config=True))
        rate = described.config.fairness_keys_rate_limit_default.rate_limit.requests_per_second
        assert rate == pytest.approx(entry.rate_limit.per_second, rel=1e-6), entry.key


async def test_a_worker_the_server_keeps_refusing_still_starts(
    hub: Hub, client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With one try each, the refusals of a burst are not sent again: each is logged with its queue, and every
    worker's start goes on (the queue keeps what another worker set)."""
    import worker
    from worker import configure_provider_queues

    monkeypatch.setattr(worker, "CONFIG_TRIES", 1)
    main = f"{hub.settings.task_queue}-refused"
    with caplog.at_level("WARNING", logger="hub.worker"):
        await asyncio.gather(*(configure_provider_queues(client, main) for _ in range(20)))
    refused = [r.getMessage() for r in caplog.records if "not set, the server refused" in r.getMessage()]
    assert refused and all(f"task queue {main}-" in m for m in refused)
