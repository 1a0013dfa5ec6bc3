"""Imports every table module so that ``Base.metadata`` knows the whole schema."""

from hub.store import (  # noqa: F401
    ai,  # noqa: F401
    budgets,  # noqa: F401
    connections,
    inbox,  # noqa: F401
    oauth,  # noqa: F401
    opportunities,  # noqa: F401
    orgs,
    resources,  # noqa: F401
    secrets,
    sync,  # noqa: F401
)
