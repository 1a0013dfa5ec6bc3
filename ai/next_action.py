"""Next best actions: a catalogue of plays keyed by rule signal, model factor, checklist and stage.

Candidates (all deterministic, no network):

* one play per fired risk rule (``ai.risk``: MEDDPICC gaps and events), ``source: rule``; its
  expected effect is the risk points the deal loses if that signal is resolved (the risk model
  re-run without it);
* ``model.aging`` when the history model says the deal's age adds risk (``source: model``;
  expected effect: half of that risk, since age itself cannot be undone);
* the current stage's checklist items not yet done (PEAK stage checklists plus items marked
  undone), and the stage's standard play (``source: rule``, expected effect 0).

Ranking: ``priority = (expected risk reduction + 1) × urgency weight`` (high 3, medium 2, low 1);
a close date within 14 days raises medium and low urgency by one level. Ties break on the code.

With OpenAI on for the org, ``refinement_request`` builds the ``openai.complete_json`` call (prompt
``PROMPT_VERSION``) over the candidates, and ``apply_refinement`` accepts the re-ranked, reworded list (plus
at most two new ``llm.*`` plays) only if it validates against ``LlmAnswer``; any failure, timeout or invalid
answer keeps the local list, its reason recorded. Provenance records the prompt version, model, inputs and
output either way.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ai.deals import DealModel
from ai.risk import RULES_VERSION, Assessment, assess
from ai.tabular import points
from rules.defaults import PEAK_PIPELINE

CATALOGUE_VERSION = "next-action-catalogue/1"
PROMPT_VERSION = "next-action-prompt/1"
URGENCY_WEIGHT = {"high": 3.0, "medium": 2.0, "low": 1.0}
MAX_ACTIONS = 5
MAX_NEW_LLM_ACTIONS = 2
LLM_CANDIDATES = 8  # the best local candidates the model may re-rank
CLOSE_SOON_DAYS = 14
Urgency = Literal["high", "medium", "low"]


@dataclass(frozen=True)
class Play:
    """A catalogue entry: what to do and why it helps."""

    title: str
    why: str


CATALOGUE: dict[str, Play] = {
    "gap.metrics": Play("Quantify the business impact with the customer",
                        "Deals without agreed metrics stall when budgets are reviewed."),
    "gap.economic_buyer": Play("Get a meeting with the economic buyer",
                               "Without the person who signs off, the decision can be overturned late."),
    "gap.decision_criteria": Play("Confirm the decision criteria in writing",
                                  "Unknown criteria let a competitor define the evaluation."),
    "gap.decision_process": Play("Map the decision process and its dates",
                                 "An unmapped process hides approval steps that delay the close."),
    "gap.paper_process": Play("Walk through legal, procurement and signature steps",
                              "Paperwork surprises are the most common late slip."),
    "gap.identify_pain": Play("Validate the customer's pain and its cost",
                              "Without a confirmed pain there is no reason to buy now."),
    "gap.champion": Play("Develop and test a champion",
                         "A champion who sells internally is the strongest single win signal."),
    "gap.competition": Play("Build the competitive plan",
                            "Knowing the alternative the customer weighs lets you address it early."),
    "event.contract_unsigned": Play("Call the signer about the unsigned contract",
                                    "Contracts unsigned after a week often hide a new objection or approver."),
    "event.payment_failed": Play("Resolve the failed payment with the billing contact",
                                 "An unresolved failed payment puts the revenue and the relationship at risk."),
    "event.call_objection": Play("Answer the objection raised on the last call",
                                 "Objections left open harden into reasons not to buy."),
    "event.champion_quiet": Play("Re-engage the champion",
                                 "A champion who goes quiet often signals lost internal support."),
    "event.close_date_slipped": Play("Reset the close date with a mutual action plan",
                                     "Slipped close dates without a plan tend to slip again."),
    "model.aging": Play("Agree a compelling event and a dated close plan",
                        "The deal is older than this org's typical winning cycle."),
}
STAGE_PLAYS: dict[str, tuple[str, Play]] = {
    "prospect": ("stage.prospect.first_meeting",
                 Play("Book the first meeting", "Prospect deals move forward once a first meeting is held.")),
    "engage": ("stage.engage.mutual_plan",
               Play("Agree a mutual action plan with the champion", "A shared plan makes the next steps visible.")),
    "acquire": ("stage.acquire.signature_date",
                Play("Confirm the signature date and the signers", "Known signers and dates protect the forecast.")),
    "keep": ("stage.keep.success_plan",
             Play("Hold the kickoff and agree the success plan", "Early value delivery secures renewal and expansion.")),
}


class NextAction(BaseModel):
    """One recommended action, with why, what it is expected to do to the risk, and its source."""

    code: str
    title: str
    reasoning: str
    source: Literal["rule", "model", "llm"]
    expected_risk_reduction: float
    urgency: Urgency
    priority: float
    refined: bool = False  # title/reasoning reworded by the LLM


@lru_cache
def stage_checklists() -> dict[str, list[str]]:
    """Stage → checklist items, from the default PEAK pipeline."""
    doc = yaml.safe_load(PEAK_PIPELINE.read_text())
    return {s["key"]: list(s.get("checklist") or []) for s in doc["spec"]["stages"]}


def _bump(urgency: Urgency, close_soon: bool) -> Urgency:
    if not close_soon:
        return urgency
    return {"low": "medium", "medium": "high", "high": "high"}[urgency]  # type: ignore[return-value]


def _action(code: str, title: str, reasoning: str, source: str, reduction: float, urgency: Urgency) -> NextAction:
    return NextAction(code=code, title=title, reasoning=reasoning, source=source,
                      expected_risk_reduction=reduction, urgency=urgency,
                      priority=round((max(reduction, 0.0) + 1) * URGENCY_WEIGHT[urgency], 2))


def candidates(assessment: Assessment, stage: str, checklist: dict) -> list[NextAction]:
    """Every candidate action for the deal, ranked (deterministic)."""
    close_soon = assessment.days_to_close is not None and 0 <= assessment.days_to_close <= CLOSE_SOON_DAYS
    out: list[NextAction] = []
    for signal in assessment.signals:
        play = CATALOGUE[signal.code]
        reduction = round(assessment.risk_score - assessment.risk_without({signal.code}), 1)
        out.append(_action(signal.code, play.title,
                           f"{signal.text}. {play.why} Resolving it lowers the risk by about {points(reduction)}.",
                           "rule", reduction, _bump(signal.urgency, close_soon)))
    if assessment.age_factor >= 1:
        play = CATALOGUE["model.aging"]
        reduction = round(assessment.age_factor / 2, 1)
        out.append(_action("model.aging", play.title,
                           f"{play.why} Its age adds about {points(assessment.age_factor)} of risk; "
                           "a dated plan is expected to recover about half.", "model", reduction,
                           _bump("medium", close_soon)))
    items = [i for i in stage_checklists().get(stage, []) if not checklist.get(i)]
    items += sorted(i for i, done in checklist.items() if done is False and i not in items)
    for item in items:
        out.append(_action(f"checklist.{item}", f"Complete '{item.replace('_', ' ')}'",
                           f"'{item}' is on the {stage} checklist and not done; the next stage requires it.",
                           "rule", 0.0, _bump("low", close_soon)))
    if stage in STAGE_PLAYS:
        code, play = STAGE_PLAYS[stage]
        out.append(_action(code, play.title, play.why, "rule", 0.0, "low"))
    return sorted(out, key=lambda a: (-a.priority, a.code))


# --- LLM refinement ---------------------------------------------------------------------------

class LlmAction(BaseModel):
    """One action as the model returns it."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=80)
    title: str = Field(min_length=1, max_length=200)
    reasoning: str = Field(min_length=1, max_length=1000)


