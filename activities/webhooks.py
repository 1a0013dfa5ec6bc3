"""Activities of ``WebhookEventWorkflow``: finish an inbox row or record a failed attempt; for Graph events,
name the required document a changed file is, and run a connection's sync now."""

from __future__ import annotations

import logging
import re

from temporalio import activity

from activities import sync_schedules
from activities.opportunity_types import PinnedPipeline, stages_of
from activities.webhook_types import (
    MATCH_DOCUMENT,
    SYNC_NOW,
    CompleteEventInput,
    DocumentMatch,
    DocumentMatchInput,
    FailEventInput,
    SyncNowInput,
)
from hub.runtime import Hub
from hub.store import inbox
from hub.store.connections import Connection
from hub.store.opportunities import get_projection

COMPLETE = "webhooks.complete_event"
FAIL = "webhooks.fail_event"

log = logging.getLogger("activities.webhooks")


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def required_document(documents: list[str], path: str) -> str | None:
    """Which of ``documents`` (pipeline keys such as ``order_form``) the file at ``path`` is.

    The file name (without extension) is looked at first, then its folders from the nearest up; a key
    matches a name containing its words in order (``order_form`` ← ``Acme - Order form.docx``,
    ``proposal`` ← ``03 Acquire/Proposal/v2.pdf``); the longest matching key wins.
    """
    *folders, name = path.split("/")
    stem = name.rsplit(".", 1)[0] if "." in name.strip(".") else name
    keys = sorted(set(documents), key=lambda k: (-len(k), k))
    for part in [stem, *reversed(folders)]:
        words = f" {_words(part)} "
        for key in keys:
            if f" {_words(key)} " in words:
                return key
    return None


class WebhookActivities:
    """Inbox writes and lookups on behalf of the workflow; the runtime is injected."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def all(self) -> list:
        """Every activity of this class, for a worker's list."""
        return [self.complete_event, self.fail_event, self.match_document, self.sync_now]

    @activity.defn(name=COMPLETE)
    async def complete_event(self, input: CompleteEventInput) -> bool:
        """Mark the row ``done`` (idempotent: False if it already was, or a newer generation took over)."""
        outcome = {
            "workflow_id": input.workflow_id,
            "events": [o.model_dump(mode="json") for o in input.outcomes],
        }
        async with self.hub.db.session() as session:
            return await inbox.finish(session, input.inbox_id, "done", outcome, generation=input.generation)

    @activity.defn(name=FAIL)
    async def fail_event(self, input: FailEventInput) -> str | None:
        """Count a failed attempt: the row goes back to ``pending`` after a back-off, or ``dead`` at the limit."""
        async with self.hub.db.session() as session:
            status = await inbox.record_failure(
                session, input.inbox_id, input.error, input.generation,
                self.hub.settings.webhook_max_attempts,
            )  # fmt: skip
        return status

    @activity.defn(name=MATCH_DOCUMENT)
    async def match_document(self, input: DocumentMatchInput) -> DocumentMatch:
        """Whether the opportunity exists (its projection) and which document of its pipeline the file is."""
        async with self.hub.db.session() as session:
            row = await get_projection(session, input.org_id, input.opportunity_id)
        if row is None:
            return DocumentMatch(known=False)
        pipeline = PinnedPipeline.model_validate(row.state["pipeline"])
        documents = [d for stage in stages_of(pipeline) for d in stage.get("documents", [])]
        return DocumentMatch(known=True, document=required_document(documents, input.path))

    @activity.defn(name=SYNC_NOW)
    async def sync_now(self, input: SyncNowInput) -> str:
        """Run the connection's sync of ``model`` now (after a run in progress): ``triggered``; ``paused`` (left
        alone); ``scheduled`` (its schedules were missing: created, first run now); ``no_sync`` (no such model)."""
        client = activity.client()
        info = await sync_schedules.describe(client, input.org_id, input.connection_id, input.model)
        if info is not None:
            if info.paused:
                return "paused"
            await sync_schedules.trigger(client, input.org_id, input.connection_id, input.model)
            return "triggered"
        async with self.hub.db.session() as session:
            conn = await session.get(Connection, input.connection_id)
        if conn is None or conn.org_id != input.org_id or input.model not in sync_schedules.connection_models(conn):
            return "no_sync"
        log.info("sync schedules of connection %s were missing; creating them", conn.id)
        await sync_schedules.ensure_schedules(client, conn, self.hub.settings.task_queue, run_now=True)
        return "scheduled"
