"""Gong actions over httpx (Gong has no Python SDK).

Auth: Basic ``access key : access key secret`` (the connection's ``username``/``password`` secrets) or a
Bearer OAuth token — ``ctx.auth_headers()`` picks. Base URL: ``https://api.gong.io`` or the tenant's
own host (``config.base_url``, e.g. ``https://us-12345.api.gong.io``).

``gong.fetch_call`` reads one call through ``POST /v2/calls/extensive`` (metadata, CRM context, parties,
and Gong's AI content: brief, key points, topics, next steps, action items) and, when asked, the
transcript (``POST /v2/calls/transcript``), digested into talk time per speaker and an excerpt.

Webhooks (``GongWebhooks``, automation rules): with a public key configured (``gong_public_key``), Gong's
signed JWT in ``Authorization`` (RS256, unexpired, ``webhook_url`` = this endpoint, ``body_sha256`` = the
body's); without one, a per-connection bearer token. One event per call (``call:{id}``; "Test now"
deliveries are ``test:{hash}``), mapped to ``call.recorded`` with the CRM context's ``Opportunity``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from connectors import signing
from connectors.base import ActionContext, action, raise_for_status
from connectors.events import (
    Credentials,
    Delivery,
    DomainEvent,
    InboxEvent,
    MalformedEvent,
    Mapped,
    WebhookScheme,
    digest,
    parse_json,
    webhook_scheme,
)

CONTENT_FIELDS = ("brief", "keyPoints", "topics", "highlights", "callOutcome", "pointsOfInterest")


class FetchCall(BaseModel):
    """Fetch one Gong call: metadata, parties, Gong's summary (and a transcript digest if asked)."""

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(pattern=r"^\d{1,30}$")
    include_transcript: bool = False
    excerpt_sentences: int = Field(default=5, ge=0, le=50)


@action("gong.fetch_call", FetchCall,
        output={"call": dict, "crm_context": list, "parties": list, "summary": dict, "transcript": object})
async def fetch_call(ctx: ActionContext, params: FetchCall) -> dict:
    """``{"call", "crm_context", "parties", "summary"[, "transcript"]}``."""
    headers = await ctx.auth_headers()
    body = {
        "filter": {"callIds": [params.call_id]},
        "contentSelector": {"context": "Extended", "exposedFields": {
            "parties": True, "content": {name: True for name in CONTENT_FIELDS}}},
    }
    response = raise_for_status(await ctx.http.post(ctx.url("/v2/calls/extensive"), json=body, headers=headers))
    call = response.json()["calls"][0]
    parties = [{"name": p.get("name"), "email": p.get("emailAddress"), "title": p.get("title"),
                "affiliation": p.get("affiliation"), "speaker_id": p.get("speakerId")}
               for p in call.get("parties") or []]
    out: dict[str, Any] = {
        "call": _metadata(call.get("metaData") or {}),
        "crm_context": [{"system": c.get("system"), "type": o.get("objectType"), "id": o.get("objectId")}
                        for c in call.get("context") or [] for o in c.get("objects") or []],
        "parties": parties,
        "summary": _summary(call.get("content") or {}),
    }
    if params.include_transcript:
        response = raise_for_status(await ctx.http.post(
            ctx.url("/v2/calls/transcript"), json={"filter": {"callIds": [params.call_id]}}, headers=headers))
        transcripts = response.json().get("callTranscripts") or [{}]
        out["transcript"] = _digest(transcripts[0].get("transcript") or [], parties, params.excerpt_sentences)
    return out


def _metadata(meta: dict[str, Any]) -> dict[str, Any]:
    return {"id": meta.get("id"), "title": meta.get("title"), "url": meta.get("url"), "started": meta.get("started"),
            "duration_s": meta.get("duration"), "direction": meta.get("direction"), "scope": meta.get("scope"),
            "system": meta.get("system"), "language": meta.get("language")}


def _summary(content: dict[str, Any]) -> dict[str, Any]:
    """Gong's AI content of the call, flattened."""
    next_steps = [item.get("text") for h in content.get("highlights") or []
                  if str(h.get("title", "")).lower().startswith("next step") for item in h.get("items") or []]
    outcome = content.get("callOutcome") or {}
    return {
        "brief": content.get("brief"),
        "key_points": [k.get("text") for k in content.get("keyPoints") or []],
        "topics": [{"name": t.get("name"), "duration_s": t.get("duration")} for t in content.get("topics") or []],
        "next_steps": next_steps,
        "action_items": [a.get("snippet") for a in (content.get("pointsOfInterest") or {}).get("actionItems") or []],
        "outcome": outcome.get("name"),
    }