class LlmAnswer(BaseModel):
    """The model's answer: the actions, best first."""

    model_config = ConfigDict(extra="forbid")

    actions: list[LlmAction] = Field(min_length=1, max_length=LLM_CANDIDATES + MAX_NEW_LLM_ACTIONS)


def answer_schema() -> dict:
    """The strict JSON Schema sent with the prompt (every property required, no extras)."""
    item = {
        "type": "object",
        "properties": {"code": {"type": "string"}, "title": {"type": "string"}, "reasoning": {"type": "string"}},
        "required": ["code", "title", "reasoning"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"actions": {"type": "array", "items": item}},
        "required": ["actions"],
        "additionalProperties": False,
    }


SYSTEM_PROMPT = (
    "You are a B2B sales coach using MEDDPICC. You receive an opportunity, its risk factors and candidate "
    "next actions computed by rules and a model. Re-rank them (best first) and reword titles and reasoning "
    "so a sales rep can act today. Keep each candidate's code. You may add at most "
    f"{MAX_NEW_LLM_ACTIONS} new actions with codes starting 'llm.'. Never invent facts that are not in the "
    "input. Answer with JSON only."
)


def prompt_inputs(opp: dict, stage: str, assessment: Assessment, local: list[NextAction]) -> dict:
    """What the model is told (recorded verbatim in the provenance; no secrets, no contact details)."""
    return {
        "opportunity": {
            "name": opp.get("name"),
            "stage": stage,
            "amount": opp.get("amount"),
            "currency": opp.get("currency"),
            "close_date": str(opp.get("close_date")) if opp.get("close_date") else None,
            "meddpicc": opp.get("meddpicc") or {},
        },
        "risk_score": assessment.risk_score,
        "risk_factors": [f.text for f in assessment.factors],
        "candidates": [{"code": a.code, "title": a.title, "reasoning": a.reasoning, "urgency": a.urgency}
                       for a in local],
    }


