"""A stand-in for OpportunityWorkflow (same name, same ``domain_event`` signal) that only records what it gets.

Kept in a module of its own with few imports so the workflow sandbox can load it.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.opportunity_types import DomainEvent


@workflow.defn(name="OpportunityWorkflow")
class OpportunityStandIn:
    """Records every ``domain_event`` signal; ``received`` lists them; ends when signalled ``close``."""

    def __init__(self) -> None:
        self._received: list[dict] = []
        self._closed = False

    @workflow.run
    async def run(self) -> int:
        await workflow.wait_condition(lambda: self._closed)
        return len(self._received)

    @workflow.signal
    def domain_event(self, event: DomainEvent) -> None:
        self._received.append(event.model_dump(mode="json"))

    @workflow.signal
    def close(self) -> None:
        self._closed = True

    @workflow.query
    def received(self) -> list[dict]:
        return self._received
