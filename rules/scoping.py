"""Branch/role scoping: which resources apply to an opportunity, and which pipeline is most specific.

A scope is a list of branches and a list of roles, ``"*"`` meaning all. Specificity ranks a
named branch above a named role: (branch, role) > (branch, *) > (*, role) > (*, *). Two pipelines
*tie* when they have the same specificity and their scopes overlap; that is refused when the
second one is applied, so selection at run time is always unambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence


def is_wildcard(values: Sequence[str]) -> bool:
    """Whether a scope list means "all"."""
    return "*" in values


def specificity(branches: Sequence[str], roles: Sequence[str]) -> tuple[int, int]:
    """(1 if branches are named else 0, 1 if roles are named else 0); higher is more specific."""
    return (0 if is_wildcard(branches) else 1, 0 if is_wildcard(roles) else 1)


def matches(branches: Sequence[str], roles: Sequence[str], branch: str | None, role: str | None) -> bool:
    """Whether a scope covers this branch and role (a missing branch/role is covered only by ``*``)."""
    return (is_wildcard(branches) or branch in branches) and (is_wildcard(roles) or role in roles)


def _overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    return is_wildcard(a) or is_wildcard(b) or bool(set(a) & set(b))


def ties(a: tuple[Sequence[str], Sequence[str]], b: tuple[Sequence[str], Sequence[str]]) -> bool:
    """Whether two scopes would be equally specific for some (branch, role)."""
    return specificity(*a) == specificity(*b) and _overlap(a[0], b[0]) and _overlap(a[1], b[1])


def most_specific(
    candidates: Sequence[tuple[str, Sequence[str], Sequence[str]]], branch: str | None, role: str | None
) -> str | None:
    """Name of the most specific candidate (name, branches, roles) covering branch and role, or None."""
    best: tuple[tuple[int, int], str] | None = None
    for name, branches, roles in candidates:
        if not matches(branches, roles, branch, role):
            continue
        rank = specificity(branches, roles)
        if best is None or rank > best[0] or (rank == best[0] and name < best[1]):
            best = (rank, name)
    return best[1] if best else None
