"""Actions of ``generic_oauth2``: an authenticated JSON request to any standards-compliant provider's API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from connectors.base import ActionContext, action, raise_for_status


class RequestParams(BaseModel):
    """One HTTP request relative to the connection's base URL."""

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str = Field(description="path under the connection's base_url, e.g. /v1/things")
    query: dict[str, str] = Field(default_factory=dict)
    json_body: dict[str, Any] | list[Any] | None = Field(default=None, alias="json")
    idempotent: bool = Field(default=False, description="send the hub's Idempotency-Key header")


@action("generic_oauth2.request", RequestParams, output={"status": int, "body": object})
async def request(ctx: ActionContext, params: RequestParams) -> dict:
    """Call the provider's API with the connection's bearer token; returns ``{"status", "body"}``."""
    headers = {"Authorization": f"Bearer {await ctx.access_token()}", "Accept": "application/json"}
    if params.idempotent:
        headers["Idempotency-Key"] = ctx.idempotency_key
    response = raise_for_status(await ctx.http.request(
        params.method, ctx.url(params.path), params=params.query or None, json=params.json_body, headers=headers,
    ))
    body: Any = response.json() if response.content else None
    return {"status": response.status_code, "body": body}
