"""Per-org feature flags through OpenFeature (e.g. ``openai``, ``sync.stripe.invoices``), and which version of a
rule under staged rollout runs for an opportunity (``rule_version``).

The built-in provider answers from the org's ``flags`` column, passed in the evaluation context, and a rule's
version from its rollout (``hub.store.rollouts``), also passed in the context; a vendor provider (flagd,
LaunchDarkly, ...) can replace it with ``openfeature.api.set_provider``.
"""

from __future__ import annotations

import hashlib

from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata
from sqlalchemy.ext.asyncio import AsyncSession

from hub.store.orgs import Org

KNOWN_FLAGS: dict[str, bool] = {
    "openai": False,  # refine next-best-actions with OpenAI when a connection exists
    "ai.insights": True,  # recompute the AI insight on every stage change (rules' ai.* actions run regardless)
}


class OrgFlagsProvider(AbstractProvider):
    """Resolves a flag from the org's own flags (evaluation-context attribute ``flags``)."""

    def get_metadata(self) -> Metadata:
        return Metadata(name="fulqrun-org-flags")

    def get_provider_hooks(self) -> list:
        return []

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        flags = (evaluation_context.attributes.get("flags") if evaluation_context else None) or {}
        if flag_key in flags:
            return FlagResolutionDetails(value=bool(flags[flag_key]), reason=Reason.TARGETING_MATCH)
        return FlagResolutionDetails(value=default_value, reason=Reason.DEFAULT)

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        """A rule's version (``rule.<name>.version``): the rollout's candidate for its branches and for the
        targeting keys (opportunity ids) whose ``bucket`` is below its percent, else ``default_value``."""
        rollout = evaluation_context.attributes.get("rollout") if evaluation_context else None
        if rollout is None or evaluation_context is None:
            return FlagResolutionDetails(value=default_value, reason=Reason.DEFAULT)
        if evaluation_context.attributes.get("branch") in rollout["branches"]:
            return FlagResolutionDetails(value=rollout["candidate"], reason=Reason.TARGETING_MATCH)
        chosen = bucket(flag_key, evaluation_context.targeting_key or "") < rollout["percent"]
        return FlagResolutionDetails(value=rollout["candidate"] if chosen else default_value, reason=Reason.SPLIT)

    def _unsupported(self, flag_key: str, default_value, evaluation_context=None):  # noqa: ANN001, ANN202
        return FlagResolutionDetails(value=default_value, reason=Reason.DEFAULT)

    resolve_string_details = resolve_float_details = _unsupported
    resolve_object_details = _unsupported


api.set_provider(OrgFlagsProvider())


async def flag_enabled(session: AsyncSession, org_id: str, flag: str, default: bool | None = None) -> bool:
    """Whether ``flag`` is on for ``org_id``; otherwise ``default`` (else the flag's documented default, else off).
    The one place flags are evaluated."""
    org = await session.get(Org, org_id)
    context = EvaluationContext(targeting_key=org_id, attributes={"flags": (org.flags if org else {}) or {}})
    fallback = KNOWN_FLAGS.get(flag, False) if default is None else default
    return api.get_client("fulqrun-hub").get_boolean_value(flag, fallback, context)


def bucket(flag_key: str, targeting_key: str) -> float:
    """A stable position in [0, 100) for a targeting key under a flag: the same in every process and run (SHA-256,
    not Python's salted ``hash``); a larger percent keeps every key a smaller one chose."""
    digest = hashlib.sha256(f"{flag_key}/{targeting_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def rule_version(org_id: str, rule: str, rollout: dict, subject: str, branch: str | None) -> int:
    """The version of ``rule`` that runs for ``subject`` (an opportunity id, else the org id) in ``branch`` under
    its rollout (``{stable, candidate, percent, branches}``), decided by the OpenFeature provider."""
    context = EvaluationContext(targeting_key=subject, attributes={"rollout": rollout, "branch": branch or "", "org": org_id})
    return api.get_client("fulqrun-hub").get_integer_value(f"rule.{rule}.version", rollout["stable"], context)