def merge_answer(answer: LlmAnswer, local: list[NextAction]) -> list[NextAction]:
    """The LLM's order and wording over the local candidates; omitted candidates follow in local order.

    Raises ``ValueError`` for an unknown code, a duplicate, or too many new actions."""
    by_code = {a.code: a for a in local}
    seen: set[str] = set()
    merged: list[NextAction] = []
    new = 0
    for item in answer.actions:
        if item.code in seen:
            raise ValueError(f"duplicate action code {item.code!r}")
        seen.add(item.code)
        if item.code in by_code:
            merged.append(by_code[item.code].model_copy(update={"title": item.title, "reasoning": item.reasoning,
                                                                "refined": True}))
        elif item.code.startswith("llm."):
            new += 1
            if new > MAX_NEW_LLM_ACTIONS:
                raise ValueError(f"more than {MAX_NEW_LLM_ACTIONS} new actions")
            merged.append(_action(item.code, item.title, item.reasoning, "llm", 0.0, "medium"))
        else:
            raise ValueError(f"unknown action code {item.code!r}")
    return merged + [a for a in local if a.code not in seen]


Complete = Callable[[dict], Awaitable[dict]]


def refinement_request(opp: dict, stage: str, assessment: Assessment, local: list[NextAction], model: str,
                       timeout: float, limit: int) -> tuple[dict, dict]:
    """What to ask the LLM about ``local`` (no network): the refinement (``openai.complete_json`` params, the
    candidates, the limit) and the provenance so far."""
    shown = local[:LLM_CANDIDATES]
    inputs = prompt_inputs(opp, stage, assessment, shown)
    params = {
        "model": model,
        "schema_name": "next_actions",
        "schema": answer_schema(),
        "timeout_seconds": timeout,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": _json(inputs)},
        ],
    }
    provenance: dict = {"engine": "openai", "prompt_version": PROMPT_VERSION, "model": model,
                        "inputs": {"system": SYSTEM_PROMPT, "user": inputs}, "output": None, "fallback": None}
    refinement = {"params": params, "candidates": [a.model_dump() for a in local], "limit": limit,
                  "timeout_seconds": timeout}
    return refinement, provenance


