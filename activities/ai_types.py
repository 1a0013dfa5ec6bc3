"""Names and payload types of the AI activities (pure pydantic: safe inside the workflow sandbox)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

NEXT_ACTION = "ai.next_action"
DEAL_RISK = "ai.deal_risk"
SCORE_LEAD = "ai.score_lead"
REFINE_NEXT_ACTION = "ai.refine_next_action"
TRAIN_MODEL = "ai.train_model"
AI_TRAINING_WORKFLOW = "AiTrainingWorkflow"
TRAIN_ATTEMPTS = 3
RETRAIN = "ai.retrain"
AI_RETRAIN_WORKFLOW = "AiRetrainWorkflow"


def ai_retrain_schedule_id(org_id: str) -> str:
    """The id of an org's retraining schedule (and the prefix of the workflows it starts)."""
    return f"ai-retrain/{org_id}"


def ai_training_queue(main_queue: str) -> str:
    """The task queue of ``ai.train_model``: one job at a time per worker, apart from the main queue."""
    return f"{main_queue}-ai-training"


def ai_training_workflow_id(org_id: str, job_id: str) -> str:
    """The id of the workflow that runs one training job."""
    return f"ai-training/{org_id}/{job_id}"


class OpportunityInsightInput(BaseModel):
    """An opportunity as the workflow knows it: document, stage, checklist marks and recent events.

    ``events`` are ``{"type", "data", "at"}`` records (``at`` ISO 8601). ``as_of`` pins "now" (replays,
    tests); None means the activity's clock."""

    org_id: str
    opportunity_id: str
    opp: dict
    stage: str
    checklist: dict = Field(default_factory=dict)
    events: list[dict] = Field(default_factory=list)
    as_of: datetime | None = None
    #: The calling workflow runs the OpenAI refinement on the ``openai`` queue (``Insight.refinement``);
    #: False (runs from before that, which cannot): the local answer only.
    refine_on_queue: bool = False


class Refinement(BaseModel):
    """An OpenAI refinement still to run: the ``openai.complete_json`` params for connection ``connection_id``,
    the local candidates it re-ranks, how many actions to keep, and the time the local answer took."""

    connection_id: str
    params: dict
    candidates: list[dict]
    limit: int
    timeout_seconds: float
    local_seconds: float = 0.0


class Insight(BaseModel):
    """Risk 0–100 with its factors, ranked next actions, and where they came from.

    ``source`` is ``model`` (the org's trained deal model) or ``prior``; each next action carries its
    own source (``rule``, ``model`` or ``llm``); ``provenance`` records the engine, versions, inputs and
    output (and, with OpenAI, the prompt version, model and any fallback reason)."""

    model_config = ConfigDict(extra="allow")

    risk_score: float
    risk_factors: list[dict] = Field(default_factory=list)
    next_actions: list[dict] = Field(default_factory=list)
    model_version: str
    source: str
    provenance: dict = Field(default_factory=dict)
    win_probability: float | None = None
    refinement: Refinement | None = None  # set: not final until the workflow runs it (``ai.refine_next_action``)

    def stored(self) -> dict:
        """The insight as workflow state and API answers keep it (JSON, without a pending refinement)."""
        return self.model_dump(mode="json", exclude={"refinement"})


class RefineInput(BaseModel):
    """Merge an OpenAI answer into an insight, or fall back to its local list: ``answer`` is the
    ``openai.complete_json`` output, or None with ``fallback`` (reason, message) when the call failed."""

    request: OpportunityInsightInput
    insight: Insight
    answer: dict | None = None
    fallback: tuple[str, str] | None = None
    latency_ms: float = 0.0


class ScoreLeadInput(BaseModel):
    """Score a lead; ``lead`` None rescores the stored lead."""

    org_id: str
    lead_id: str
    lead: dict | None = None


class LeadScoreResult(BaseModel):
    """A lead's score (0–100), 90% interval, factors, model version and source."""

    lead_id: str
    score: float
    low: float
    high: float
    factors: list[dict] = Field(default_factory=list)
    model_version: str
    source: str


def lead_next_action(scored: dict) -> dict:
    """What to do next with a scored lead (documented bands of its 0-100 score; the top factor is the why)."""
    score = float(scored.get("score") or 0.0)
    factors = scored.get("factors") or []
    why = factors[0].get("text") if factors else None
    if score >= 70:
        code, title, within = "call_now", "Call the lead today: it looks sales-ready", 1
    elif score >= 40:
        code, title, within = "qualify", "Qualify the lead: book a discovery call this week", 7
    else:
        code, title, within = "nurture", "Add the lead to a nurture sequence", 30
    return {"code": code, "title": title, "due_in_days": within, "score": score, "reasoning": why}


class TrainModelInput(BaseModel):
    """Train the model of one stored training job (``ai_training_jobs``)."""

    org_id: str
    job_id: str


class TrainModelResult(BaseModel):
    """How the job ended: ``succeeded`` with the new model's id, or ``failed`` with the reason."""

    job_id: str
    status: str
    model_id: str | None = None
    error: str | None = None


class RetrainInput(BaseModel):
    """Retrain one org's models from its own outcomes."""

    org_id: str


class RetrainResult(BaseModel):
    """Per kind (``deals``, ``leads``): the decision and its figures (``ai.retrain.Decision``), or why not."""

    org_id: str
    outcomes: dict[str, dict] = Field(default_factory=dict)
