"""Imports every table module so that ``Base.metadata`` knows the whole schema."""

from hub.store import (  # noqa: F401
    ai,
    budgets,
    connections,
    inbox,
    oauth,
    opportunities,
    orgs,
    resources,
    rollouts,
    secrets,
    sync,
)
