"""Input limits: the largest data a condition or template may be evaluated against.

Every event and opportunity is checked where it enters the hub (webhook receivers, the CRM API,
``rules:test`` events), so the static cost bound of conditions (``rules.cost``) holds on everything
they see. The README's "Limits" table lists these with the error each one gets.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 32  # nesting of lists and mappings
MAX_ITEMS = 1_000  # items of one list, keys of one mapping
MAX_STRING = 65_536  # characters of one string (keys included)


class LimitExceeded(ValueError):
    """A document beyond the input limits; ``path`` says where (``opp.contacts[3].name``)."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.message, self.path = message, path

    def __reduce__(self) -> tuple:  # raised in an evaluation process, re-raised in the API's
        return type(self), (self.message, self.path)


def within_by_size(raw: bytes) -> bool:
    """True when raw JSON ``raw`` cannot exceed the limits, whatever it parses to (a few µs, no parse).

    A sufficient condition only: a string has no more characters than the document has bytes, a
    list of n items holds n - 1 commas, and n nested containers need n opening brackets (brackets and
    commas inside strings only make the counts larger). Most provider deliveries pass it, so the
    receive path skips walking the parsed document.
    """
    return (
        len(raw) <= MAX_STRING
        and raw.count(b",") < MAX_ITEMS
        and raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH
    )


class _Over(Exception):
    """A limit exceeded at ``trail`` (keys and indexes from the node that raised, innermost first)."""

    def __init__(self, message: str) -> None:
        self.message, self.trail = message, []


def check(value: Any, root: str = "") -> None:
    """Raise ``LimitExceeded`` if ``value`` (parsed JSON) nests, lists or strings beyond the limits.

    The walk never recurses deeper than ``MAX_DEPTH`` (it refuses first), so a document nested a
    million levels deep is refused without exhausting the stack; the path of a node is only spelled
    out for the error, while the walk unwinds.
    """
    try:
        _walk(value, 0)
    except _Over as over:
        parts = (f"[{key}]" if isinstance(key, int) else f".{key}" for key in reversed(over.trail))
        raise LimitExceeded(over.message, (root + "".join(parts)).lstrip(".")) from None


def _walk(node: Any, depth: int) -> None:
    if isinstance(node, str):
        if len(node) > MAX_STRING:
            raise _Over(f"string of {len(node)} characters, at most {MAX_STRING}")
        return
    if not isinstance(node, dict | list):
        return
    if depth >= MAX_DEPTH:
        raise _Over(f"nested deeper than {MAX_DEPTH} levels")
    if len(node) > MAX_ITEMS:
        raise _Over(f"{len(node)} {'keys' if isinstance(node, dict) else 'items'}, at most {MAX_ITEMS}")
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, item in items:
        if type(key) is str and len(key) > MAX_STRING:
            raise _Over(f"a key of {len(key)} characters, at most {MAX_STRING}")
        kind = type(item)
        if kind is int or kind is float or kind is bool or item is None:
            continue  # the common scalars, without a call
        if kind is str and len(item) <= MAX_STRING:
            continue
        try:
            _walk(item, depth + 1)
        except _Over as over:
            over.trail.append(key)
            raise
