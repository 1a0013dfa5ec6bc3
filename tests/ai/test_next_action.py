"""Next best actions: catalogue, ranking, determinism; the OpenAI refinement and every fallback."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from ai.next_action import CATALOGUE, PROMPT_VERSION, LlmAnswer, answer_schema, candidates, recommend
from ai.risk import GAP_WEIGHTS, assess
from connectors.openai import CompleteJson, complete_json
from tests.fakes.context import action_context
from tests.fakes.openai_server import OpenAIFake

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
OPP = {
    "name": "Globex renewal", "amount": 60000.0, "currency": "EUR", "close_date": "2026-05-10",
    "meddpicc": {"identify_pain": 2, "metrics": 2, "champion": 1, "economic_buyer": 0, "decision_criteria": 2,
                 "decision_process": 2, "paper_process": 1, "competition": 1},
    "contacts": [{"name": "Pat", "email": "pat@globex.example", "role": "champion"}],
}
EVENTS = [
    {"type": "contract.sent", "data": {}, "at": (NOW - timedelta(days=9)).isoformat()},
    {"type": "payment.failed", "data": {"invoice": "in_1"}, "at": (NOW - timedelta(days=1)).isoformat()},
]


def run(**kw) -> dict:
    return asyncio.run(recommend(OPP, "acquire", {"proposal_presented": True}, EVENTS, NOW, None, **kw))


def test_every_rule_has_a_play() -> None:
    assert {f"gap.{d}" for d in GAP_WEIGHTS} | {"event.contract_unsigned", "event.payment_failed",
            "event.call_objection", "event.champion_quiet", "event.close_date_slipped", "model.aging"} == set(CATALOGUE)


def test_local_list_is_complete_ranked_and_deterministic() -> None:
    first, second = run(), run()
    assert first == second
    actions = first["next_actions"]
    assert [a["code"] for a in actions] == [
        "gap.economic_buyer", "event.payment_failed", "gap.champion", "event.contract_unsigned",
        "checklist.decision_process_confirmed",
    ]
    assert all(a["source"] == "rule" and a["reasoning"] and a["title"] for a in actions)
    assert actions[0]["urgency"] == "high" and actions[0]["expected_risk_reduction"] > 0
    assert "lowers the risk by about" in actions[0]["reasoning"]
    assert [a["priority"] for a in actions] == sorted((a["priority"] for a in actions), reverse=True)
    assert first["source"] == "prior" and 0 < first["risk_score"] < 100
    prov = first["provenance"]
    assert prov["engine"] == "local" and prov["output"] == [a["code"] for a in actions]
    assert prov["inputs"]["signals"] == ["gap.champion", "gap.economic_buyer", "event.contract_unsigned",
                                         "event.payment_failed"]


def test_close_date_within_two_weeks_raises_urgency() -> None:
    found = assess(OPP, "acquire", [], NOW, None)
    soon = {a.code: a.urgency for a in candidates(found, "acquire", {})}
    later = {a.code: a.urgency for a in
             candidates(assess({**OPP, "close_date": "2026-08-01"}, "acquire", [], NOW, None), "acquire", {})}
    assert soon["gap.economic_buyer"] == "high" and later["gap.economic_buyer"] == "medium"
    assert soon["checklist.legal_review_done"] == "medium" and later["checklist.legal_review_done"] == "low"


def test_stage_play_and_checklist_for_a_healthy_prospect() -> None:
    found = assess({"meddpicc": {"identify_pain": 1}}, "prospect", [], NOW, None)
    codes = [a.code for a in candidates(found, "prospect", {"icp_fit_confirmed": True})]
    assert codes == ["checklist.first_meeting_booked", "checklist.pain_hypothesis_written",
                     "stage.prospect.first_meeting"]


def test_model_aging_action() -> None:
    found = assess(OPP, "acquire", [], NOW, None)
    found.age_factor = 8.0
    aging = next(a for a in candidates(found, "acquire", {}) if a.code == "model.aging")
    assert aging.source == "model" and aging.expected_risk_reduction == 4.0


def answer_from_request(body: dict) -> dict:
    """What a cooperative model answers: candidates reversed and reworded, plus one new play."""
    messages = body.get("messages") or body.get("input")
    inputs = json.loads(messages[-1]["content"])
    actions = [{"code": c["code"], "title": f"LLM: {c['title']}", "reasoning": "Reworded."}
               for c in reversed(inputs["candidates"])]
    return {"actions": [{"code": "llm.exec_sponsor", "title": "Ask the CFO for a sponsor call",
                         "reasoning": "Economic buyer unknown late in Acquire."}, *actions]}


def prov_candidates(result: dict) -> list[dict]:
    return result["provenance"]["inputs"]["user"]["candidates"]


def with_fake(fake: OpenAIFake, timeout: float = 30.0, api: str = "chat", **kw) -> dict:
    """``recommend`` against the fake; the default timeout covers the SDK's first use on a loaded machine."""
    async def main() -> dict:
        async with httpx.AsyncClient() as http:
            ctx = action_context("openai", fake.url + "/v1", http)

            async def complete(params: dict) -> dict:
                return await complete_json(ctx, CompleteJson.model_validate({**params, "api": api}))

            return await recommend(OPP, "acquire", {"proposal_presented": True}, EVENTS, NOW, None,
                                   complete=complete, llm_model="gpt-test", timeout=timeout, **kw)

    return asyncio.run(main())


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_openai_refines_the_list_and_provenance_is_recorded(api: str) -> None:
    local = run()["next_actions"]
    with OpenAIFake(answer=answer_from_request) as fake:
        result = with_fake(fake, api=api)
        sent = fake.requests[0].json()
    actions = result["next_actions"]
    assert actions[0]["code"] == "llm.exec_sponsor" and actions[0]["source"] == "llm"
    shown = [c["code"] for c in prov_candidates(result)]
    assert [a["code"] for a in actions[1:]] == list(reversed(shown))[:4]
    assert [a["code"] for a in local] == shown[:5]
    assert all(a["refined"] and a["title"].startswith("LLM: ") for a in actions[1:])
    assert {a["source"] for a in actions[1:]} == {"rule"}
    prov = result["provenance"]
    assert prov["engine"] == "openai" and prov["fallback"] is None
    assert prov["prompt_version"] == PROMPT_VERSION and prov["model"] == "gpt-test"
    assert prov["inputs"]["user"]["candidates"][0]["code"] == "gap.economic_buyer"
    assert prov["output"]["actions"][0]["code"] == "llm.exec_sponsor"
    assert "pat@globex.example" not in json.dumps(prov["inputs"])
    fmt = sent["response_format"]["json_schema"] if api == "chat" else sent["text"]["format"]
    assert fmt["strict"] is True and fmt["schema"] == answer_schema()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("{not json", "ProviderError: the model's answer is not valid JSON"),
        ({"actions": [{"code": "gap.champion", "title": "x"}]}, "invalid answer: 1 validation error"),
        ({"actions": [{"code": "made.up", "title": "x", "reasoning": "y"}]}, "invalid answer: unknown action code"),
        ({"actions": [{"code": f"llm.{i}", "title": "x", "reasoning": "y"} for i in range(3)]},
         "invalid answer: more than 2 new actions"),
        ({"actions": []}, "invalid answer: 1 validation error"),
    ],
)
def test_invalid_answers_fall_back_to_the_local_list(answer: object, reason: str) -> None:
    local = run()
    with OpenAIFake(answer=answer) as fake:  # type: ignore[arg-type]
        result = with_fake(fake)
    assert result["next_actions"] == local["next_actions"]
    assert result["provenance"]["engine"] == "openai"
    assert result["provenance"]["fallback"].startswith(reason)


def test_a_slow_openai_falls_back_within_the_timeout() -> None:
    local = run()
    with OpenAIFake(answer=answer_from_request) as fake:
        fake.delay = 3.0
        result = with_fake(fake, timeout=0.5)
        answered_before_we_returned = fake.delayed_answers
    assert answered_before_we_returned == 0  # we gave up at the timeout, not when the slow answer came
    assert len(fake.requests) == 1
    assert result["next_actions"] == local["next_actions"]
    assert "0.5s" in result["provenance"]["fallback"]


def test_openai_errors_fall_back() -> None:
    local = run()
    with OpenAIFake(tokens=("another-key",), answer=answer_from_request) as fake:
        result = with_fake(fake)
    assert result["next_actions"] == local["next_actions"]
    assert result["provenance"]["fallback"] == "ProviderError: Incorrect API key provided."


def test_the_schema_accepts_what_the_validator_accepts() -> None:
    schema = answer_schema()
    assert schema["additionalProperties"] is False and schema["required"] == ["actions"]
    item = schema["properties"]["actions"]["items"]
    assert set(item["required"]) == set(LlmAnswer.model_json_schema()["$defs"]["LlmAction"]["properties"])
