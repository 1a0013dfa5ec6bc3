"""Imports every table module so that ``Base.metadata`` knows the whole schema."""

from hub.store import connections, orgs, secrets  # noqa: F401
