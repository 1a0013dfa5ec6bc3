"""Build an `ActionContext` for action unit tests, its SDK pointed at a fake's base URL."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from connectors.base import ActionContext
from hub.egress import EgressPolicy


@dataclass
class StaticTokens:
    """A TokenSource for tests: hands out `token`; `fresh_token()` switches to the next of `fresh`."""

    token: str
    fresh: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    fresh_calls: int = 0

    async def access_token(self) -> str:
        return self.token

    async def fresh_token(self) -> str:
        self.fresh_calls += 1
        if self.fresh:
            self.token = self.fresh.pop(0)
        return self.token

    def secret(self, name: str) -> str | None:
        return self.secrets.get(name)


def action_context(
    provider: str,
    base_url: str,
    http: httpx.AsyncClient,
    *,
    token: str = "test-token",
    config: dict | None = None,
    secrets: dict[str, str] | None = None,
    idempotency_key: str = "wf-1/act-1",
) -> ActionContext:
    """An ActionContext as `connector.run_action` would build it, with static credentials."""
    return ActionContext(
        connection_id="con_test", org_id="acme", provider=provider, config=config or {}, base_url=base_url,
        idempotency_key=idempotency_key, http=http, tokens=StaticTokens(token, secrets=secrets or {}),
        egress=EgressPolicy(["127.0.0.1/32"]),  # the fakes' address: the SDKs' own clients may reach it
    )
