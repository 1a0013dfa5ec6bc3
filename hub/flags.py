"""Per-org feature flags through OpenFeature (e.g. ``openai``, ``sync.stripe.invoices``).

The built-in provider answers from the org's ``flags`` column, passed in the evaluation context;
a vendor provider (flagd, LaunchDarkly, ...) can replace it with ``openfeature.api.set_provider``.
"""

from __future__ import annotations

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

    def _unsupported(self, flag_key: str, default_value, evaluation_context=None):  # noqa: ANN001, ANN202
        return FlagResolutionDetails(value=default_value, reason=Reason.DEFAULT)

    resolve_string_details = resolve_integer_details = resolve_float_details = _unsupported
    resolve_object_details = _unsupported


api.set_provider(OrgFlagsProvider())


async def flag_enabled(session: AsyncSession, org_id: str, flag: str, default: bool | None = None) -> bool:
    """Whether ``flag`` is on for ``org_id``; otherwise ``default`` (else the flag's documented default, else off).
    The one place flags are evaluated."""
    org = await session.get(Org, org_id)
    context = EvaluationContext(targeting_key=org_id, attributes={"flags": (org.flags if org else {}) or {}})
    fallback = KNOWN_FLAGS.get(flag, False) if default is None else default
    return api.get_client("fulqrun-hub").get_boolean_value(flag, fallback, context)
