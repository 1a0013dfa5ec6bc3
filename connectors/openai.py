"""OpenAI: ``openai.complete_json`` — a completion constrained to a JSON Schema (structured outputs).

Runs on the official SDK (``openai.AsyncOpenAI(base_url=ctx.base_url, api_key=...)``), through Chat
Completions (``response_format: json_schema``) or the Responses API (``text.format: json_schema``),
with strict schema adherence requested. The answer is parsed as JSON; anything else (a refusal, text
that is not a JSON object) is a ``ProviderError``, as are the API's own errors (status and message
kept, ``Retry-After`` passed on). The caller still validates the object against its own model: the
schema it sent is a request to the model, not a guarantee.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import openai
from pydantic import BaseModel, ConfigDict, Field

from connectors.base import ActionContext, ProviderError, action


class Message(BaseModel):
    """One chat message."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str = Field(min_length=1)


class CompleteJson(BaseModel):
    """Ask a model for a JSON object matching ``schema``."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    model: str = "gpt-4o-mini"
    messages: list[Message] = Field(min_length=1)
    json_schema: dict[str, Any] = Field(alias="schema", description="JSON Schema of the answer (an object)")
    schema_name: str = Field(default="answer", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    api: Literal["chat", "responses"] = "chat"
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_output_tokens: int | None = Field(default=None, gt=0, le=32768)


@action("openai.complete_json", CompleteJson,
        output={"output": object, "model": str, "id": str, "usage": dict, "api": str})
async def complete_json(ctx: ActionContext, params: CompleteJson) -> dict:
    """The model's JSON answer (``output``) with the model name, response id and token usage."""
    async with openai.AsyncOpenAI(
        base_url=ctx.base_url, api_key=await ctx.access_token(), timeout=params.timeout_seconds, max_retries=0,
        http_client=ctx.egress.httpx_client(timeout=params.timeout_seconds),
    ) as client:
        try:
            await ctx.before_request()  # one request: the SDK's retries are off
            if params.api == "chat":
                text, model, response_id, usage = await _chat(client, params)
            else:
                text, model, response_id, usage = await _responses(client, params)
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            raise ProviderError(exc.status_code, str(body.get("message") or exc.message), code=body.get("code"),
                                headers=dict(exc.response.headers)) from None
        except openai.APITimeoutError:
            raise ProviderError(504, f"OpenAI did not answer within {params.timeout_seconds:g}s",
                                code="timeout") from None
        except openai.APIConnectionError as exc:
            raise ProviderError(503, f"OpenAI unreachable: {exc.message}", code="connection") from None
    try:
        output = json.loads(text)
    except json.JSONDecodeError:
        raise ProviderError(502, "the model's answer is not valid JSON", code="invalid_json") from None
    if not isinstance(output, dict):
        raise ProviderError(502, "the model's answer is not a JSON object", code="invalid_json")
    return {"output": output, "model": model, "id": response_id, "usage": usage, "api": params.api}


def _options(params: CompleteJson, max_tokens_name: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if params.temperature is not None:
        extra["temperature"] = params.temperature
    if params.max_output_tokens is not None:
        extra[max_tokens_name] = params.max_output_tokens
    return extra


async def _chat(client: openai.AsyncOpenAI, params: CompleteJson) -> tuple[str, str, str, dict]:
    response = await client.chat.completions.create(
        model=params.model,
        messages=[m.model_dump() for m in params.messages],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": params.schema_name, "schema": params.json_schema, "strict": True},
        },
        **_options(params, "max_completion_tokens"),
    )
    if not response.choices:
        raise ProviderError(502, "the model returned no choices", code="empty")
    message = response.choices[0].message
    if message.refusal:
        raise ProviderError(422, f"the model refused: {message.refusal}", code="refusal")
    usage = response.usage.model_dump() if response.usage else {}
    return message.content or "", response.model, response.id, usage


async def _responses(client: openai.AsyncOpenAI, params: CompleteJson) -> tuple[str, str, str, dict]:
    response = await client.responses.create(
        model=params.model,
        input=[m.model_dump() for m in params.messages],
        text={"format": {"type": "json_schema", "name": params.schema_name, "schema": params.json_schema,
                         "strict": True}},
        **_options(params, "max_output_tokens"),
    )
    for item in response.output:
        for part in getattr(item, "content", None) or []:
            if getattr(part, "type", None) == "refusal":
                raise ProviderError(422, f"the model refused: {part.refusal}", code="refusal")
    usage = response.usage.model_dump() if response.usage else {}
    return response.output_text, response.model, response.id, usage
