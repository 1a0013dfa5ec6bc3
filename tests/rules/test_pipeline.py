"""Transition checks of compiled pipelines, on the shipped default PEAK pipeline."""

from __future__ import annotations

import copy

import pytest

from rules.defaults import PEAK_PIPELINE
from rules.loader import load_path
from rules.pipeline import TransitionContext, compile_pipeline
from rules.validate import ResourceInvalid


@pytest.fixture(scope="module")
def peak_doc() -> dict:
    loaded = load_path(PEAK_PIPELINE)
    assert loaded.ok, [str(e) for e in loaded.errors]
    return loaded.documents[0].data


def good_opp(**over) -> dict:
    opp = {
        "id": "o1",
        "name": "Deal",
        "amount": 75000.0,
        "currency": "EUR",
        "meddpicc": {
            "metrics": 3,
            "champion": 2,
            "economic_buyer": 1,
            "identify_pain": 2,
            "paper_process": 2,
        },
    }
    opp.update(over)
    return opp


def test_default_peak_has_four_stages_in_order(peak_doc: dict) -> None:
    pipeline = compile_pipeline(peak_doc)
    assert [s.key for s in pipeline.stages] == ["prospect", "engage", "acquire", "keep"]
    assert [s.probability for s in pipeline.stages] == [0.1, 0.3, 0.6, 1.0]
    assert pipeline.initial_stage == "prospect"
    for stage in pipeline.stages:
        assert stage.color.startswith("#") and stage.checklist and stage.folders and stage.templates
    assert pipeline.stage("acquire").documents == ["proposal", "order_form", "signed_contract"]


def test_every_unmet_requirement_is_listed(peak_doc: dict) -> None:
    pipeline = compile_pipeline(peak_doc)
    ctx = TransitionContext(
        opp=good_opp(amount=0.0),
        stage="engage",
        checklist={"discovery_call_done": True},
        documents={},
        actor={"id": "u1", "role": "sdr"},
    )
    unmet = pipeline.check_transition(ctx, "acquire")
    codes = [(u.code, u.field) for u in unmet]
    assert codes == [
        ("role_not_allowed", "actor.role"),
        ("checklist_incomplete", "checklist.champion_identified"),
        ("checklist_incomplete", "checklist.metrics_quantified"),
        ("checklist_incomplete", "checklist.economic_buyer_identified"),
        ("document_missing", "documents.discovery_notes"),
        ("document_missing", "documents.mutual_action_plan"),
        ("criteria_not_met", "when"),
    ]
    assert "Acquire needs an amount" in unmet[-1].message
    assert "'sdr'" in unmet[0].message and "ae, manager, admin" in unmet[0].message


def test_allowed_transition_has_no_unmet(peak_doc: dict) -> None:
    pipeline = compile_pipeline(peak_doc)
    stage = pipeline.stage("engage")
    ctx = TransitionContext(
        opp=good_opp(),
        stage="engage",
        checklist=dict.fromkeys(stage.checklist, True),
        documents=dict.fromkeys(stage.documents, True),
        actor={"id": "u1", "role": "ae"},
    )
    assert pipeline.check_transition(ctx, "acquire") == []


def test_disallowed_and_unknown_targets(peak_doc: dict) -> None:
    pipeline = compile_pipeline(peak_doc)
    ctx = TransitionContext(opp=good_opp(), stage="prospect", actor={"role": "ae"})
    [skip] = pipeline.check_transition(ctx, "keep")
    assert skip.code == "transition_not_allowed" and "allowed from 'prospect': engage" in skip.message
    [unknown] = pipeline.check_transition(ctx, "won")
    assert unknown.code == "unknown_stage"
    [same] = pipeline.check_transition(ctx, "prospect")
    assert same.code == "same_stage"


def test_backward_move_needs_no_checklist(peak_doc: dict) -> None:
    pipeline = compile_pipeline(peak_doc)
    ctx = TransitionContext(opp={}, stage="engage", actor={"role": "ae"})
    assert pipeline.check_transition(ctx, "prospect") == []


def test_criteria_evaluation_error_is_reported_not_raised(peak_doc: dict) -> None:
    pipeline = compile_pipeline(peak_doc)
    stage = pipeline.stage("engage")
    ctx = TransitionContext(
        opp={"name": "no amount"},
        stage="engage",
        checklist=dict.fromkeys(stage.checklist, True),
        documents=dict.fromkeys(stage.documents, True),
        actor={"role": "ae"},
    )
    [unmet] = pipeline.check_transition(ctx, "acquire")
    assert unmet.code == "criteria_error" and "amount" in unmet.message


def test_check_transition_accepts_a_plain_dict_context(peak_doc: dict) -> None:
    pipeline = compile_pipeline(peak_doc)
    ctx = {
        "opp": good_opp(),
        "stage": "prospect",
        "checklist": {},
        "documents": {},
        "actor": {"id": "a", "role": "ae"},
    }
    assert [u.code for u in pipeline.check_transition(ctx, "engage")] == [
        "checklist_incomplete",
        "checklist_incomplete",
        "checklist_incomplete",
        "criteria_not_met",
    ]


def test_compiled_once_per_content(peak_doc: dict) -> None:
    assert compile_pipeline(copy.deepcopy(peak_doc)) is compile_pipeline(copy.deepcopy(peak_doc))
    changed = copy.deepcopy(peak_doc)
    changed["spec"]["stages"][0]["name"] = "Prospecting"
    other = compile_pipeline(changed)
    assert other is not compile_pipeline(peak_doc) and other.stage("prospect").name == "Prospecting"


def test_bare_spec_is_accepted(peak_doc: dict) -> None:
    assert compile_pipeline(peak_doc["spec"]).stage("keep").probability == 1.0


def test_custom_pipeline_reorders_and_renames(peak_doc: dict) -> None:
    custom = copy.deepcopy(peak_doc)
    stages = custom["spec"]["stages"]
    stages[0]["order"], stages[1]["order"] = 2, 1
    stages[1]["name"] = "Discover"
    pipeline = compile_pipeline(custom)
    assert [s.name for s in pipeline.stages][:2] == ["Discover", "Prospect"]


def test_invalid_pipeline_raises_with_every_issue(peak_doc: dict) -> None:
    bad = copy.deepcopy(peak_doc)
    bad["spec"]["stages"][1]["key"] = "prospect"
    bad["spec"]["transitions"].append({"from": "keep", "to": "lost"})
    with pytest.raises(ResourceInvalid) as info:
        compile_pipeline(bad)
    text = str(info.value)
    assert "duplicate stage key 'prospect'" in text and "transition to undefined stage 'lost'" in text