def apply_refinement(result: dict, answer: dict | None, fallback: tuple[str, str] | None,
                     latency_ms: float) -> dict:
    """``result`` (of ``recommend_local``, with its ``refinement``) with the LLM's ``answer`` (the
    ``openai.complete_json`` output) merged in; or, when the call failed (``fallback``: reason, message) or
    the answer does not validate, the local list with the reason in the provenance (``fallback``,
    ``fallback_reason``: ``timeout``, ``invalid_answer``, ``rate_limited``, ``budget``, ``no_connection``,
    ``provider_error``)."""
    refinement = result["refinement"]
    local = [NextAction.model_validate(c) for c in refinement["candidates"]]
    shown = local[:LLM_CANDIDATES]
    provenance = dict(result["provenance"])
    actions = local
    if fallback is None and answer is not None:
        provenance["output"] = answer.get("output")
        provenance["model"] = answer.get("model") or provenance.get("model")
        provenance["response_id"] = answer.get("id")
        provenance["usage"] = answer.get("usage") or {}
        try:
            actions = merge_answer(LlmAnswer.model_validate(answer.get("output")), shown) + local[LLM_CANDIDATES:]
        except (ValidationError, ValueError) as exc:
            fallback = ("invalid_answer", f"invalid answer: {_first_line(exc)}")
    elif fallback is None:
        fallback = ("provider_error", "no answer")
    if fallback is not None:
        provenance["fallback_reason"], provenance["fallback"] = fallback
    provenance["latency_ms"] = round(latency_ms, 1)
    return {**result, "refinement": None, "provenance": provenance,
            "next_actions": [a.model_dump() for a in actions[:refinement["limit"]]]}


async def refine(result: dict, complete: Complete) -> dict:
    """Run ``result``'s refinement in-process through ``complete`` (an ``openai.complete_json`` call) under its
    timeout; any failure keeps the local list (``apply_refinement``)."""
    timeout = float(result["refinement"]["timeout_seconds"])
    started = time.perf_counter()
    answer, fallback = None, None
    try:
        answer = await asyncio.wait_for(complete(result["refinement"]["params"]), timeout=timeout + 1)
    except TimeoutError:
        fallback = ("timeout", f"timeout after {timeout:g}s")
    except Exception as exc:  # noqa: BLE001 - any failure keeps the local list
        fallback = ("provider_error", f"{type(exc).__name__}: {_first_line(exc)}")
    return apply_refinement(result, answer, fallback, 1000 * (time.perf_counter() - started))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def recommend_local(
    opp: dict,
    stage: str,
    checklist: dict,
    events: list[dict],
    now: datetime,
    model: DealModel | None,
    *,
    opportunity_id: str = "",
    llm: tuple[str, float] | None = None,
    limit: int = MAX_ACTIONS,
) -> dict:
    """Risk, factors and ranked next actions for one opportunity (the fields of an ``Insight``), computed
    locally. With ``llm`` (model, timeout) it also carries the ``refinement`` to ask the LLM for
    (``apply_refinement`` merges the answer); else ``refinement`` is None."""
    assessment = assess(opp, stage, events, now, model, opportunity_id)
    local = candidates(assessment, stage, checklist)
    inputs = {"stage": stage, "checklist": checklist, "as_of": now.isoformat(),
              "events": [{"type": e.get("type"), "at": e.get("at")} for e in events if isinstance(e, dict)],
              "signals": [s.code for s in assessment.signals]}
    refinement = None
    if llm is None:
        provenance = {"engine": "local", "inputs": inputs, "output": [a.code for a in local[:limit]]}
    else:
        refinement, provenance = refinement_request(opp, stage, assessment, local, llm[0], llm[1], limit)
    provenance.update(catalogue_version=CATALOGUE_VERSION, rules_version=RULES_VERSION)
    return {
        "risk_score": assessment.risk_score,
        "win_probability": assessment.win_probability,
        "risk_factors": [f.model_dump() for f in assessment.factors],
        "next_actions": [a.model_dump() for a in local[:limit]],
        "model_version": assessment.model_version,
        "source": assessment.source,
        "provenance": provenance,
        "refinement": refinement,
    }


async def recommend(
    opp: dict,
    stage: str,
    checklist: dict,
    events: list[dict],
    now: datetime,
    model: DealModel | None,
    *,
    opportunity_id: str = "",
    complete: Complete | None = None,
    llm_model: str = "gpt-4o-mini",
    timeout: float = 8.0,
    limit: int = MAX_ACTIONS,
) -> dict:
    """``recommend_local``, refined in-process through ``complete`` when given (the bench and tests; the
    workflows run the refinement on the ``openai`` queue instead: ``workflows/ai_refinement.py``)."""
    result = recommend_local(opp, stage, checklist, events, now, model, opportunity_id=opportunity_id,
                             llm=(llm_model, timeout) if complete is not None else None, limit=limit)
    return result if complete is None else await refine(result, complete)
