"""``openai.complete_json`` on the official SDK against the local fake (Chat Completions and Responses)."""

from __future__ import annotations

import httpx
import pytest

from connectors.base import ACTIONS, ProviderError
from connectors.catalogue import catalogue
from connectors.openai import CompleteJson, complete_json
from tests.fakes.context import action_context
from tests.fakes.openai_server import OpenAIFake

SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
          "additionalProperties": False}
PARAMS = {"model": "gpt-test", "messages": [{"role": "user", "content": "give x"}], "schema": SCHEMA}


@pytest.fixture
def fake():
    with OpenAIFake(answer={"x": 1}) as server:
        yield server


async def call(fake: OpenAIFake, token: str = "test-token", **extra) -> dict:
    async with httpx.AsyncClient() as http:
        ctx = action_context("openai", fake.url + "/v1", http, token=token)
        return await complete_json(ctx, CompleteJson.model_validate({**PARAMS, **extra}))


def test_registered_and_in_the_catalogue() -> None:
    assert ACTIONS["openai.complete_json"].params is CompleteJson
    assert catalogue().for_action("openai.complete_json").key == "openai"


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_structured_output(fake: OpenAIFake, api: str) -> None:
    out = await call(fake, api=api, max_output_tokens=50, temperature=0)
    assert out["output"] == {"x": 1} and out["model"] == "gpt-test" and out["api"] == api
    assert out["usage"]["total_tokens"] > 0
    sent = fake.requests[0]
    assert sent.headers["authorization"] == "Bearer test-token"
    if api == "chat":
        assert sent.path == "/v1/chat/completions" and out["id"].startswith("chatcmpl-")
        assert sent.json()["response_format"] == {
            "type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
        assert sent.json()["max_completion_tokens"] == 50 and sent.json()["temperature"] == 0
    else:
        assert sent.path == "/v1/responses" and out["id"].startswith("resp_")
        assert sent.json()["text"]["format"]["schema"] == SCHEMA
        assert sent.json()["max_output_tokens"] == 50 and sent.json()["temperature"] == 0


async def test_invalid_json_and_non_objects(fake: OpenAIFake) -> None:
    fake.answer = "Sure! Here is x: 1"
    with pytest.raises(ProviderError, match="not valid JSON") as info:
        await call(fake)
    assert info.value.status == 502 and info.value.code == "invalid_json"
    fake.answer = "[1, 2]"
    with pytest.raises(ProviderError, match="not a JSON object"):
        await call(fake)


async def test_timeout(fake: OpenAIFake) -> None:
    fake.delay = 1.2
    with pytest.raises(ProviderError, match="did not answer within 0.3s") as info:
        await call(fake, timeout_seconds=0.3)
    assert info.value.status == 504


async def test_errors_keep_status_message_and_retry_after(fake: OpenAIFake) -> None:
    fake.rate_limit(7)
    with pytest.raises(ProviderError) as info:
        await call(fake)
    assert (info.value.status, info.value.message, info.value.headers["retry-after"]) == (429, "Too many requests", "7")
    with pytest.raises(ProviderError, match="Incorrect API key provided") as info:
        await call(fake, token="wrong")
    assert info.value.status == 401 and info.value.code == "invalid_api_key"


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="messages"):
        CompleteJson.model_validate({**PARAMS, "messages": []})
    with pytest.raises(ValueError, match="schema_name"):
        CompleteJson.model_validate({**PARAMS, "schema_name": "has space"})