def _digest(monologues: list[dict[str, Any]], parties: list[dict[str, Any]], excerpt: int) -> dict[str, Any]:
    """Talk time and sentence count per speaker, and the first sentences, from Gong's transcript."""
    names = {p["speaker_id"]: p["name"] for p in parties if p.get("speaker_id")}
    speakers: dict[str, dict[str, Any]] = {}
    lines: list[dict[str, Any]] = []
    for monologue in monologues:
        speaker = str(monologue.get("speakerId"))
        stats = speakers.setdefault(speaker, {"speaker_id": speaker, "name": names.get(speaker),
                                              "talk_time_s": 0.0, "sentences": 0})
        for sentence in monologue.get("sentences") or []:
            stats["talk_time_s"] += max(0, sentence.get("end", 0) - sentence.get("start", 0)) / 1000
            stats["sentences"] += 1
            if len(lines) < excerpt:
                lines.append({"speaker": names.get(speaker) or speaker, "text": sentence.get("text")})
    total = sum(s["talk_time_s"] for s in speakers.values()) or 1.0
    for stats in speakers.values():
        stats["talk_ratio"] = round(stats["talk_time_s"] / total, 3)
    return {"speakers": list(speakers.values()), "excerpt": lines}


# --- webhooks -----------------------------------------------------------------------------------------------

def _map_gong(event_type: str, doc: object) -> Mapped:
    if event_type != "call" or not isinstance(doc, dict):
        return Mapped(ignored="Gong 'Test now' delivery (isTest) carries no call")
    call = doc.get("callData") or {}
    meta = call.get("metaData") or {}
    opp = account = crm = None
    for ctx in call.get("context") or []:
        for obj in (ctx or {}).get("objects") or []:
            kind = (obj or {}).get("objectType")
            if kind == "Opportunity" and opp is None:
                opp, crm = str(obj.get("objectId")), ctx.get("system")
            elif kind == "Account" and account is None:
                account = str(obj.get("objectId"))
    data = {
        "call_id": meta.get("id"),
        "title": meta.get("title"),
        "url": meta.get("url"),
        "started": meta.get("started"),
        "duration_s": meta.get("duration"),
        "direction": meta.get("direction"),
        "scope": meta.get("scope"),
        "crm_system": crm,
        "account_id": account,
        "participants": [
            {"name": p.get("name"), "email": p.get("emailAddress"), "title": p.get("title")}
            for p in call.get("parties") or []
            if isinstance(p, dict)
        ],
        "opportunity_id": opp,
    }
    return Mapped(events=[DomainEvent(type="call.recorded", opportunity_id=opp, data=data)])


@webhook_scheme
class GongWebhooks(WebhookScheme):
    """Gong's webhook scheme (see the module docstring)."""

    name = "gong"
    description = "Authorization: signed JWT (RS256) or a per-connection bearer token"
    needs_url = True
    public_key_name = "gong_public_key"

    def verify(self, delivery: Delivery, creds: Credentials, now: float | None = None) -> None:
        """Signed-JWT mode when a public key is configured, else the per-connection token mode."""
        auth = delivery.headers.get("authorization")
        if creds.public_keys:
            url = str(creds.config.get("webhook_url") or delivery.url)
            signing.verify_gong_jwt(delivery.body, auth, creds.public_keys, url, now=now)
        else:
            signing.verify_token(auth, creds.webhook_secrets)

    def split(self, body: bytes, headers: Mapping[str, str]) -> list[InboxEvent]:
        """One event per call; "Test now" deliveries by content hash."""
        ctype = headers.get("content-type", "")
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise MalformedEvent("a Gong payload is a JSON object")
        call_id = ((doc.get("callData") or {}).get("metaData") or {}).get("id")
        if doc.get("isTest") or not call_id:
            return [InboxEvent(f"test:{digest(body)}", "test", body, ctype)]
        return [InboxEvent(f"call:{call_id}", "call", body, ctype)]

    def map(self, event_type: str, body: bytes, content_type: str) -> Mapped:
        """A call → ``call.recorded``."""
        return _map_gong(event_type, parse_json(body))

    def sign(
        self, body: bytes, content_type: str, creds: Credentials, url: str, now: int
    ) -> tuple[bytes, dict[str, str]]:
        """The per-connection token (a JWT-mode connection cannot be signed for: only Gong holds that key)."""
        if creds.public_keys:
            raise ValueError("this Gong connection verifies Gong's signed JWT; only Gong holds that private key")
        return body, {"content-type": content_type, "authorization": f"Bearer {creds.first_secret()}"}
