"""Imports every table module so that ``Base.metadata`` knows the whole schema."""

from hub.store import connections, orgs, secrets  # noqa: F401
from hub.store import opportunities  # noqa: F401
from hub.store import inbox  # noqa: F401
from hub.store import resources  # noqa: F401
from hub.store import sync  # noqa: F401
from hub.store import oauth  # noqa: F401
from hub.store import ai  # noqa: F401
