"""Deterministic Temporal workflows. ``WORKFLOWS`` is what the worker registers."""

WORKFLOWS: list[type] = []
