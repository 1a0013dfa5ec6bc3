"""Action params templated with Jinja2's ``SandboxedEnvironment`` (``{{ opp.name }}``).

Only string values containing ``{{`` or ``{%`` are templates; everything else is a constant. An
undefined name is an error (``StrictUndefined``): a rule whose params cannot be rendered does
not fire, and the dry-run says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

MAX_TEMPLATE_CHARS = 10_000
MAX_OUTPUT_CHARS = 100_000

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateProblem(ValueError):
    """A template that does not compile or render; ``path`` is where in the params it is."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def is_template(value: str) -> bool:
    """Whether a string is a template rather than a constant."""
    return "{{" in value or "{%" in value


@lru_cache(maxsize=4096)
def _compile(source: str):  # noqa: ANN202 - jinja2.Template
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateProblem(f"template too long: {len(source)} characters, at most {MAX_TEMPLATE_CHARS}")
    try:
        return _env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}") from None


@dataclass(frozen=True, eq=False)
class ParamsTemplate:
    """Params compiled once; ``render(variables)`` returns a fresh dict."""

    tree: Any
    constant: bool

    def render(self, variables: dict[str, Any]) -> dict[str, Any]:
        """The params with every template rendered; raises ``TemplateProblem``."""
        if self.constant:
            return _copy(self.tree)
        return _render(self.tree, variables, ())


class FlatConstant(ParamsTemplate):
    """Constant params of scalars only: a shallow copy is a full copy."""

    def render(self, variables: dict[str, Any]) -> dict[str, Any]:
        """A fresh copy of the params."""
        return self.tree.copy()


class _Compiled:
    __slots__ = ("template", "source")

    def __init__(self, template: Any, source: str) -> None:
        self.template, self.source = template, source


def compile_params(params: dict[str, Any]) -> ParamsTemplate:
    """Compile every template in ``params``; raises ``TemplateProblem`` naming the bad one."""
    found = False

    def walk(node: Any, path: tuple[str | int, ...]) -> Any:
        nonlocal found
        if isinstance(node, str) and is_template(node):
            found = True
            try:
                return _Compiled(_compile(node), node)
            except TemplateProblem as exc:
                raise TemplateProblem(exc.message, path) from None
        if isinstance(node, dict):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        return node

    tree = walk(params, ())
    if not found and all(isinstance(v, str | int | float | bool | None) for v in tree.values()):
        return FlatConstant(tree, True)
    return ParamsTemplate(tree, not found)


def _render(node: Any, variables: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    if isinstance(node, _Compiled):
        try:
            out = node.template.render(variables)
        except TemplateError as exc:
            raise TemplateProblem(f"template error: {exc.message or exc}", path) from None
        except Exception as exc:  # noqa: BLE001 - a filter raising on bad input, e.g. int('x')
            raise TemplateProblem(f"template error: {type(exc).__name__}: {exc}", path) from None
        if len(out) > MAX_OUTPUT_CHARS:
            raise TemplateProblem(f"rendered value too long ({len(out)} characters)", path)
        return out
    if isinstance(node, dict):
        return {k: _render(v, variables, (*path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_render(v, variables, (*path, i)) for i, v in enumerate(node)]
    return node


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node
