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


def check(value: Any, root: str = "") -> None:
    """Raise ``LimitExceeded`` if ``value`` (parsed JSON) nests, lists or strings beyond the limits.

    Iterative, so a document nested a million levels deep is refused without recursion; the path
    of a node is only spelled out for the error.
    """
    stack: list[tuple[Any, int, tuple | None]] = [(value, 0, None)]
    while stack:
        node, depth, trail = stack.pop()
        if isinstance(node, str):
            if len(node) > MAX_STRING:
                raise LimitExceeded(f"string of {len(node)} characters, at most {MAX_STRING}", _path(root, trail))
            continue
        if not isinstance(node, dict | list):
            continue
        if depth >= MAX_DEPTH:
            raise LimitExceeded(f"nested deeper than {MAX_DEPTH} levels", _path(root, trail))
        if len(node) > MAX_ITEMS:
            what = "keys" if isinstance(node, dict) else "items"
            raise LimitExceeded(f"{len(node)} {what}, at most {MAX_ITEMS}", _path(root, trail))
        if isinstance(node, dict):
            for key, item in node.items():
                if isinstance(key, str) and len(key) > MAX_STRING:
                    raise LimitExceeded(f"a key of {len(key)} characters, at most {MAX_STRING}", _path(root, trail))
                stack.append((item, depth + 1, (trail, key)))
        else:
            stack.extend((item, depth + 1, (trail, i)) for i, item in enumerate(node))


def _path(root: str, trail: tuple | None) -> str:
    parts: list[str] = []
    while trail is not None:
        trail, key = trail
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return (root + "".join(reversed(parts))).lstrip(".")
